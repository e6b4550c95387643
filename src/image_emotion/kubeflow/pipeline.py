"""The kfp v2 pipeline of the whole graph, its compilation and its local run (``kfp.local``).

pretrain_objects [GPU] + prepare detector data -> finetune_detector [GPU] -> prepare main data ->
extract_regions [GPU] -> ParallelFor λ: train_lambda -> Collected -> select_classifier -> ParallelFor transfer
set: prepare, extract_regions [GPU], transfer_cv -> Collected -> evaluate -> report (HTML + Markdown artifacts)
and, if test accuracy >= min_accuracy, register. Seed 002: prepare main data -> train_metric [GPU] -> retrieve ->
report, register_metric, and retrieve_transfer for each transfer set (in its loop) -> report. Seed 001: prepare
each generative set (ParallelFor) -> Collected -> train_generative [GPU] -> evaluate_generative -> report,
register_generative. The same graph as dvc.yaml.
"""

from pathlib import Path
from typing import Any

import yaml
from kfp import compiler, dsl

from image_emotion.config import Config
from image_emotion.kubeflow import components as c

PIPELINE_NAME = "image-emotion"
DEFAULT_PIPELINE_YAML = Path("pipelines/image_emotion.yaml")
GPU_TYPE = "nvidia.com/gpu"
DEFAULTS = Config()  # the pipeline parameters' defaults come from the one config schema


def _gpu(task: dsl.PipelineTask, cpu: str, memory: str) -> dsl.PipelineTask:
    """One GPU, CPU/memory requests and retries for a training or extraction step."""
    return (
        task.set_accelerator_type(GPU_TYPE)
        .set_accelerator_limit(1)
        .set_cpu_request(cpu)
        .set_memory_request(memory)
        .set_memory_limit(memory)
        .set_retry(num_retries=2, backoff_duration="60s", backoff_factor=2.0)
    )


def _cpu(task: dsl.PipelineTask, cpu: str = "2", memory: str = "8G") -> dsl.PipelineTask:
    return task.set_cpu_request(cpu).set_memory_request(memory).set_retry(num_retries=2, backoff_duration="30s")


@dsl.pipeline(name=PIPELINE_NAME, description="Multi-level region-based emotion classification (seed 000), end to end")
def image_emotion_pipeline(
    params_yaml: str,
    lambdas: list = list(DEFAULTS.classifier.lambdas),  # noqa: B006 - kfp default, from the config schema
    transfer_sets: list = [t.name for t in DEFAULTS.transfer.sets],  # noqa: B006
    generative_sets: list = [f"generative:{s.name}" for s in DEFAULTS.generative.sets],  # noqa: B006
    min_accuracy: float = DEFAULTS.register.min_accuracy,
    mlflow_tracking_uri: str = "",
    mlflow_experiment: str = DEFAULTS.mlflow.experiment,
):
    common = {
        "params_yaml": params_yaml,
        "mlflow_tracking_uri": mlflow_tracking_uri,
        "mlflow_experiment": mlflow_experiment,
        "pipeline_run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
    }
    objects = _gpu(c.pretrain_objects_op(**common), "8", "32G")
    regions = _cpu(c.prepare_op(role="detector", **common)).set_display_name("prepare detector data")
    main = _cpu(c.prepare_op(role="main", **common)).set_display_name("prepare main data")
    detector = _gpu(
        c.finetune_detector_op(dataset=regions.outputs["dataset"], objects=objects.outputs["objects"], **common),
        "8",
        "32G",
    )
    features = _gpu(
        c.extract_regions_op(detector=detector.outputs["detector"], dataset=main.outputs["dataset"], **common),
        "8",
        "32G",
    )
    with dsl.ParallelFor(items=lambdas, name="lambda-sweep") as lam:
        sweep = _cpu(
            c.train_lambda_op(lam=lam, main=main.outputs["dataset"], features=features.outputs["features"], **common)
        )
    classifier = _cpu(
        c.select_classifier_op(
            main=main.outputs["dataset"],
            features=features.outputs["features"],
            heads=dsl.Collected(sweep.outputs["head"]),
            **common,
        )
    )
    metric = _gpu(c.train_metric_op(main=main.outputs["dataset"], **common), "8", "32G")
    with dsl.ParallelFor(items=transfer_sets, name="transfer-sets") as set_name:
        small = _cpu(c.prepare_op(role=set_name, **common)).set_display_name("prepare transfer set")
        small_features = _gpu(
            c.extract_regions_op(detector=detector.outputs["detector"], dataset=small.outputs["dataset"], **common),
            "8",
            "32G",
        )
        transfer = _cpu(
            c.transfer_cv_op(
                set_name=set_name,
                dataset=small.outputs["dataset"],
                features=small_features.outputs["features"],
                classifier=classifier.outputs["classifier"],
                **common,
            )
        )
        small_retrieval = _cpu(
            c.retrieve_transfer_op(
                set_name=set_name, dataset=small.outputs["dataset"], model=metric.outputs["model"], **common
            )
        )
    with dsl.ParallelFor(items=generative_sets, name="generative-sets") as role:
        other = _cpu(c.prepare_op(role=role, **common)).set_display_name("prepare generative set")
    generative = _gpu(
        c.train_generative_op(main=main.outputs["dataset"], sets=dsl.Collected(other.outputs["dataset"]), **common),
        "8",
        "32G",
    )
    generative_evaluation = _cpu(
        c.evaluate_generative_op(
            main=main.outputs["dataset"],
            sets=dsl.Collected(other.outputs["dataset"]),
            model=generative.outputs["model"],
            **common,
        )
    )
    evaluation = _cpu(
        c.evaluate_op(
            main=main.outputs["dataset"],
            features=features.outputs["features"],
            classifier=classifier.outputs["classifier"],
            transfer=dsl.Collected(transfer.outputs["result"]),
            **common,
        )
    )
    retrieval = _cpu(c.retrieve_op(main=main.outputs["dataset"], model=metric.outputs["model"], **common))
    _cpu(
        c.report_op(
            prepared_detector=regions.outputs["metrics"],
            prepared_main=main.outputs["metrics"],
            prepared_transfer=dsl.Collected(small.outputs["metrics"]),
            detector=detector.outputs["detector"],
            classifier=classifier.outputs["classifier"],
            transfer=dsl.Collected(transfer.outputs["result"]),
            evaluation=evaluation.outputs["metrics"],
            plots=evaluation.outputs["plots"],
            retrieval=retrieval.outputs["metrics"],
            retrieval_transfer=dsl.Collected(small_retrieval.outputs["result"]),
            retrieval_plots=retrieval.outputs["plots"],
            generative=generative_evaluation.outputs["metrics"],
            generative_plots=generative_evaluation.outputs["plots"],
            **common,
        )
    )
    # the test accuracy is the component's return value ("Output")
    with dsl.If(evaluation.outputs["Output"] >= min_accuracy, name="good-enough-to-register"):
        _cpu(
            c.register_op(
                main=main.outputs["dataset"],
                detector=detector.outputs["detector"],
                classifier=classifier.outputs["classifier"],
                evaluation=evaluation.outputs["metrics"],
                **common,
            )
        )
    _cpu(
        c.register_metric_op(
            main=main.outputs["dataset"],
            model=metric.outputs["model"],
            index=retrieval.outputs["index"],
            retrieval=retrieval.outputs["metrics"],
            **common,
        )
    )
    _cpu(
        c.register_generative_op(
            main=main.outputs["dataset"],
            model=generative.outputs["model"],
            evaluation=generative_evaluation.outputs["metrics"],
            **common,
        )
    )


def pipeline_arguments(config: Config) -> dict[str, Any]:
    """Pipeline arguments from a config (the λ list, transfer sets and threshold follow params.yaml)."""
    return {
        "params_yaml": yaml.safe_dump(config.to_dict(), sort_keys=True),
        "lambdas": list(config.classifier.lambdas),
        "transfer_sets": [t.name for t in config.transfer.sets],
        "generative_sets": [f"generative:{s.name}" for s in config.generative.sets],
        "min_accuracy": config.register.min_accuracy,
        "mlflow_experiment": config.mlflow.experiment,
    }


def compile_pipeline(out: str | Path = DEFAULT_PIPELINE_YAML) -> Path:
    """Compile the pipeline to YAML (the file checked in under pipelines/)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(image_emotion_pipeline, str(out))
    return out


def run_local(config: Config, pipeline_root: str | Path, mlflow_tracking_uri: str = "") -> dict[str, Any]:
    """Run the whole pipeline here with ``kfp.local.SubprocessRunner`` (no containers; GPU requests ignored);
    a failing task raises. Returns the run's directory of task outputs."""
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True)
    before = set(Path(pipeline_root).glob("*")) if Path(pipeline_root).is_dir() else set()
    image_emotion_pipeline(**pipeline_arguments(config), mlflow_tracking_uri=mlflow_tracking_uri)
    (run_dir,) = set(Path(pipeline_root).glob("*")) - before  # raise_on_error: a failed task raised already
    return {"pipeline_root": str(pipeline_root), "run_dir": str(run_dir)}
