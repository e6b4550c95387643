"""One kfp v2 component per pipeline stage (and two small ones for the sharded extraction's fan-out and merge);
each is a thin function that calls the package's code.

The functions are plain here; ``build_components`` makes them kfp components that run in the images of this
source tree (``images.Images``: the GPU steps in the CUDA image), with the package already installed there
(``install_kfp_package=False``: nothing is installed when a pod starts).

Data flows through kfp artifacts (``Dataset`` directories, ``Model`` directories, ``Metrics``, ``HTML``),
never through shared paths. Every component that runs a stage takes the pipeline's resolved ``params_yaml`` and
its MLflow settings, so a stage behaves as under ``dvc repro``; ``data_dir`` is the directory relative dataset
roots and weight paths resolve against (the data volume in a pod). The main set's extraction is split into shards (one
``extract_regions_op`` call per shard, joined by ``merge_features_op``) and the transfer into one call per transfer
set (the pipeline fans them out with ``dsl.ParallelFor``); the λ sweep is one call (``train_classifier_op``: its
heads train in one vectorized pass).
"""

import hashlib
from pathlib import Path
from typing import Any, List, NamedTuple  # noqa: UP035 - kfp reads typing.List for collected artifacts

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

from image_emotion.errors import ConfigError
from image_emotion.kubeflow import cluster
from image_emotion.kubeflow.images import Images
from image_emotion.kubeflow.trainjob import train_job


def prepare_op(
    params_yaml: str,
    role: str,
    mlflow_tracking_uri: str,
    data_dir: str,
    dataset: Output[Dataset],
    metrics: Output[Metrics],
    data_version: str = "",
):
    """``prepare`` of one role's dataset: ``detector`` (detector_data), ``main`` (data), a transfer set's name or
    ``generative:<name>`` (a set of generative.sets). A synthetic set is drawn inside the artifact, so it travels
    with its manifest; a real set's root is on the data volume.

    ``data_version`` is the version of the role's data (the pipeline passes its ``data_versions`` entry): unused
    here, it is part of kfp's cache key, which knows nothing of the data volume, so new data miss the cache."""
    from pathlib import Path

    from image_emotion.kubeflow import runtime
    from image_emotion.stages import prepare

    config = runtime.role_config(runtime.setup(params_yaml, mlflow_tracking_uri, data_dir), role)
    out = Path(dataset.path)
    config = runtime.draw_if_synthetic(config, out / "images")
    summary = prepare.run(config, prepare.PreparePaths(out / "prepared", out / "prepare.json"))
    (out / "role.txt").write_text(role)  # names a generative set among the collected ones
    runtime.log_to_kfp(metrics, summary)
    runtime.write_json(metrics.path, {"role": role, **summary})  # the report reads the sizes from here


def pretrain_objects_op(
    params_yaml: str,
    mlflow_tracking_uri: str,
    data_dir: str,
    checkpoint_root: str,
    objects: Output[Model],
    metrics: Output[Metrics],
):
    """The object-pretrained detector: the COCO checkpoint, or training on the synthetic objects set (drawn
    inside the artifact). A retried pod resumes from its checkpoint under ``checkpoint_root``."""
    from pathlib import Path

    from image_emotion.kubeflow import runtime
    from image_emotion.stages import pretrain_objects

    config = runtime.setup(params_yaml, mlflow_tracking_uri, data_dir)
    out = Path(objects.path)
    if not config.detector.object_weights:
        config = runtime.draw_objects(config, out / "synthetic")
    checkpoint = runtime.checkpoint_path(checkpoint_root, "pretrain_objects")
    paths = pretrain_objects.PretrainPaths(checkpoint, out / "detector.pt", out / "objects.json")
    runtime.log_to_kfp(metrics, pretrain_objects.run(config, paths))


def finetune_detector_op(
    params_yaml: str,
    mlflow_tracking_uri: str,
    data_dir: str,
    checkpoint_root: str,
    dataset: Input[Dataset],
    objects: Input[Model],
    detector: Output[Model],
    metrics: Output[Metrics],
):
    """Train the emotional-region branch on the detector dataset; a checkpoint every epoch under
    ``checkpoint_root/<run id>/finetune_detector/``, from which a retried pod resumes."""
    from pathlib import Path

    from image_emotion.kubeflow import runtime
    from image_emotion.stages import finetune_detector

    config = runtime.setup(params_yaml, mlflow_tracking_uri, data_dir)
    out = Path(detector.path)
    paths = finetune_detector.FinetunePaths(
        Path(dataset.path) / "prepared",
        Path(objects.path) / "detector.pt",
        runtime.checkpoint_path(checkpoint_root, "finetune_detector"),
        out / "detector.pt",
        out / "detector.json",
    )
    runtime.log_to_kfp(metrics, finetune_detector.run(config, paths))


def job_namespace(given: str = "") -> str:
    """The namespace to submit a TrainJob to: the pod's own (its service account's namespace file,
    ``cluster.NAMESPACE_FILE``), else ``given``; a one-line ``ConfigError`` when neither is there."""
    path = Path(cluster.NAMESPACE_FILE)
    own = path.read_text().strip() if path.is_file() else ""
    if own or given:
        return own or given
    raise ConfigError(f"no namespace for the TrainJob: {path} is missing, pass the component input namespace")


def job_manifest_for(
    run_id: str,
    image: str,
    *,
    workers: int,
    gpus_per_worker: int,
    mlflow_tracking_uri: str,
    checkpoint: str | Path,
    settings: cluster.ClusterDefaults = cluster.DEFAULTS,
    work_root: str | Path | None = None,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """The TrainJob that fine-tunes the detector for run ``run_id`` (its base name: ``trainjob.for_attempt`` names
    each attempt's), and its files on the work volume: what
    ``finetune_detector_job_op`` copies in (``params``, ``dataset`` whose ``prepared`` the job reads, ``objects``)
    under ``<work_root>/jobs/<run id>/finetune_detector/in/`` (``work_root``: ``cluster.WORK_MOUNT``, where the
    job's pods mount the work volume too), what the job writes (``model``, ``metrics``) under ``out/`` there;
    ``checkpoint``: the step's own, so a resubmitted job resumes; ``settings``: the run's volumes, secrets and GPU
    placement, as for the pipeline's own GPU steps."""
    step = Path(work_root or cluster.WORK_MOUNT) / cluster.JOBS_DIR / run_id / "finetune_detector"
    files = {
        "params": step / "in" / "params.yaml",
        "dataset": step / "in" / "dataset",
        "objects": step / "in" / "objects" / "detector.pt",
        "model": step / "out" / "detector.pt",
        "metrics": step / "out" / "detector.json",
    }
    job_paths = {
        "prepared": str(files["dataset"] / "prepared"),
        "objects": str(files["objects"]),
        "checkpoint": str(checkpoint),
        "model": str(files["model"]),
        "metrics": str(files["metrics"]),
    }
    name = f"finetune-detector-{hashlib.sha256(run_id.encode()).hexdigest()[:12]}"  # the run's; + the attempt's
    manifest = train_job(
        name, "finetune-detector", image, run_id, workers=workers, gpus_per_worker=gpus_per_worker,
        mlflow_tracking_uri=mlflow_tracking_uri, params=str(files["params"]), paths=job_paths, cluster=settings,
    )  # fmt: skip
    return manifest, files


def finetune_detector_job_op(
    params_yaml: str,
    mlflow_tracking_uri: str,
    data_dir: str,
    checkpoint_root: str,
    dataset: Input[Dataset],
    objects: Input[Model],
    image: str,
    workers: int,
    gpus_per_worker: int,
    data_pvc: str,
    work_pvc: str,
    mlflow_secret: str,
    s3_secret: str,
    gpu_type: str,
    gpu_tolerations: list,
    gpu_node_selector: dict,
    detector: Output[Model],
    metrics: Output[Metrics],
    namespace: str = "",
):
    """``finetune_detector_op`` as a Kubeflow Trainer v2 TrainJob on ``workers`` pods of ``gpus_per_worker`` GPUs
    each (from ``image``, the CUDA image), submitted to this pod's namespace (else ``namespace``) and waited for.
    The inputs are copied to the work volume for the job, its detector copied back into ``detector``; the job's
    pods mount ``data_pvc`` and ``work_pvc``, read ``mlflow_secret`` and ``s3_secret``, ask for ``gpu_type`` and
    land on ``gpu_node_selector`` nodes tolerating ``gpu_tolerations``, as the pipeline's GPU steps.

    Each attempt of this step submits its own job (``trainjob.for_attempt``: named after this pod, which owns it,
    from the ``POD_*`` variables the pipeline sets), resuming from the run's checkpoint; a job that did not
    complete is deleted when this step ends (``trainjob.run_training_job``)."""
    import os
    import shutil
    from pathlib import Path

    import yaml

    from image_emotion.kubeflow import cluster, runtime, trainjob
    from image_emotion.kubeflow.components import job_manifest_for, job_namespace

    config = runtime.setup(params_yaml, mlflow_tracking_uri, data_dir)
    namespace = job_namespace(namespace)
    checkpoint = runtime.checkpoint_path(checkpoint_root, "finetune_detector")  # the run id is known from here
    manifest, files = job_manifest_for(
        os.environ["IMAGE_EMOTION_PIPELINE_RUN"], image, workers=int(workers), gpus_per_worker=int(gpus_per_worker),
        mlflow_tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or config.mlflow.tracking_uri or "",
        checkpoint=checkpoint, settings=cluster.ClusterDefaults(
            data_pvc=data_pvc, work_pvc=work_pvc, mlflow_secret=mlflow_secret, s3_secret=s3_secret,
            gpu_type=gpu_type, gpu_tolerations=list(gpu_tolerations), gpu_node_selector=dict(gpu_node_selector),
        ),
    )  # fmt: skip
    manifest = trainjob.for_attempt(manifest, namespace, trainjob.launcher_pod())  # this attempt's own job
    shutil.rmtree(files["model"].parent, ignore_errors=True)  # what an earlier attempt's job wrote is not this one's
    files["params"].parent.mkdir(parents=True, exist_ok=True)
    files["params"].write_text(yaml.safe_dump(config.to_dict(), sort_keys=True))  # the experiment set as here
    shutil.copytree(dataset.path, files["dataset"], dirs_exist_ok=True)
    files["objects"].parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(Path(objects.path) / "detector.pt", files["objects"])
    trainjob.run_training_job(manifest, namespace)
    out = Path(detector.path)
    out.mkdir(parents=True, exist_ok=True)
    for key in ("model", "metrics"):
        if not files[key].is_file():
            name = manifest["metadata"]["name"]
            raise trainjob.TrainingJobError(f"the TrainJob {namespace}/{name} succeeded but wrote no {files[key]}")
        shutil.copy2(files[key], out / files[key].name)
    runtime.log_to_kfp(metrics, runtime.read_json(files["metrics"]))


def extract_regions_op(
    params_yaml: str,
    mlflow_tracking_uri: str,
    data_dir: str,
    detector: Input[Model],
    objects: Input[Model],
    dataset: Input[Dataset],
    features: Output[Dataset],
    metrics: Output[Metrics],
    shard: int = 0,
    shards: int = 1,
):
    """Global + top-K region features of every image of one dataset, as a shard cache; with ``shards`` > 1 only
    shard ``shard``'s share of its ranges (``extract-regions --shard``), a part that ``merge_features_op`` joins."""
    from pathlib import Path

    from image_emotion.kubeflow import runtime
    from image_emotion.stages import extract_regions

    config = runtime.setup(params_yaml, mlflow_tracking_uri, data_dir)
    out = Path(features.path)
    paths = extract_regions.ExtractPaths(
        Path(detector.path) / "detector.pt",
        Path(objects.path) / "detector.pt",  # the object-pretrained detector finds Table 1's object regions
        (Path(dataset.path) / "prepared",),
        (out / "cache",),
        out / "extract.json",
    )
    part = (int(shard), int(shards))  # a parameter may arrive as a JSON number (0.0)
    runtime.log_to_kfp(metrics, extract_regions.run(config, paths, shard=part))


def set_roles_op(params_yaml: str, sets: str) -> List[str]:  # noqa: UP006
    """The items of a ParallelFor, read from the run's params (so they are given once): ``sets`` ``transfer``,
    the names of ``transfer.sets``; ``generative``, the prepare roles of ``generative.sets``."""
    from image_emotion.kubeflow import runtime

    return runtime.set_roles(runtime.validated(params_yaml), sets)


def min_accuracy_op(params_yaml: str) -> float:
    """``register.min_accuracy`` of the run's params: the validation accuracy below which nothing is registered."""
    from image_emotion.kubeflow import runtime

    return float(runtime.validated(params_yaml).register.min_accuracy)


def shard_indices_op(shards: int) -> List[int]:  # noqa: UP006
    """The shard indices ``0 .. shards - 1`` of a sharded extraction (the items of the pipeline's ParallelFor)."""
    from image_emotion.errors import ConfigError

    if shards < 1 or shards != int(shards):
        raise ConfigError(f"extraction_shards must be a whole number of at least 1, got {shards}")
    return list(range(int(shards)))


def merge_features_op(parts: Input[List[Dataset]], features: Output[Dataset], metrics: Output[Metrics]):  # noqa: UP006
    """Join the parts of a sharded extraction (``extract_regions_op`` with ``shard``/``shards``) into the cache an
    unsharded extraction writes, byte for byte (``image-emotion merge-features``)."""
    from pathlib import Path

    from image_emotion.kubeflow import runtime
    from image_emotion.training.feature_cache import merge_caches

    out = Path(features.path)
    merged = merge_caches([Path(part.path) / "cache" for part in parts], out / "cache")
    extracted = [runtime.read_json(Path(part.path) / "extract.json")["datasets"]["cache"] for part in parts]
    totals = {
        "images": merged["images"],
        "shards": merged["shards"],
        "parts": merged["parts"],
        "shards_computed": sum(e["shards_computed"] for e in extracted),
        "shards_reused": sum(e["shards_reused"] for e in extracted),
    }
    runtime.write_json(out / "extract.json", {"datasets": {"cache": totals}})  # as the parts' extract.json
    runtime.log_to_kfp(metrics, totals)


def train_classifier_op(
    params_yaml: str,
    mlflow_tracking_uri: str,
    data_dir: str,
    main: Input[Dataset],
    features: Input[Dataset],
    classifier: Output[Model],
    metrics: Output[Metrics],
):
    """The multi-level head on the main set's cached features: the λ sweep over ``classifier.lambdas`` in one
    vectorized pass (λ* chosen on validation), then the loss variants, Table 1 ablations and 2-class head at λ*;
    each training a nested MLflow run of the ``train_classifier`` stage run. ``classifier`` holds the λ* heads
    and the sweep, ablation and summary JSON files."""
    from pathlib import Path

    from image_emotion.kubeflow import runtime
    from image_emotion.stages import train_classifier

    config = runtime.setup(params_yaml, mlflow_tracking_uri, data_dir)
    out = Path(classifier.path)
    paths = train_classifier.ClassifierPaths(
        Path(main.path) / "prepared", Path(features.path) / "cache", out, out / "lambda_sweep.json",
        out / "ablation.json", out / "classifier.json",
    )  # fmt: skip
    runtime.log_to_kfp(metrics, train_classifier.run(config, paths))


def transfer_cv_op(
    params_yaml: str,
    set_name: str,
    mlflow_tracking_uri: str,
    data_dir: str,
    dataset: Input[Dataset],
    features: Input[Dataset],
    classifier: Input[Model],
    result: Output[Metrics],
):
    """The 5-fold one-against-all transfer to one small set; its summary is the ``result`` artifact's file."""
    from pathlib import Path

    from image_emotion.kubeflow import runtime
    from image_emotion.stages import transfer_cv

    config = runtime.setup(params_yaml, mlflow_tracking_uri, data_dir)
    paths = transfer_cv.TransferPaths(
        set_name, Path(dataset.path) / "prepared", Path(features.path) / "cache",
        Path(classifier.path) / "head.pt", Path(result.path),
    )  # fmt: skip
    summary = transfer_cv.run(config, paths)  # writes the artifact's own file (it travels with it)
    result.log_metric("accuracy_mean", summary["accuracy_mean"])
    result.metadata["set"] = set_name


def evaluate_op(
    params_yaml: str,
    mlflow_tracking_uri: str,
    data_dir: str,
    main: Input[Dataset],
    features: Input[Dataset],
    classifier: Input[Model],
    transfer: Input[List[Metrics]],  # noqa: UP006
    metrics: Output[Metrics],
    plots: Output[Dataset],
) -> float:
    """Test metrics and plots (the λ curve, the confusion matrix, region overlays: the ``plots`` directory).

    Returns the test accuracy (the pipeline's register condition reads it).
    """
    import tempfile
    from pathlib import Path

    from image_emotion.kubeflow import runtime
    from image_emotion.stages import evaluate

    config = runtime.setup(params_yaml, mlflow_tracking_uri, data_dir)
    cls_dir = Path(classifier.path)
    transfer_dir = Path(tempfile.mkdtemp(prefix="transfer-"))  # <set>.json, as dvc.yaml's metrics/transfer/
    runtime.collect_transfer(transfer, transfer_dir)
    paths = evaluate.EvaluatePaths(
        Path(main.path) / "prepared", Path(features.path) / "cache", cls_dir / "head.pt", cls_dir / "head_binary.pt",
        cls_dir / "lambda_sweep.json", cls_dir / "ablation.json", transfer_dir, Path(metrics.path), Path(plots.path),
    )  # fmt: skip
    result = evaluate.run(config, paths)
    runtime.log_to_kfp(metrics, result)
    return float(result["val_accuracy"])  # what the register condition compares (test is only reported)


def train_metric_op(
    params_yaml: str,
    mlflow_tracking_uri: str,
    data_dir: str,
    main: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Seed 002: the sentiment-vector network on the main set, and the rows of its Table 1."""
    from pathlib import Path

    from image_emotion.kubeflow import runtime
    from image_emotion.stages import train_metric

    config = runtime.setup(params_yaml, mlflow_tracking_uri, data_dir)
    out = Path(model.path)
    paths = train_metric.TrainMetricPaths(
        Path(main.path) / "prepared", out, out / "metric.json", out / "metric_ablation.json"
    )
    runtime.log_to_kfp(metrics, train_metric.run(config, paths))


def retrieve_op(
    params_yaml: str,
    mlflow_tracking_uri: str,
    data_dir: str,
    main: Input[Dataset],
    model: Input[Model],
    index: Output[Model],
    metrics: Output[Metrics],
    plots: Output[Dataset],
):
    """Seed 002: the retrieval index of the main set, the seven measures, the t-SNE and query figures.
    ``metrics`` holds ``retrieval.json``."""
    from pathlib import Path

    from image_emotion.kubeflow import runtime
    from image_emotion.stages import retrieve

    config = runtime.setup(params_yaml, mlflow_tracking_uri, data_dir)
    paths = retrieve.RetrievePaths(
        Path(main.path) / "prepared", Path(model.path) / "model.pt", Path(model.path) / "metric_ablation.json",
        Path(index.path), Path(metrics.path), Path(plots.path),
    )  # fmt: skip
    retrieve.run(config, paths)
    runtime.log_to_kfp(metrics, runtime.read_json(metrics.path)["main"])


def retrieve_transfer_op(
    params_yaml: str,
    set_name: str,
    mlflow_tracking_uri: str,
    data_dir: str,
    dataset: Input[Dataset],
    model: Input[Model],
    result: Output[Metrics],
):
    """Seed 002: leave-one-out retrieval on one transfer set; ``result`` holds its ``<set>.json``."""
    from pathlib import Path

    from image_emotion.kubeflow import runtime
    from image_emotion.stages import retrieve_transfer

    config = runtime.setup(params_yaml, mlflow_tracking_uri, data_dir)
    paths = retrieve_transfer.RetrieveTransferPaths(
        set_name, Path(dataset.path) / "prepared", Path(model.path) / "model.pt", Path(result.path)
    )
    retrieve_transfer.run(config, paths)
    runtime.log_to_kfp(result, runtime.read_json(result.path))


def train_generative_op(
    params_yaml: str,
    mlflow_tracking_uri: str,
    data_dir: str,
    checkpoint_root: str,
    main: Input[Dataset],
    sets: Input[List[Dataset]],  # noqa: UP006
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Seed 001: one generative model for every emotion model (main set + ``generative.sets``), the probes'
    baseline and the low-resource curve; ``model`` also holds generative_train.json and
    generative_low_resource.json. A retried pod resumes from its checkpoint under ``checkpoint_root``."""
    import tempfile
    from pathlib import Path

    from image_emotion.kubeflow import runtime
    from image_emotion.stages import train_generative

    config = runtime.setup(params_yaml, mlflow_tracking_uri, data_dir)
    work = Path(tempfile.mkdtemp(prefix="generative-"))
    out = Path(model.path)
    checkpoint = runtime.checkpoint_path(checkpoint_root, "train_generative")
    paths = train_generative.TrainGenerativePaths(
        Path(main.path) / "prepared", runtime.link_generative_sets(sets, work / "sets"), checkpoint,
        out, out / "generative_train.json", out / "generative_low_resource.json",
    )  # fmt: skip
    runtime.log_to_kfp(metrics, train_generative.run(config, paths)["test_accuracy"])


def evaluate_generative_op(
    params_yaml: str,
    mlflow_tracking_uri: str,
    data_dir: str,
    main: Input[Dataset],
    sets: Input[List[Dataset]],  # noqa: UP006
    model: Input[Model],
    metrics: Output[Metrics],
    plots: Output[Dataset],
) -> float:
    """Seed 001: accuracy per emotion model from the one model, constrained decoding, low-resource curve;
    ``metrics`` holds ``generative.json``. Returns the main emotion model's test accuracy."""
    import tempfile
    from pathlib import Path

    from image_emotion.kubeflow import runtime
    from image_emotion.stages import evaluate_generative

    config = runtime.setup(params_yaml, mlflow_tracking_uri, data_dir)
    work = Path(tempfile.mkdtemp(prefix="generative-"))
    trained = Path(model.path)
    paths = evaluate_generative.EvaluateGenerativePaths(
        Path(main.path) / "prepared", runtime.link_generative_sets(sets, work / "sets"), trained,
        trained / "generative_train.json", trained / "generative_low_resource.json", Path(metrics.path),
        Path(plots.path),
    )  # fmt: skip
    result = evaluate_generative.run(config, paths)
    runtime.log_to_kfp(metrics, {"accuracy": result["accuracy"], **result["decoding"]})
    return float(result["accuracy"])


def report_op(
    params_yaml: str,
    mlflow_tracking_uri: str,
    data_dir: str,
    prepared_detector: Input[Metrics],
    prepared_main: Input[Metrics],
    prepared_transfer: Input[List[Metrics]],  # noqa: UP006
    detector: Input[Model],
    classifier: Input[Model],
    transfer: Input[List[Metrics]],  # noqa: UP006
    evaluation: Input[Metrics],
    plots: Input[Dataset],
    retrieval: Input[Metrics],
    retrieval_transfer: Input[List[Metrics]],  # noqa: UP006
    retrieval_plots: Input[Dataset],
    generative: Input[Metrics],
    generative_plots: Input[Dataset],
    html: Output[HTML],
    markdown: Output[Markdown],
):
    """The paper's tables beside this run's figures: the HTML and Markdown artifacts the kfp UI shows (figures
    inlined), also logged to the MLflow parent run."""
    import shutil
    import tempfile
    from pathlib import Path

    from image_emotion.kubeflow import runtime
    from image_emotion.stages import report

    config = runtime.setup(params_yaml, mlflow_tracking_uri, data_dir)
    root = Path(tempfile.mkdtemp(prefix="results-"))  # the run's result files, in dvc.yaml's layout
    results = root / "metrics"
    results.mkdir()
    for prepared in (prepared_detector, prepared_main, *prepared_transfer):
        summary = runtime.read_json(prepared.path)
        runtime.write_json(results / "prepare" / f"{summary['role']}.json", summary)
    runtime.collect_transfer(transfer, results / "transfer")
    for name in ("classifier.json", "lambda_sweep.json", "ablation.json"):
        shutil.copy(Path(classifier.path) / name, results / name)
    shutil.copy(Path(detector.path) / "detector.json", results / "detector.json")
    shutil.copy(evaluation.path, results / "evaluate.json")
    shutil.copy(retrieval.path, results / "retrieval.json")
    shutil.copy(generative.path, results / "generative.json")
    for result in retrieval_transfer:
        summary = runtime.read_json(result.path)
        runtime.write_json(results / "retrieval_transfer" / f"{summary['set']}.json", summary)
    paths = report.ReportPaths.under(
        root,
        plots=Path(plots.path),
        retrieval_plots=Path(retrieval_plots.path),
        generative_plots=Path(generative_plots.path),
        out_dir=Path(tempfile.mkdtemp(prefix="report-")),
    )
    report.write_report(config, paths, inline_figures=True)
    shutil.copy(paths.out_dir / "paper.html", html.path)
    shutil.copy(paths.out_dir / "paper.md", markdown.path)


def register_op(
    params_yaml: str,
    mlflow_tracking_uri: str,
    data_dir: str,
    main: Input[Dataset],
    detector: Input[Model],
    classifier: Input[Model],
    evaluation: Input[Metrics],
) -> NamedTuple("RegisterOutputs", [("version", int), ("promoted", bool)]):
    """Log and register the model; ``challenger`` always, ``champion`` only when it beats the current one."""
    import tempfile
    from pathlib import Path

    from image_emotion.kubeflow import runtime
    from image_emotion.stages import register

    config = runtime.setup(params_yaml, mlflow_tracking_uri, data_dir)
    paths = register.RegisterPaths(
        Path(main.path) / "prepared", Path(detector.path) / "detector.pt", Path(classifier.path) / "head.pt",
        Path(evaluation.path), Path(tempfile.mkdtemp(prefix="register-")) / "register.json",
    )  # fmt: skip
    result = register.run(config, paths)
    return runtime.register_outputs(result)


def register_metric_op(
    params_yaml: str,
    mlflow_tracking_uri: str,
    data_dir: str,
    main: Input[Dataset],
    model: Input[Model],
    index: Input[Model],
    retrieval: Input[Metrics],
) -> NamedTuple("RegisterOutputs", [("version", int), ("promoted", bool)]):
    """Seed 002: log and register the retrieval model; ``champion`` only when its test mAP8 is better."""
    import tempfile
    from pathlib import Path

    from image_emotion.kubeflow import runtime
    from image_emotion.stages import register_metric

    config = runtime.setup(params_yaml, mlflow_tracking_uri, data_dir)
    paths = register_metric.RegisterMetricPaths(
        Path(main.path) / "prepared", Path(model.path) / "model.pt", Path(index.path), Path(retrieval.path),
        Path(tempfile.mkdtemp(prefix="register-")) / "register_metric.json",
    )  # fmt: skip
    result = register_metric.run(config, paths)
    return runtime.register_outputs(result)


def register_generative_op(
    params_yaml: str,
    mlflow_tracking_uri: str,
    data_dir: str,
    main: Input[Dataset],
    model: Input[Model],
    evaluation: Input[Metrics],
) -> NamedTuple("RegisterOutputs", [("version", int), ("promoted", bool)]):
    """Seed 001: log and register the generative model; ``champion`` only when its test accuracy is better."""
    import tempfile
    from pathlib import Path

    from image_emotion.kubeflow import runtime
    from image_emotion.stages import register_generative

    config = runtime.setup(params_yaml, mlflow_tracking_uri, data_dir)
    paths = register_generative.RegisterGenerativePaths(
        Path(main.path) / "prepared", Path(model.path), Path(evaluation.path),
        Path(tempfile.mkdtemp(prefix="register-")) / "register_generative.json",
    )  # fmt: skip
    result = register_generative.run(config, paths)
    return runtime.register_outputs(result)


COMPONENT_FUNCTIONS = (
    set_roles_op, min_accuracy_op, prepare_op, pretrain_objects_op, finetune_detector_op, finetune_detector_job_op,
    extract_regions_op, shard_indices_op, merge_features_op, train_classifier_op, transfer_cv_op, evaluate_op,
    train_metric_op, retrieve_op, retrieve_transfer_op, train_generative_op, evaluate_generative_op, report_op,
    register_op, register_metric_op, register_generative_op,
)  # fmt: skip
GPU_COMPONENTS = frozenset({
    "pretrain_objects_op", "finetune_detector_op", "extract_regions_op", "train_classifier_op", "train_metric_op",
    "train_generative_op",
})  # fmt: skip


def build_components(images: Images) -> dict[str, dsl.base_component.BaseComponent]:
    """Every component by function name, in the CUDA image where it trains or extracts, else the CPU image."""
    unknown = GPU_COMPONENTS - {f.__name__ for f in COMPONENT_FUNCTIONS}
    if unknown:
        raise ValueError(f"GPU_COMPONENTS names no component: {', '.join(sorted(unknown))}")
    return {
        f.__name__: dsl.component(
            f, base_image=images.cuda if f.__name__ in GPU_COMPONENTS else images.cpu, install_kfp_package=False
        )
        for f in COMPONENT_FUNCTIONS
    }
