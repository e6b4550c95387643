"""Kubeflow Pipelines (kfp v2): components that call the stage functions, the pipeline, compile and local run.

The container images every component runs in are named here, and only here.
"""

IMAGE_CPU = "ghcr.io/image-emotion/image-emotion:0.1.0-cpu"
IMAGE_CUDA = "ghcr.io/image-emotion/image-emotion:0.1.0-cuda"
