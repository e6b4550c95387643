"""Kubeflow Pipelines (kfp v2): components that call the stage functions, the pipeline, compile and local run.

The container images every component runs in are named in ``images.py`` (tagged from the source tree), what
the pipeline asks of a cluster in ``cluster.py``.
"""
