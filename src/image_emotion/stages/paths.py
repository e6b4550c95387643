"""Where each stage reads and writes: one frozen dataclass per stage, defaults = the paths dvc.yaml uses.

Kept apart from the stage modules (which import torch, MLflow...) so the CLI can build its options fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MakeSyntheticPaths:
    """Where the dataset goes."""

    out_dir: Path = Path("data/synthetic")


@dataclass(frozen=True)
class PreparePaths:
    """Where ``prepare`` writes."""

    out_dir: Path = Path("data/prepared/main")
    metrics: Path = Path("metrics/prepare/main.json")


@dataclass(frozen=True)
class PretrainPaths:
    """The object-pretrained detector (COCO's role)."""

    checkpoint: Path = Path("checkpoints/objects/last.pt")
    model: Path = Path("models/objects/detector.pt")
    metrics: Path = Path("metrics/objects.json")


@dataclass(frozen=True)
class FinetunePaths:
    prepared: Path = Path("data/prepared/detector")
    objects: Path = Path("models/objects/detector.pt")
    checkpoint: Path = Path("checkpoints/detector/last.pt")
    model: Path = Path("models/detector/detector.pt")
    metrics: Path = Path("metrics/detector.json")


@dataclass(frozen=True)
class ExtractPaths:
    detector: Path = Path("models/detector/detector.pt")
    prepared: tuple[Path, ...] = (Path("data/prepared/main"),)  # one cache directory per prepared dataset
    features: tuple[Path, ...] = (Path("data/features/main"),)
    metrics: Path = Path("metrics/extract/main.json")


@dataclass(frozen=True)
class ClassifierPaths:
    prepared: Path = Path("data/prepared/main")
    features: Path = Path("data/features/main")
    out_dir: Path = Path("models/classifier")
    sweep: Path = Path("metrics/lambda_sweep.json")
    ablation: Path = Path("metrics/ablation.json")
    metrics: Path = Path("metrics/classifier.json")


@dataclass(frozen=True)
class TransferPaths:
    set_name: str = "small"  # the transfer set (params transfer.sets): its MLflow run and its metrics' name
    prepared: Path = Path("data/prepared/small")
    features: Path = Path("data/features/small")
    head: Path = Path("models/classifier/head.pt")
    metrics: Path = Path("metrics/transfer/small.json")


@dataclass(frozen=True)
class EvaluatePaths:
    prepared: Path = Path("data/prepared/main")
    features: Path = Path("data/features/main")
    head: Path = Path("models/classifier/head.pt")
    head_binary: Path = Path("models/classifier/head_binary.pt")
    sweep: Path = Path("metrics/lambda_sweep.json")
    ablation: Path = Path("metrics/ablation.json")
    transfer: Path = Path("metrics/transfer")  # one <set>.json a transfer set
    metrics: Path = Path("metrics/evaluate.json")
    plots: Path = Path("plots")


@dataclass(frozen=True)
class TrainMetricPaths:
    """Seed 002's sentiment-vector model trained on the main set, and Table 1's ablation rows."""

    prepared: Path = Path("data/prepared/main")
    out_dir: Path = Path("models/metric")  # model.pt
    metrics: Path = Path("metrics/metric.json")
    ablation: Path = Path("metrics/metric_ablation.json")


@dataclass(frozen=True)
class RetrievePaths:
    """The retrieval index of the main set, its measures and figures."""

    prepared: Path = Path("data/prepared/main")
    model: Path = Path("models/metric/model.pt")
    ablation: Path = Path("metrics/metric_ablation.json")
    index: Path = Path("models/retrieval")  # an EmbeddingIndex directory
    metrics: Path = Path("metrics/retrieval.json")
    plots: Path = Path("plots_retrieval")  # tsne.csv / tsne.png (Fig. 4), queries.png (Fig. 5)


@dataclass(frozen=True)
class RetrieveTransferPaths:
    """Leave-one-out retrieval on one transfer set (the paper's small-set protocol)."""

    set_name: str = "small"
    prepared: Path = Path("data/prepared/small")
    model: Path = Path("models/metric/model.pt")
    metrics: Path = Path("metrics/retrieval_transfer/small.json")


@dataclass(frozen=True)
class RegisterMetricPaths:
    prepared: Path = Path("data/prepared/main")
    model: Path = Path("models/metric/model.pt")
    index: Path = Path("models/retrieval")
    retrieval: Path = Path("metrics/retrieval.json")
    metrics: Path = Path("metrics/register_metric.json")


@dataclass(frozen=True)
class TrainGenerativePaths:
    """Seed 001's generative model, trained on the main set mixed with ``generative.sets``."""

    prepared: Path = Path("data/prepared/main")
    sets: Path = Path("data/prepared/generative")  # <name>/ a set of generative.sets
    checkpoint: Path = Path("checkpoints/generative/last.pt")
    out_dir: Path = Path("models/generative")  # model.pt, tokenizer/, settings.json
    metrics: Path = Path("metrics/generative_train.json")
    low_resource: Path = Path("metrics/generative_low_resource.json")


@dataclass(frozen=True)
class EvaluateGenerativePaths:
    prepared: Path = Path("data/prepared/main")
    sets: Path = Path("data/prepared/generative")
    model: Path = Path("models/generative")
    training: Path = Path("metrics/generative_train.json")
    low_resource: Path = Path("metrics/generative_low_resource.json")
    metrics: Path = Path("metrics/generative.json")
    plots: Path = Path("plots_generative")  # low_resource.csv / .png, confusion_<emotion model>.csv


@dataclass(frozen=True)
class RegisterGenerativePaths:
    prepared: Path = Path("data/prepared/main")
    model: Path = Path("models/generative")
    evaluation: Path = Path("metrics/generative.json")
    metrics: Path = Path("metrics/register_generative.json")


@dataclass(frozen=True)
class ReportPaths:
    """What the report reads (every result file of the run) and where it writes ``paper.md`` / ``paper.html``."""

    prepare: Path = Path("metrics/prepare")  # <role>.json for detector, main and each transfer set
    detector: Path = Path("metrics/detector.json")
    classifier: Path = Path("metrics/classifier.json")
    sweep: Path = Path("metrics/lambda_sweep.json")
    ablation: Path = Path("metrics/ablation.json")
    transfer: Path = Path("metrics/transfer")  # <set>.json a transfer set
    evaluation: Path = Path("metrics/evaluate.json")
    extras: Path = Path("metrics")  # retrieval.json, retrieval_transfer/ (seed 002), generative.json (seed 001)
    plots: Path = Path("plots")  # lambda_curve.png, confusion.png, regions.png (evaluate)
    out_dir: Path = Path("reports")
    retrieval_plots: Path = Path("plots_retrieval")  # tsne.png, queries.png (retrieve) when present
    generative_plots: Path = Path("plots_generative")  # low_resource.png (evaluate_generative) when present


@dataclass(frozen=True)
class RegisterPaths:
    prepared: Path = Path("data/prepared/main")
    detector: Path = Path("models/detector/detector.pt")
    head: Path = Path("models/classifier/head.pt")
    evaluation: Path = Path("metrics/evaluate.json")
    metrics: Path = Path("metrics/register.json")
