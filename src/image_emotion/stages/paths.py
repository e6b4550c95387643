"""Every pipeline stage declared once: one frozen dataclass a stage, whose fields are where it reads and writes
(defaults: the repository's layout) and whose class attributes say the rest of its contract.

From these declarations come ``dvc.yaml`` (``stages/dvc_yaml.py``: ``image-emotion dvc-yaml``, checked fresh by
the test suite), the CLI's sub-commands and their path options, and the params each stage logs to MLflow. A
field's role (``dep``, ``out``, ``metric``, ``checkpoint``) is how DVC tracks it; ``reads`` are the sections of
``params.yaml`` the stage's results depend on (a dotted key for one part of a section); ``runs`` are its entries in
``dvc.yaml`` (one stage can run several times: once a prepared dataset, a ``foreach`` over the transfer sets).

Kept apart from the stage modules (which import torch, MLflow...) so the CLI can build its options fast.
Adding a stage: a class here (registered by ``@stage``) and ``stages/<module>.py`` with ``run(config, paths)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

DEP, OUT, METRIC, CHECKPOINT = "dep", "out", "metric", "checkpoint"


def dep(path: str | tuple[str, ...], tracked: str = "") -> Any:
    """A file or folder the stage reads (a tuple: repeatable); DVC tracks ``tracked`` when set (the folder a
    model file lives in), else the path."""
    default = tuple(Path(p) for p in path) if isinstance(path, tuple) else Path(path)
    return field(default=default, metadata={"role": DEP, "tracked": tracked})


def out(path: str | tuple[str, ...], tracked: str = "", persist: bool = False) -> Any:
    """What the stage writes, cached by DVC (``persist``: kept while the stage re-runs, so finished parts are
    reused)."""
    default = tuple(Path(p) for p in path) if isinstance(path, tuple) else Path(path)
    return field(default=default, metadata={"role": OUT, "tracked": tracked, "persist": persist})


def metric(path: str) -> Any:
    """A JSON result: a DVC metric, kept in git (not cached)."""
    return field(default=Path(path), metadata={"role": METRIC})


def checkpoint(path: str) -> Any:
    """The stage's resumable checkpoint: its folder persists across runs and is not cached."""
    return field(default=Path(path), metadata={"role": CHECKPOINT, "tracked": str(Path(path).parent)})


@dataclass(frozen=True)
class Run:
    """One entry of the stage in ``dvc.yaml``.

    name: the DVC stage's name; foreach: a params list to run once per item (``${item.<key>}`` in the values);
    paths: path options other than the defaults; overrides: ``--set key=value`` options; copies: ``--set-from
    key=other.key`` options (a value the user typed, such as a dataset root, is copied inside the params, never
    interpolated into the shell command); data: dataset roots read (params expressions); reads: the sections when
    they differ from the stage's; comment: shown above the entry.
    """

    name: str
    foreach: str = ""
    paths: Mapping[str, str] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()
    copies: tuple[str, ...] = ()
    data: tuple[str, ...] = ()
    reads: tuple[str, ...] | None = None
    comment: str = ""


@dataclass(frozen=True)
class Stage:
    """The base of every declaration (the class attributes below; the dataclass fields are the paths)."""

    command: ClassVar[str]  # the CLI sub-command
    module: ClassVar[str]  # image_emotion.stages.<module>, whose run(config, paths) is the stage
    help: ClassVar[str]
    reads: ClassVar[tuple[str, ...]] = ()  # params.yaml sections ("*": the whole file)
    runs: ClassVar[tuple[Run, ...]] = ()  # default: one entry named after the module, default paths
    dvc_plots: ClassVar[tuple[Any, ...]] = ()  # dvc.yaml's top-level plots of this stage's outputs
    distributed: ClassVar[bool] = False  # trains data-parallel under torchrun (a PyTorchJob on a cluster)

    @classmethod
    def dvc_runs(cls) -> tuple[Run, ...]:
        return cls.runs or (Run(cls.module),)

    @classmethod
    def under(cls: type[S], root: Path, **given: Any) -> S:
        """The stage's paths laid out under ``root`` as they are under the repository (``given``: fields set
        instead)."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in given:
                values[f.name] = given[f.name]
            elif isinstance(f.default, Path):
                values[f.name] = root / f.default
            elif isinstance(f.default, tuple):
                values[f.name] = tuple(root / p for p in f.default)
        return cls(**values)


S = TypeVar("S", bound=Stage)
STAGES: dict[str, type[Stage]] = {}  # CLI sub-command -> declaration, in pipeline order


def stage(cls: type[S]) -> type[S]:
    """Register a declaration (its ``command`` must be new)."""
    if cls.command in STAGES:
        raise ValueError(f"two stages declare the command {cls.command!r}")
    STAGES[cls.command] = cls
    return cls


def role(f: dataclasses.Field) -> str:
    """A path field's role for DVC ("" for a plain option such as a set's name)."""
    return f.metadata.get("role", "")


_PREPARE = ("data", "images", "prepare")


@stage
@dataclass(frozen=True)
class MakeSyntheticPaths(Stage):
    """Where the dataset goes."""

    command: ClassVar[str] = "make-synthetic"
    module: ClassVar[str] = "make_synthetic"
    help: ClassVar[str] = "draw the synthetic default dataset (params: synthetic)"
    reads: ClassVar[tuple[str, ...]] = ("synthetic",)

    out_dir: Path = out("data/synthetic")


@stage
@dataclass(frozen=True)
class PreparePaths(Stage):
    """Where ``prepare`` writes."""

    command: ClassVar[str] = "prepare"
    module: ClassVar[str] = "prepare"
    help: ClassVar[str] = "dataset layout -> validated manifest, splits, folds (params: data)"
    reads: ClassVar[tuple[str, ...]] = _PREPARE
    runs: ClassVar[tuple[Run, ...]] = (
        Run(
            "prepare_detector",
            paths={"out_dir": "data/prepared/detector", "metrics": "metrics/prepare/detector.json"},
            copies=("data.dataset=detector_data.dataset", "data.root=detector_data.root"),
            data=("${detector_data.root}",),
            reads=("detector_data", *_PREPARE),
        ),
        Run("prepare_main", data=("${data.root}",)),
        Run(
            "prepare_transfer",
            foreach="${transfer.sets}",
            paths={"out_dir": "data/prepared/${item.name}", "metrics": "metrics/prepare/${item.name}.json"},
            copies=("data.dataset=transfer.sets.${item.name}.dataset", "data.root=transfer.sets.${item.name}.root"),
            data=("${item.root}",),
            reads=("transfer.sets", *_PREPARE),
        ),
        Run(
            "prepare_generative",
            foreach="${generative.sets}",
            paths={
                "out_dir": "data/prepared/generative/${item.name}",
                "metrics": "metrics/prepare_generative/${item.name}.json",
            },
            copies=(
                "data.dataset=generative.sets.${item.name}.dataset",
                "data.root=generative.sets.${item.name}.root",
            ),
            data=("${item.root}",),
            reads=("generative.sets", *_PREPARE),
            comment="seed 001: each set of another emotion model mixed into the generative model",
        ),
    )

    out_dir: Path = out("data/prepared/main")
    metrics: Path = metric("metrics/prepare/main.json")


@stage
@dataclass(frozen=True)
class PretrainPaths(Stage):
    """The object-pretrained detector (COCO's role)."""

    command: ClassVar[str] = "pretrain-objects"
    module: ClassVar[str] = "pretrain_objects"
    help: ClassVar[str] = "the object-pretrained detector (COCO or synthetic)"
    distributed: ClassVar[bool] = True
    reads: ClassVar[tuple[str, ...]] = ("device", "detector", "pretrain")
    runs: ClassVar[tuple[Run, ...]] = (Run("pretrain_objects", data=("${pretrain.root}",)),)

    checkpoint: Path = checkpoint("checkpoints/objects/last.pt")
    model: Path = out("models/objects/detector.pt", tracked="models/objects")
    metrics: Path = metric("metrics/objects.json")


@stage
@dataclass(frozen=True)
class FinetunePaths(Stage):
    command: ClassVar[str] = "finetune-detector"
    module: ClassVar[str] = "finetune_detector"
    help: ClassVar[str] = "train the emotional-region branch (resumes)"
    distributed: ClassVar[bool] = True
    reads: ClassVar[tuple[str, ...]] = ("device", "finetune")

    prepared: Path = dep("data/prepared/detector")
    objects: Path = dep("models/objects/detector.pt", tracked="models/objects")
    checkpoint: Path = checkpoint("checkpoints/detector/last.pt")
    model: Path = out("models/detector/detector.pt", tracked="models/detector")
    metrics: Path = metric("metrics/detector.json")


@stage
@dataclass(frozen=True)
class ExtractPaths(Stage):
    command: ClassVar[str] = "extract-regions"
    module: ClassVar[str] = "extract_regions"
    help: ClassVar[str] = "cache global + top-K region features of every image"
    reads: ClassVar[tuple[str, ...]] = ("device", "extract")
    runs: ClassVar[tuple[Run, ...]] = (
        Run("extract_main"),
        Run(
            "extract_transfer",
            foreach="${transfer.sets}",
            paths={
                "prepared": "data/prepared/${item.name}",
                "features": "data/features/${item.name}",
                "metrics": "metrics/extract/${item.name}.json",
            },
        ),
    )

    detector: Path = dep("models/detector/detector.pt", tracked="models/detector")
    objects: Path = dep("models/objects/detector.pt", tracked="models/objects")  # finds Table 1's object regions
    prepared: tuple[Path, ...] = dep(("data/prepared/main",))  # one cache directory per prepared dataset
    features: tuple[Path, ...] = out(("data/features/main",), persist=True)  # shards cached are reused
    metrics: Path = metric("metrics/extract/main.json")


@stage
@dataclass(frozen=True)
class ClassifierPaths(Stage):
    command: ClassVar[str] = "train-classifier"
    module: ClassVar[str] = "train_classifier"
    help: ClassVar[str] = "λ sweep, loss variants, ablations, 8/2 classes"
    reads: ClassVar[tuple[str, ...]] = ("device", "classifier", "emotions")

    prepared: Path = dep("data/prepared/main")
    features: Path = dep("data/features/main")
    out_dir: Path = out("models/classifier")
    sweep: Path = metric("metrics/lambda_sweep.json")
    ablation: Path = metric("metrics/ablation.json")
    metrics: Path = metric("metrics/classifier.json")


@stage
@dataclass(frozen=True)
class TransferPaths(Stage):
    command: ClassVar[str] = "transfer-cv"
    module: ClassVar[str] = "transfer_cv"
    help: ClassVar[str] = "5-fold one-against-all transfer to one small dataset"
    reads: ClassVar[tuple[str, ...]] = ("device", "emotions", "transfer.head")
    runs: ClassVar[tuple[Run, ...]] = (
        Run(
            "transfer_cv",
            foreach="${transfer.sets}",
            paths={
                "set_name": "${item.name}",
                "prepared": "data/prepared/${item.name}",
                "features": "data/features/${item.name}",
                "metrics": "metrics/transfer/${item.name}.json",
            },
        ),
    )

    set_name: str = "small"  # the transfer set (params transfer.sets): its MLflow run and its metrics' name
    prepared: Path = dep("data/prepared/small")
    features: Path = dep("data/features/small")
    head: Path = dep("models/classifier/head.pt", tracked="models/classifier")
    metrics: Path = metric("metrics/transfer/small.json")


@stage
@dataclass(frozen=True)
class EvaluatePaths(Stage):
    command: ClassVar[str] = "evaluate"
    module: ClassVar[str] = "evaluate"
    help: ClassVar[str] = "test metrics, confusion matrix, λ curve, ablation table, region overlays"
    reads: ClassVar[tuple[str, ...]] = ("device", "emotions", "evaluate")
    dvc_plots: ClassVar[tuple[Any, ...]] = (
        {"lambda_curve": {"x": "lambda", "y": {"plots/lambda_curve.csv": ["val_accuracy", "test_accuracy"]}}},
        {"confusion": {"template": "confusion", "x": "actual", "y": {"plots/confusion.csv": "predicted"}}},
        "plots/regions.png",
        "plots/reliability.png",
    )

    prepared: Path = dep("data/prepared/main")
    features: Path = dep("data/features/main")
    head: Path = dep("models/classifier/head.pt", tracked="models/classifier")
    head_binary: Path = dep("models/classifier/head_binary.pt", tracked="models/classifier")
    sweep: Path = dep("metrics/lambda_sweep.json")
    ablation: Path = dep("metrics/ablation.json")
    transfer: Path = dep("metrics/transfer")  # one <set>.json a transfer set
    metrics: Path = metric("metrics/evaluate.json")
    plots: Path = out("plots")  # cached: every version is kept, `dvc plots diff` compares experiments


@stage
@dataclass(frozen=True)
class TrainMetricPaths(Stage):
    """Seed 002's sentiment-vector model trained on the main set, and Table 1's ablation rows."""

    command: ClassVar[str] = "train-metric"
    module: ClassVar[str] = "train_metric"
    help: ClassVar[str] = (
        "seed 002: sentiment-vector network (softmax + sentiment constraint) and Table 1's ablation rows"
    )
    distributed: ClassVar[bool] = True
    reads: ClassVar[tuple[str, ...]] = ("device", "metric")
    runs: ClassVar[tuple[Run, ...]] = (
        Run("train_metric", comment="seed 002: the sentiment-vector network and the rows of its Table 1"),
    )

    prepared: Path = dep("data/prepared/main")
    out_dir: Path = out("models/metric")  # model.pt
    metrics: Path = metric("metrics/metric.json")
    ablation: Path = metric("metrics/metric_ablation.json")


@stage
@dataclass(frozen=True)
class RetrievePaths(Stage):
    """The retrieval index of the main set, its measures and figures."""

    command: ClassVar[str] = "build-index"
    module: ClassVar[str] = "retrieve"
    help: ClassVar[str] = "seed 002: retrieval index of the main set, NN/FT/ST/mAP/DCG/ANMRR, t-SNE and query grid"
    reads: ClassVar[tuple[str, ...]] = ("device", "retrieve")
    runs: ClassVar[tuple[Run, ...]] = (
        Run("retrieve", comment="seed 002: the retrieval index of the main set, the seven measures, t-SNE, query grid"),
    )
    dvc_plots: ClassVar[tuple[Any, ...]] = (
        {"retrieval_tsne": {"template": "scatter", "x": "x", "y": {"plots_retrieval/tsne.csv": "y"}}},
        "plots_retrieval/queries.png",
    )

    prepared: Path = dep("data/prepared/main")
    model: Path = dep("models/metric/model.pt", tracked="models/metric")
    ablation: Path = dep("metrics/metric_ablation.json")
    index: Path = out("models/retrieval")  # an EmbeddingIndex directory
    metrics: Path = metric("metrics/retrieval.json")
    plots: Path = out("plots_retrieval")  # tsne.csv / tsne.png (Fig. 4), queries.png (Fig. 5)


@stage
@dataclass(frozen=True)
class RetrieveTransferPaths(Stage):
    """Seed 002's transfer to one small set: the paper's 5-fold fine-tuning (80/20), leave-one-out as an extra."""

    command: ClassVar[str] = "retrieve-transfer"
    module: ClassVar[str] = "retrieve_transfer"
    help: ClassVar[str] = (
        "Yang et al.: the FI model fine-tuned on 4 of 5 folds of one transfer set, classification and retrieval on "
        "the fifth (the paper's protocol); leave-one-out retrieval as an extra"
    )
    reads: ClassVar[tuple[str, ...]] = ("device", "metric")
    runs: ClassVar[tuple[Run, ...]] = (
        Run(
            "retrieve_transfer",
            foreach="${transfer.sets}",
            paths={
                "set_name": "${item.name}",
                "prepared": "data/prepared/${item.name}",
                "metrics": "metrics/retrieval_transfer/${item.name}.json",
            },
            comment="seed 002: each transfer set by the paper's protocol (fine-tuned 80/20, 5 folds)",
        ),
    )

    set_name: str = "small"
    prepared: Path = dep("data/prepared/small")
    model: Path = dep("models/metric/model.pt", tracked="models/metric")
    metrics: Path = metric("metrics/retrieval_transfer/small.json")


@stage
@dataclass(frozen=True)
class TrainGenerativePaths(Stage):
    """Seed 001's generative model, trained on the main set mixed with ``generative.sets``."""

    command: ClassVar[str] = "train-generative"
    module: ClassVar[str] = "train_generative"
    help: ClassVar[str] = (
        "seed 001: one generative model (encoder -> mapping -> BART) for every emotion model; low-resource curve"
    )
    reads: ClassVar[tuple[str, ...]] = ("device", "emotions", "generative")
    runs: ClassVar[tuple[Run, ...]] = (
        Run(
            "train_generative",
            comment="seed 001: one generative model (encoder -> mapping -> BART) for every emotion model",
        ),
    )

    prepared: Path = dep("data/prepared/main")
    sets: Path = dep("data/prepared/generative")  # <name>/ a set of generative.sets
    checkpoint: Path = checkpoint("checkpoints/generative/last.pt")
    out_dir: Path = out("models/generative")  # model.pt, tokenizer/, settings.json
    metrics: Path = metric("metrics/generative_train.json")
    low_resource: Path = metric("metrics/generative_low_resource.json")


@stage
@dataclass(frozen=True)
class EvaluateGenerativePaths(Stage):
    command: ClassVar[str] = "evaluate-generative"
    module: ClassVar[str] = "evaluate_generative"
    help: ClassVar[str] = (
        "seed 001: accuracy per emotion model from one model, constrained decoding, vs the classifiers"
    )
    reads: ClassVar[tuple[str, ...]] = ("device", "emotions", "generative.num_beams")
    runs: ClassVar[tuple[Run, ...]] = (
        Run(
            "evaluate_generative",
            comment="seed 001: accuracy per emotion model from one model, constrained decoding",
        ),
    )
    dvc_plots: ClassVar[tuple[Any, ...]] = (
        {
            "generative_low_resource": {
                "x": "shots",
                "y": {"plots_generative/low_resource.csv": ["generative", "probe"]},
            }
        },
    )

    prepared: Path = dep("data/prepared/main")
    sets: Path = dep("data/prepared/generative")
    model: Path = dep("models/generative")
    training: Path = dep("metrics/generative_train.json")
    low_resource: Path = dep("metrics/generative_low_resource.json")
    metrics: Path = metric("metrics/generative.json")
    plots: Path = out("plots_generative")  # low_resource.csv / .png, confusion_<emotion model>.csv


@stage
@dataclass(frozen=True)
class ReportPaths(Stage):
    """What the report reads (every result file of the run) and where it writes ``paper.md`` / ``paper.html``;
    the later seeds' results are read when present."""

    command: ClassVar[str] = "report"
    module: ClassVar[str] = "report"
    help: ClassVar[str] = "the paper's tables beside this run's figures: reports/paper.md and .html"
    reads: ClassVar[tuple[str, ...]] = ("*",)  # the whole file: the report's header carries the params hash

    prepare: Path = dep("metrics/prepare")  # <role>.json for detector, main and each transfer set
    detector: Path = dep("metrics/detector.json")
    classifier: Path = dep("metrics/classifier.json")
    sweep: Path = dep("metrics/lambda_sweep.json")
    ablation: Path = dep("metrics/ablation.json")
    transfer: Path = dep("metrics/transfer")  # <set>.json a transfer set
    evaluation: Path = dep("metrics/evaluate.json")
    retrieval: Path = dep("metrics/retrieval.json")  # seed 002
    retrieval_transfer: Path = dep("metrics/retrieval_transfer")  # seed 002: <set>.json a transfer set
    generative: Path = dep("metrics/generative.json")  # seed 001
    plots: Path = dep("plots")  # lambda_curve.png, confusion.png, regions.png (evaluate)
    retrieval_plots: Path = dep("plots_retrieval")  # tsne.png, queries.png (retrieve) when present
    generative_plots: Path = dep("plots_generative")  # low_resource.png (evaluate_generative) when present
    out_dir: Path = out("reports")  # cached like the plots


@stage
@dataclass(frozen=True)
class RegisterPaths(Stage):
    command: ClassVar[str] = "register"
    module: ClassVar[str] = "register"
    help: ClassVar[str] = "log + register the model in MLflow; promote to champion if better"
    reads: ClassVar[tuple[str, ...]] = ("register", "serving", "mlflow")

    prepared: Path = dep("data/prepared/main")
    detector: Path = dep("models/detector/detector.pt", tracked="models/detector")
    head: Path = dep("models/classifier/head.pt", tracked="models/classifier")
    evaluation: Path = dep("metrics/evaluate.json")
    metrics: Path = metric("metrics/register.json")


@stage
@dataclass(frozen=True)
class RegisterMetricPaths(Stage):
    command: ClassVar[str] = "register-metric"
    module: ClassVar[str] = "register_metric"
    help: ClassVar[str] = "seed 002: log + register the retrieval model; champion if its test mAP8 is better"
    reads: ClassVar[tuple[str, ...]] = ("register", "serving", "mlflow")

    prepared: Path = dep("data/prepared/main")
    model: Path = dep("models/metric/model.pt", tracked="models/metric")
    index: Path = dep("models/retrieval")
    retrieval: Path = dep("metrics/retrieval.json")
    metrics: Path = metric("metrics/register_metric.json")


@stage
@dataclass(frozen=True)
class RegisterGenerativePaths(Stage):
    command: ClassVar[str] = "register-generative"
    module: ClassVar[str] = "register_generative"
    help: ClassVar[str] = "seed 001: log + register the generative model; champion if its test accuracy is better"
    reads: ClassVar[tuple[str, ...]] = ("register", "serving", "mlflow")

    prepared: Path = dep("data/prepared/main")
    model: Path = dep("models/generative")
    evaluation: Path = dep("metrics/generative.json")
    metrics: Path = metric("metrics/register_generative.json")
