"""One kfp v2 component per pipeline stage; each is a thin function that calls the package's stage code.

Data flows through kfp artifacts (``Dataset`` directories, ``Model`` directories, ``Metrics``, ``HTML``),
never through shared paths. Every component takes the pipeline's resolved ``params_yaml`` and its MLflow
settings, so a stage behaves as under ``dvc repro``. The λ sweep and the transfer folds are split into one
component call per λ / per fold (the pipeline fans them out with ``dsl.ParallelFor``); the stage modules
expose those steps (``sweep_point``, ``run_fold``) so nothing is written twice.
"""

from typing import List, NamedTuple  # noqa: UP035 - kfp reads typing.List for collected artifacts

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from image_emotion.kubeflow import IMAGE_CPU, IMAGE_CUDA


@dsl.component(base_image=IMAGE_CPU)
def prepare_op(
    params_yaml: str,
    target: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    pipeline_run_id: str,
    dataset: Output[Dataset],
    metrics: Output[Metrics],
):
    """``make_synthetic`` (for the synthetic dataset) + ``prepare`` of the main or the transfer dataset."""
    from pathlib import Path

    from image_emotion.kubeflow import runtime
    from image_emotion.stages import make_synthetic, prepare

    config = runtime.setup(params_yaml, mlflow_tracking_uri, mlflow_experiment, pipeline_run_id)
    if target == "transfer":
        config = runtime.transfer_config(config)
    out = Path(dataset.path)
    if config.data.dataset == "synthetic":  # drawn inside the artifact, so it travels with the manifest
        config = config.with_overrides([f"data.root={out / 'images'}"])
        make_synthetic.run(config, make_synthetic.MakeSyntheticPaths(out / "images"))
    summary = prepare.run(config, prepare.PreparePaths(out / "prepared", out / "prepare.json"))
    runtime.log_to_kfp(metrics, summary)


@dsl.component(base_image=IMAGE_CUDA)
def finetune_detector_op(
    params_yaml: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    pipeline_run_id: str,
    dataset: Input[Dataset],
    detector: Output[Model],
    metrics: Output[Metrics],
):
    """Train the emotional-region detector (checkpoints every epoch beside the model)."""
    from pathlib import Path

    from image_emotion.kubeflow import runtime
    from image_emotion.stages import finetune_detector

    config = runtime.setup(params_yaml, mlflow_tracking_uri, mlflow_experiment, pipeline_run_id)
    out = Path(detector.path)
    paths = finetune_detector.FinetunePaths(
        Path(dataset.path) / "prepared", out / "checkpoint" / "last.pt", out / "detector.pt", out / "detector.json"
    )
    runtime.log_to_kfp(metrics, finetune_detector.run(config, paths))


@dsl.component(base_image=IMAGE_CUDA)
def extract_regions_op(
    params_yaml: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    pipeline_run_id: str,
    detector: Input[Model],
    main: Input[Dataset],
    transfer: Input[Dataset],
    features: Output[Dataset],
    metrics: Output[Metrics],
):
    """Global + top-K region features of every image of both datasets, as a shard cache."""
    from pathlib import Path

    from image_emotion.kubeflow import runtime
    from image_emotion.stages import extract_regions

    config = runtime.setup(params_yaml, mlflow_tracking_uri, mlflow_experiment, pipeline_run_id)
    out = Path(features.path)
    paths = extract_regions.ExtractPaths(
        Path(detector.path) / "detector.pt",
        (Path(main.path) / "prepared", Path(transfer.path) / "prepared"),
        (out / "main", out / "transfer"),
        out / "extract.json",
    )
    runtime.log_to_kfp(metrics, extract_regions.run(config, paths))


@dsl.component(base_image=IMAGE_CPU)
def train_lambda_op(
    params_yaml: str,
    lam: float,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    pipeline_run_id: str,
    main: Input[Dataset],
    features: Input[Dataset],
    head: Output[Model],
):
    """One point of the λ sweep: the head trained with L_multi at ``lam`` and its validation/test scores."""
    from pathlib import Path

    from image_emotion.kubeflow import runtime
    from image_emotion.models.multilevel import save_head
    from image_emotion.stages import train_classifier
    from image_emotion.tracking import runs as tracking

    config = runtime.setup(params_yaml, mlflow_tracking_uri, mlflow_experiment, pipeline_run_id)
    inputs = train_classifier.load_inputs(config, Path(main.path) / "prepared", Path(features.path) / "main")
    with tracking.stage_run(config, "train_classifier", train_classifier.TRACKED_SECTIONS):
        model, row = train_classifier.sweep_point(inputs, lam)
    out = Path(head.path)
    save_head(out / "head.pt", model, inputs.dims, inputs.data.label_set, {"lambda": lam})
    runtime.write_json(out / "row.json", row)
    head.metadata.update({k: v for k, v in row.items() if isinstance(v, float)})


@dsl.component(base_image=IMAGE_CPU)
def select_classifier_op(
    params_yaml: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    pipeline_run_id: str,
    main: Input[Dataset],
    features: Input[Dataset],
    heads: Input[List[Model]],  # noqa: UP006
    classifier: Output[Model],
    metrics: Output[Metrics],
):
    """λ* from the collected sweep (validation), then the loss variants, Table 1 ablations and 2-class head."""
    from pathlib import Path

    from image_emotion.kubeflow import runtime
    from image_emotion.models.multilevel import load_head
    from image_emotion.stages import train_classifier
    from image_emotion.tracking import runs as tracking

    config = runtime.setup(params_yaml, mlflow_tracking_uri, mlflow_experiment, pipeline_run_id)
    inputs = train_classifier.load_inputs(config, Path(main.path) / "prepared", Path(features.path) / "main")
    head_of = {}  # λ -> the directory of its head
    for h in heads:
        row = runtime.read_json(Path(h.path) / "row.json")
        head_of[row["lambda"]] = (row, Path(h.path))
    sweep = [head_of[lam][0] for lam in sorted(head_of)]
    best = train_classifier.select_lambda(sweep)
    best_head, _ = load_head(head_of[best["lambda"]][1] / "head.pt")
    with tracking.stage_run(config, "train_classifier", train_classifier.TRACKED_SECTIONS):
        losses, ablation, binary_head, binary = train_classifier.variants(inputs, sweep, best)
    out = Path(classifier.path)
    paths = train_classifier.ClassifierPaths(
        Path(main.path) / "prepared", Path(features.path) / "main", out, out / "lambda_sweep.json",
        out / "ablation.json", out / "classifier.json",
    )  # fmt: skip
    result = train_classifier.write_outputs(
        paths, inputs, best_head, sweep, best, losses, ablation, binary_head, binary
    )
    runtime.log_to_kfp(metrics, result)


@dsl.component(base_image=IMAGE_CPU)
def transfer_fold_op(
    params_yaml: str,
    fold: int,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    pipeline_run_id: str,
    transfer: Input[Dataset],
    features: Input[Dataset],
    classifier: Input[Model],
    result: Output[Metrics],
):
    """One fold of the one-against-all transfer: train on the other folds, test on ``fold``."""
    from pathlib import Path

    from image_emotion.kubeflow import runtime
    from image_emotion.stages import transfer_cv
    from image_emotion.tracking import runs as tracking

    config = runtime.setup(params_yaml, mlflow_tracking_uri, mlflow_experiment, pipeline_run_id)
    inputs = transfer_cv.load_inputs(
        config, Path(transfer.path) / "prepared", Path(features.path) / "transfer", Path(classifier.path) / "head.pt"
    )
    with tracking.stage_run(config, "transfer_cv", transfer_cv.TRACKED_SECTIONS):
        row = transfer_cv.run_fold(inputs, fold)
    runtime.write_json(result.path, row)  # the artifact's own file travels with it (cluster or local)
    result.log_metric("accuracy", row["accuracy"])


@dsl.component(base_image=IMAGE_CPU)
def transfer_summary_op(
    params_yaml: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    pipeline_run_id: str,
    transfer: Input[Dataset],
    results: Input[List[Metrics]],  # noqa: UP006
    summary: Output[Metrics],
):
    """Mean ± std accuracy over the collected folds (logged to the transfer_cv stage run, as under DVC)."""
    from pathlib import Path

    from image_emotion.data.torch_data import PreparedDataset
    from image_emotion.kubeflow import runtime
    from image_emotion.stages import transfer_cv
    from image_emotion.tracking import runs as tracking

    config = runtime.setup(params_yaml, mlflow_tracking_uri, mlflow_experiment, pipeline_run_id)
    data = PreparedDataset.load(Path(transfer.path) / "prepared")
    rows = [runtime.read_json(r.path) for r in results]
    with tracking.stage_run(config, "transfer_cv", transfer_cv.TRACKED_SECTIONS):
        metrics = transfer_cv.summarize(data.name, data.label_set, rows)
        transfer_cv.log_summary(metrics)
    runtime.write_json(summary.path, metrics)
    runtime.log_to_kfp(summary, metrics)


@dsl.component(base_image=IMAGE_CPU)
def evaluate_op(
    params_yaml: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    pipeline_run_id: str,
    main: Input[Dataset],
    features: Input[Dataset],
    classifier: Input[Model],
    transfer_summary: Input[Metrics],
    metrics: Output[Metrics],
    report: Output[HTML],
) -> float:
    """Test metrics and plots; an HTML report with the λ curve, the confusion matrix and region overlays.

    Returns the test accuracy (the pipeline's register condition reads it).
    """
    import base64
    from pathlib import Path

    from image_emotion.kubeflow import runtime
    from image_emotion.stages import evaluate

    config = runtime.setup(params_yaml, mlflow_tracking_uri, mlflow_experiment, pipeline_run_id)
    import tempfile

    cls_dir = Path(classifier.path)
    plots = Path(tempfile.mkdtemp(prefix="plots-"))  # embedded in the HTML report below
    paths = evaluate.EvaluatePaths(
        Path(main.path) / "prepared", Path(features.path) / "main", cls_dir / "head.pt", cls_dir / "head_binary.pt",
        cls_dir / "lambda_sweep.json", cls_dir / "ablation.json", Path(transfer_summary.path),
        Path(metrics.path), plots,
    )  # fmt: skip
    result = evaluate.run(config, paths)
    runtime.log_to_kfp(metrics, result)
    images = "".join(
        f'<h3>{name}</h3><img src="data:image/png;base64,{base64.b64encode((plots / name).read_bytes()).decode()}"/>'
        for name in ("lambda_curve.png", "confusion.png", "regions.png")
    )
    table = "".join(f"<tr><td>{m}</td><td>{a:.3f}</td></tr>" for m, a in result["table1"].items())
    Path(report.path).write_text(
        f"<html><body><h2>image-emotion: test accuracy {result['test_accuracy']:.3f}</h2>"
        f"<table><tr><th>features</th><th>test accuracy</th></tr>{table}</table>{images}</body></html>"
    )
    return float(result["test_accuracy"])


@dsl.component(base_image=IMAGE_CPU)
def register_op(
    params_yaml: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    pipeline_run_id: str,
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

    config = runtime.setup(params_yaml, mlflow_tracking_uri, mlflow_experiment, pipeline_run_id)
    paths = register.RegisterPaths(
        Path(main.path) / "prepared", Path(detector.path) / "detector.pt", Path(classifier.path) / "head.pt",
        Path(evaluation.path), Path(tempfile.mkdtemp(prefix="register-")) / "register.json",
    )  # fmt: skip
    result = register.run(config, paths)
    from collections import namedtuple

    return namedtuple("RegisterOutputs", ["version", "promoted"])(int(result["version"]), bool(result["promoted"]))
