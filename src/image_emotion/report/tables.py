"""The paper's tables filled with one run's figures, beside the published ones (``published_000.yaml``).

``read_run`` gathers what the pipeline wrote (metrics JSON files, where ``RunFiles`` says); ``build_report``
turns it into a ``Report``: a header (git revision, params hash, device), the datasets of each role with
their sizes, a banner when they are not the paper's, the paper's claims checked on this run, Tables 1-3 and
Fig. 8 as ``Table``s of strings that ``render.py`` prints as Markdown and HTML alike. Accuracies are shown in
percent with one decimal; the paper's as printed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import yaml

from image_emotion.config import Config
from image_emotion.errors import ConfigError

PUBLISHED = Path(__file__).with_name("published_000.yaml")
PAPER_MAIN, PAPER_DETECTOR = "fi", "emotionroi"
PAPER_TRANSFER = ("iaps", "artphoto", "abstract", "emotionroi")
EXTRAS = {  # later seeds' results, gathered when their stages have written them
    "retrieval": "Seed 002: deep metric learning and affective image retrieval",
    "generative": "Seed 001: one generative model for every emotion model",
}
DASH = "—"


@cache
def published() -> dict[str, Any]:
    """The paper's figures (``published_000.yaml``)."""
    return yaml.safe_load(PUBLISHED.read_text(encoding="utf-8"))


class RunFiles(Protocol):
    """Where a run's results are (``stages.paths.ReportPaths``: the files of ``dvc.yaml``)."""

    prepare: Path  # <role>.json for detector, main and each transfer set
    detector: Path
    classifier: Path
    sweep: Path
    ablation: Path
    transfer: Path  # <set>.json a transfer set
    evaluation: Path
    extras: Path  # retrieval.json (seed 002), generative.json (seed 001) when present


@dataclass
class RunFigures:
    """What one run wrote, as read from its files."""

    prepare: dict[str, dict[str, Any]]
    detector: dict[str, Any]
    classifier: dict[str, Any]
    sweep: list[dict[str, Any]]
    ablation: list[dict[str, Any]]
    transfer: dict[str, dict[str, Any]]
    evaluation: dict[str, Any]
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)


def _read(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path}: not found; the report reads the pipeline's results (run `dvc repro evaluate`)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); re-run the stage that writes it") from None


def _read_dir(path: Path) -> dict[str, Any]:
    return {f.stem: _read(f) for f in sorted(path.glob("*.json"))} if path.is_dir() else {}


def read_run(inputs: RunFiles) -> RunFigures:
    """Every result file the report needs (a missing one is named), and the later seeds' results when present."""
    return RunFigures(
        prepare=_read_dir(inputs.prepare),
        detector=_read(inputs.detector),
        classifier=_read(inputs.classifier),
        sweep=_read(inputs.sweep),
        ablation=_read(inputs.ablation),
        transfer=_read_dir(inputs.transfer),
        evaluation=_read(inputs.evaluation),
        extras={
            name: _read(inputs.extras / f"{name}.json") for name in EXTRAS if (inputs.extras / f"{name}.json").is_file()
        },
    )


@dataclass
class Table:
    """A table of strings: ``columns`` and ``rows`` (each as long as ``columns``), a caption and notes."""

    title: str
    caption: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


@dataclass
class Claim:
    """One of the paper's shapes: our difference (points, or λ*) and whether it holds, beside the paper's."""

    key: str
    text: str
    ours: float | None
    paper: float
    holds: bool | None


@dataclass
class Report:
    """Everything the renderers print."""

    header: list[tuple[str, str]]
    datasets: Table
    banner: list[str]
    differences: list[str]
    claims: list[Claim]
    tables: list[Table]
    lambda_table: Table
    detector: list[tuple[str, str]]
    extras: dict[str, Table | None]


def pct(value: float | None) -> str:
    """A fraction as percent with one decimal; a dash when absent."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return f"{100 * value:.1f}"


def pct_std(mean: float | None, std: float | None) -> str:
    return DASH if mean is None else f"{pct(mean)} ± {pct(std or 0.0)}"


def paper_pct(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}"


def _size(run: RunFigures, role: str) -> str:
    info = run.prepare.get(role)
    return str(info["num_images"]) if info and "num_images" in info else DASH


def dataset_table(run: RunFigures, config: Config) -> Table:
    """One row a data role: the dataset this run read, its size, and the paper's dataset and size there."""
    pub = published()["datasets"]
    roles = [
        ("detector (emotional regions)", "detector", config.detector_data.dataset, PAPER_DETECTOR),
        ("classifier (main)", "main", run.evaluation.get("dataset", config.data.dataset), PAPER_MAIN),
    ]
    for t in config.transfer.sets:  # the paper transfers to each of its four small sets
        roles.append((f"transfer: {t.name}", t.name, t.dataset, t.dataset if t.dataset in PAPER_TRANSFER else None))
    rows = []
    for role_name, role, dataset, paper_ds in roles:
        comparable = dataset == paper_ds
        paper = pub.get(paper_ds or "", {})
        row = [role_name, dataset, _size(run, role), paper.get("name", DASH), str(paper.get("images", DASH))]
        rows.append([*row, "yes" if comparable else "no"])
    return Table(
        "Datasets",
        "The dataset of each role of the paper's data flow, in this run and in the paper (§5.1).",
        ["role", "this run", "images", "the paper", "images", "comparable"],
        rows,
    )


def banner(datasets: Table) -> list[str]:
    """Lines saying which roles are not the paper's data (empty when all are)."""
    off = [f"{r[0]} = {r[1]} ({r[2]} images)" for r in datasets.rows if r[5] == "no"]
    if not off:
        return []
    return [
        "These figures do not come from the paper's datasets: " + "; ".join(off) + ".",
        "Compare the shapes (which rows win, where λ* falls), not the numbers.",
    ]


def setup_differences(config: Config) -> list[str]:
    """Settings that differ from the paper's implementation (§5.2)."""
    setup = published()["setup"]
    out = []
    if config.detector.backbone != setup["backbone"]:
        out.append(f"backbone {config.detector.backbone} (the paper: {setup['backbone']})")
    if config.detector.min_size != setup["min_size"]:
        out.append(f"images resized to {config.detector.min_size} px (the paper: {setup['min_size']})")
    hp = config.classifier
    for key, ours in (("epochs", hp.epochs), ("batch_size", hp.batch_size), ("lr", hp.lr)):
        if ours != setup[f"classifier_{key}"]:
            out.append(f"classifier {key} {ours} (the paper: {setup[f'classifier_{key}']})")
    if config.detector.object_weights is None:
        out.append("object branch pre-trained on synthetic objects, not COCO (no detector.object_weights)")
    return out


def table1(run: RunFigures) -> Table:
    pub = published()["table1"]
    by_mode = {r["mode"]: r for r in run.ablation}
    rows = []
    for mode, p in pub["rows"].items():  # the paper's row order; keys are classifier modes
        r = by_mode.get(mode, {})
        rows.append(
            [
                mode,
                p["name"],
                pct(r.get("test_accuracy")),
                paper_pct(p["8"]),
                pct(r.get("test_polarity_accuracy")),
                paper_pct(p["2"]),
            ]
        )
    lam = run.ablation[0]["lambda"] if run.ablation else None
    return Table(
        "Table 1: features",
        f"Test accuracy (%) by the features the head reads, all trained with L_multi at λ* = {lam}. "
        f"Paper: {pub['source']}.",
        [
            "features",
            "the paper's row",
            "8 classes (ours)",
            "8 classes (paper)",
            "2 classes (ours)",
            "2 classes (paper)",
        ],
        rows,
        ["2 classes (ours): the polarity of the 8-class prediction."],
    )


def table2(run: RunFigures) -> Table:
    pub = published()["table2"]
    acc = run.classifier.get("loss_variants_test_accuracy", {})
    pol = run.classifier.get("loss_variants_test_polarity_accuracy", {})
    names = {
        "cls": "L_cls (λ = 0)",
        "p": "L_p (eq. 10)",
        "multi": f"L_multi (λ* = {run.classifier.get('best_lambda')})",
    }
    rows = [
        [names[k], pct(acc.get(k)), paper_pct(pub["rows"][k]["8"]), pct(pol.get(k)), paper_pct(pub["rows"][k]["2"])]
        for k in ("cls", "p", "multi")
    ]
    lam04 = run.classifier.get("paper_lambda")
    notes = ["2 classes (ours): the polarity of the 8-class prediction."]
    if lam04:
        notes.append(
            f"At the paper's λ = 0.4: {pct(lam04['test_accuracy'])} (8 classes), "
            f"{pct(lam04.get('test_polarity_accuracy'))} (2 classes)."
        )
    return Table(
        "Table 2: losses",
        f"Test accuracy (%) of the full method (mode {run.classifier.get('mode')}) by loss. Paper: {pub['source']}.",
        ["loss", "8 classes (ours)", "8 classes (paper)", "2 classes (ours)", "2 classes (paper)"],
        rows,
        notes,
    )


def table3(run: RunFigures, config: Config) -> Table:
    pub = published()["table3"]
    main_ds = run.evaluation.get("dataset", config.data.dataset)
    paper_main = pub["ours"][PAPER_MAIN]  # the main set plays FI's role
    rows = [
        [
            f"main ({main_ds})",
            _size(run, "main"),
            run.evaluation.get("label_set", DASH),
            pct(run.evaluation.get("test_accuracy")),
            paper_pct(paper_main.get("8")),
            pct(run.classifier.get("binary_test_accuracy")),
            paper_pct(paper_main.get("2")),
        ]
    ]
    for t in config.transfer.sets:
        r = run.transfer.get(t.name, {})
        paper = pub["ours"].get(t.dataset, {})
        rows.append(
            [
                f"{t.name} ({t.dataset})",
                _size(run, t.name),
                r.get("label_set", DASH),
                pct_std(r.get("accuracy_mean"), r.get("accuracy_std")),
                paper_pct(paper.get("8")),
                pct_std(r.get("accuracy_2class_mean"), r.get("accuracy_2class_std")),
                paper_pct(paper.get("2")),
            ]
        )
    folds = next((r.get("folds") for r in run.transfer.values()), None)
    return Table(
        "Table 3: datasets",
        f"Accuracy (%): the main set on its test split; each transfer set by {folds}-fold one-against-all "
        f"cross-validation from the main model, mean ± std over the folds. Paper: {pub['source']} (row 'Ours').",
        [
            "dataset",
            "images",
            "own classes",
            "own classes (ours)",
            "8 classes (paper)",
            "2 classes (ours)",
            "2 classes (paper)",
        ],
        rows,
        ["main, 2 classes (ours): the head trained on polarity labels (the 2-class model)."],
    )


def lambda_table(run: RunFigures) -> Table:
    best = run.classifier.get("best_lambda")
    rows = [
        [
            f"{r['lambda']:g}" + (" (λ*)" if r["lambda"] == best else "") + (" (paper)" if r["lambda"] == 0.4 else ""),
            pct(r.get("val_accuracy")),
            pct(r.get("test_accuracy")),
        ]
        for r in run.sweep
    ]
    fig8 = published()["fig8"]
    return Table(
        "Fig. 8: λ",
        f"Accuracy (%) of L_multi by λ; λ* is chosen on validation (ties: lower validation NLL). "
        f"Paper ({fig8['source']}): λ = {fig8['best_lambda']}, {fig8['shape']}.",
        ["λ", "validation", "test"],
        rows,
    )


def claims(run: RunFigures) -> list[Claim]:
    """The paper's shapes, checked on this run."""
    t1 = {r["mode"]: r["test_accuracy"] for r in run.ablation}
    losses = run.classifier.get("loss_variants_test_accuracy", {})
    lam = run.classifier.get("best_lambda")

    def diff(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(100 * (a - b), 2)

    ours = {
        "regions_over_global": diff(t1.get("global+emotional"), t1.get("global")),
        "emotional_over_object": diff(t1.get("global+emotional"), t1.get("global+object")),
        "multi_over_cls": diff(losses.get("multi"), losses.get("cls")),
        "lambda_inside": lam,
    }
    out = []
    for c in published()["claims"]:
        value = ours[c["key"]]
        if value is None:
            holds = None
        elif c["key"] == "lambda_inside":
            holds = 0.0 < value < 1.0
        else:
            holds = value > 0
        out.append(Claim(c["key"], c["text"], value, c["paper"], holds))
    return out


def detector_summary(run: RunFigures) -> list[tuple[str, str]]:
    """The detector's device, training size and region recall at each K it was measured at (ascending)."""
    d = run.detector
    items = [("device", str(d.get("device", DASH))), ("training images", str(d.get("train_images", DASH)))]
    ks = sorted(int(k.removeprefix("recall_at_")) for k in d if k.startswith("recall_at_"))
    holdout = d.get("holdout_split")
    items += [(f"recall@{k} of the ground-truth regions ({holdout})", pct(d[f"recall_at_{k}"])) for k in ks]
    return items


def extras_table(name: str, figures: dict[str, Any]) -> Table:
    """A later seed's results file as a table of its numbers (flattened keys)."""
    from image_emotion.tracking.runs import flatten

    rows = [
        [k, f"{v:.4g}" if isinstance(v, float) else str(v)]
        for k, v in sorted(flatten(figures).items())
        if isinstance(v, int | float | str) and not isinstance(v, bool)
    ]
    return Table(EXTRAS[name], f"From metrics/{name}.json.", ["metric", "value"], rows)


def build_report(run: RunFigures, config: Config, revision: str, params_hash: str) -> Report:
    """The whole report of one run."""
    datasets = dataset_table(run, config)
    return Report(
        header=[
            ("paper", published()["paper"]),
            ("git revision", revision),
            ("params hash", params_hash),
            ("device", str(run.detector.get("device", config.device))),
            ("classifier mode", str(run.classifier.get("mode"))),
        ],
        datasets=datasets,
        banner=banner(datasets),
        differences=setup_differences(config),
        claims=claims(run),
        tables=[table1(run), table2(run), table3(run, config)],
        lambda_table=lambda_table(run),
        detector=detector_summary(run),
        extras={name: (extras_table(name, run.extras[name]) if name in run.extras else None) for name in EXTRAS},
    )
