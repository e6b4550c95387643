"""The paper's tables filled with one run's figures, beside the published ones (``published_000.yaml``).

``read_run`` gathers what the pipeline wrote (metrics JSON files, where ``RunFiles`` says); ``build_report``
turns it into a ``Report``: a header (git revision, params hash, device), the datasets of each role with
their sizes, a banner when they are not the paper's, the deviations from the papers (``deviations``: one row a
place where this run differs from the paper it reproduces, derived from the config and the run's files where the
value varies), the paper's claims checked on this run, Tables 1-3 and Fig. 8 as ``Table``s of strings that
``render.py`` prints as Markdown and HTML alike. Accuracies are shown in
percent with one decimal; the paper's as printed.

Seed 002 (``metrics/retrieval.json``, when the ``retrieve`` stage ran) gets its own section, beside its paper's
figures (``published_002.yaml``): Table 1 (constraints and sampling), the retrieval measures of Table 2 on the main
set and every transfer set with DCG's chance level (``dcg_chance``: the expected DCG of a random ranking, from the
run's class sizes; most of the paper's values lie below it at FI's scale), its two claims (also in
``Report.claims``, after seed 000's) and its figures (``plots_retrieval/``).

Seed 001 (``metrics/generative.json``, when the ``evaluate_generative`` stage ran) gets its own section too: one
generative model answering every emotion model beside a separate probe per emotion model and seed 000's multi-level
classifier (``metrics/evaluate.json``), its low-resource curve, its two claims (in ``Report.claims`` after seed
002's) and its figure (``plots_generative/low_resource.png``). The source we have of that paper is its abstract
only: there are no published numbers to set beside ours, and its claims are checked qualitatively.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import yaml

from image_emotion.config import Config
from image_emotion.errors import ConfigError

PUBLISHED = Path(__file__).with_name("published_000.yaml")
PUBLISHED_002 = Path(__file__).with_name("published_002.yaml")
PAPER_MAIN, PAPER_DETECTOR = "fi", "emotionroi"
PAPER_TRANSFER = ("iaps", "artphoto", "abstract", "emotionroi")
EXTRAS = {  # later seeds' results, gathered when their stages have written them
    "retrieval": "Seed 002: deep metric learning and affective image retrieval",
    "generative": "Seed 001: one generative model for every emotion model",
}
SECTIONS = ("retrieval", "generative")  # the EXTRAS printed as their own sections (``Report.sections``)
DASH = "—"


@cache
def published() -> dict[str, Any]:
    """The paper's figures (``published_000.yaml``)."""
    return yaml.safe_load(PUBLISHED.read_text(encoding="utf-8"))


@cache
def published_002() -> dict[str, Any]:
    """Seed 002's paper's figures (``published_002.yaml``)."""
    return yaml.safe_load(PUBLISHED_002.read_text(encoding="utf-8"))


class RunFiles(Protocol):
    """Where a run's results are (``stages.paths.ReportPaths``: the files of ``dvc.yaml``)."""

    prepare: Path  # <role>.json for detector, main and each transfer set
    detector: Path
    classifier: Path
    sweep: Path
    ablation: Path
    transfer: Path  # <set>.json a transfer set
    evaluation: Path
    retrieval: Path  # seed 002's retrieval.json, when present
    retrieval_transfer: Path  # seed 002's <set>.json a transfer set, when present
    generative: Path  # seed 001's generative.json, when present
    plots: Path  # the figures of evaluate
    retrieval_plots: Path  # tsne.png, queries.png (seed 002's retrieve) when present
    generative_plots: Path  # low_resource.png (seed 001's evaluate_generative) when present


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
    plots: Path | None = None  # where the figures of evaluate are (the report links figures relative to it)
    retrieval_plots: Path | None = None  # where seed 002's figures are
    generative_plots: Path | None = None  # where seed 001's figures are


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
    """Every result file the report needs (a missing one is named), and the later seeds' results when present
    (seed 002's leave-one-out results of each transfer set, ``retrieval_transfer/<set>.json``, join its
    ``retrieval.json`` as ``transfer``)."""
    files = {name: getattr(inputs, name) for name in EXTRAS}
    extras = {name: _read(path) for name, path in files.items() if path.is_file()}
    if "retrieval" in extras:
        extras["retrieval"].setdefault("transfer", {}).update(_read_dir(inputs.retrieval_transfer))
    return RunFigures(
        prepare=_read_dir(inputs.prepare),
        detector=_read(inputs.detector),
        classifier=_read(inputs.classifier),
        sweep=_read(inputs.sweep),
        ablation=_read(inputs.ablation),
        transfer=_read_dir(inputs.transfer),
        evaluation=_read(inputs.evaluation),
        extras=extras,
        plots=inputs.plots,
        retrieval_plots=inputs.retrieval_plots,
        generative_plots=inputs.generative_plots,
    )


@dataclass
class Table:
    """A table of strings: ``columns`` and ``rows`` (each as long as ``columns``), a caption and notes."""

    title: str
    caption: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    prose: bool = False  # cells of words, not figures (the HTML aligns them left)


@dataclass
class Claim:
    """One of the paper's shapes: our difference (points, or λ*) and whether it holds, beside the paper's (None:
    the paper publishes no number for it, seed 001's)."""

    key: str
    text: str
    ours: float | None
    paper: float | None
    holds: bool | None
    seed: str = "000"  # the paper it comes from ("002": a difference in mAP8, not in points; "001": points)
    interval: tuple[float, float] | None = None  # the paired bootstrap interval of ``ours`` (points), when run
    verdict: str | None = None  # holds / does not hold / inconclusive, from the interval (verdicts.py)
    detail: str = ""  # what the interval is over, in words


@dataclass
class RetrievalFigure:
    """One of a later seed's figures (seed 002's, seed 001's): its title, its file (None when the run did not write
    it) and its name relative to the run's ``plots/`` (what ``render.markdown``'s ``figure_src`` takes, e.g.
    ``../plots_retrieval/tsne.png``)."""

    title: str
    file_name: str
    path: Path | None
    name: str | None


@dataclass
class RetrievalSection:
    """A later seed's section. Seed 002's: the paper, a header line (dataset, backbone, image size, feature,
    index), notes, Table 1, the retrieval measures, the claims (as a table, and as ``Claim``s) and the figures.
    Seed 001's: the same, its tables the emotion models and the low-resource curve, and ``summary``: what the
    numbers say, in words."""

    title: str
    paper: str
    header: str
    notes: list[str]
    tables: list[Table]
    claims: list[Claim]
    figures: list[RetrievalFigure]
    summary: list[str] = field(default_factory=list)


@dataclass
class Report:
    """Everything the renderers print."""

    header: list[tuple[str, str]]
    datasets: Table
    banner: list[str]
    deviations: Table  # every place this run differs from the paper it reproduces (``deviations``)
    claims: list[Claim]
    tables: list[Table]
    lambda_table: Table
    detector: list[tuple[str, str]]
    extras: dict[str, Table | None]
    retrieval: RetrievalSection | None = None  # seed 002's section, when metrics/retrieval.json exists
    generative: RetrievalSection | None = None  # seed 001's section, when metrics/generative.json exists

    def sections(self) -> dict[str, RetrievalSection | None]:
        """The later seeds' sections by their ``EXTRAS`` name (None: that seed's stages have not run)."""
        return {"retrieval": self.retrieval, "generative": self.generative}


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


def ablation_loss(row: dict[str, Any]) -> str:
    """The loss a Table 1 row was trained with (``metrics/ablation.json``'s ``loss``; a file without it comes from
    a train_classifier that trained every row with L_multi)."""
    return str(row.get("loss", "multi"))


def table1_losses(ablation: list[dict[str, Any]]) -> str:
    """The losses Table 1's rows were trained with, in words: "all trained with L_multi at λ* = 0.4", or with the
    rows trained otherwise named ("global with L_cls")."""
    multi = [r for r in ablation if ablation_loss(r) == "multi"]
    others = [r for r in ablation if ablation_loss(r) != "multi"]
    lam = multi[0].get("lambda") if multi else None
    said = f"trained with L_multi at λ* = {lam}" if multi else "trained"
    if not others:
        return ("all " if multi else "") + said
    return said + ", but " + ", ".join(f"{r['mode']} with L_{ablation_loss(r)}" for r in others)


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
    return Table(
        "Table 1: features",
        f"Test accuracy (%) by the features the head reads, {table1_losses(run.ablation)}. Paper: {pub['source']}.",
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


def calibration_table(run: RunFigures) -> Table:
    """The classifier's calibration: ECE without and with the temperature fitted on validation (none of the
    papers reports it; a served confidence is read as a probability)."""
    figures = run.evaluation.get("calibration") or {}

    def ece(key: str) -> str:
        value = figures.get(key)
        return "–" if value is None else f"{value:.3f}"

    rows = [
        ["validation", ece("val_ece_before"), ece("val_ece_after")],
        ["test", ece("test_ece_before"), ece("test_ece_after")],
    ]
    temperature = figures.get("temperature")
    return Table(
        "Calibration",
        f"Expected calibration error ({figures.get('bins', 15)} confidence bins) of the classifier at λ*, without "
        f"and with temperature scaling fitted on validation (T = {'–' if temperature is None else f'{temperature:.3f}'}"
        "; accuracy is unchanged). The papers report none; goal on the default run: ECE ≤ 0.05 after.",
        ["split", "ECE, T = 1", "ECE, fitted T"],
        rows,
    )


def claims(run: RunFigures) -> list[Claim]:
    """The paper's shapes, checked on this run: with the stage's paired bootstrap intervals and verdicts where
    it wrote them (``classifier.json``'s ``claims``), else by the sign of the difference alone."""
    t1 = {r["mode"]: r["test_accuracy"] for r in run.ablation}
    losses = run.classifier.get("loss_variants_test_accuracy", {})
    lam = run.classifier.get("best_lambda")
    tested = run.classifier.get("claims") or {}

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
        claim = Claim(c["key"], c["text"], value, c["paper"], holds)
        figures = tested.get(c["key"])
        if figures and c["key"] == "lambda_inside":
            ends = figures.get("versus_ends", {})
            claim.verdict = figures["verdict"]
            claim.detail = "; ".join(
                f"vs λ = {float(end):g}: {v['difference']:+.1f} [{v['low']:+.1f}, {v['high']:+.1f}]"
                for end, v in sorted(ends.items())
                if v.get("low") is not None
            ) + (" (validation)" if ends else "")
        elif figures and figures.get("low") is not None:
            claim.interval, claim.verdict = (figures["low"], figures["high"]), figures["verdict"]
            claim.detail = f"{figures['images']} test images, {round(100 * figures['level'])} % interval"
        if claim.verdict is not None:  # the interval decides; inconclusive is neither
            claim.holds = {"holds": True, "does not hold": False}.get(claim.verdict)
        out.append(claim)
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


# ---------------------------------------------------------------------------------------------- seed 002

RETRIEVAL_MEASURES = (  # (key in retrieval.json, label): Table 2's measures; ANMRR is the only one lower-is-better
    ("nn", "NN"),
    ("ft", "FT"),
    ("st", "ST"),
    ("map8", "mAP8"),
    ("map2", "mAP2"),
    ("dcg", "DCG"),
    ("anmrr", "ANMRR (lower is better)"),
)
DCG_CHANCE = "DCG of a random ranking (chance)"
RETRIEVAL_FIGURES = (  # (file under plots_retrieval/, title), as the retrieve stage writes them
    ("tsne.png", "Fig. 4: t-SNE of the test embeddings, coloured by emotion"),
    ("queries.png", "Fig. 5: queries and their top retrieved images"),
)


def num4(value: float | None) -> str:
    """A measure in [0, 1] with four decimals, as the paper prints them; a dash when absent."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return f"{value:.4f}"


def _mean_std(mean: float | None, std: float | None, fmt: Callable[[float | None], str]) -> str:
    """``mean ± std`` when there is a std (several seeds), the mean alone otherwise."""
    if mean is None:
        return DASH
    return fmt(mean) if std is None else f"{fmt(mean)} ± {fmt(std)}"


def retrieval_table1(figures: dict[str, Any]) -> Table:
    """The paper's Table 1 (constraints and sampling methods) in its row order, this run's rows beside it."""
    pub = published_002()["table1"]
    ours = {r.get("row"): r for r in figures.get("ablation") or []}
    rows, blanked = [], []
    for key, p in pub["rows"].items():
        r = ours.get(key, {})
        seeds = r.get("seeds")
        # frozen backbone: the classifier reads the FC embedding, which only the softmax term trains when the
        # constraint acts on SV, so that accuracy is not the SV network's
        sv_frozen = bool(r.get("backbone_frozen")) and r.get("feature") == "SV"
        if sv_frozen:
            blanked.append(key)
        rows.append(
            [
                key,
                p["name"],
                str(r.get("feature", p["feature"])),
                ", ".join(str(x) for x in seeds) if seeds else DASH,
                DASH if sv_frozen else _mean_std(r.get("accuracy"), r.get("accuracy_std"), pct),
                paper_pct(p["accuracy"]),
                _mean_std(r.get("map8"), r.get("map8_std"), num4),
                num4(p["map8"]),
                _mean_std(r.get("map2"), r.get("map2_std"), num4),
                num4(p["map2"]),
            ]
        )
    notes = ["Several seeds: mean ± std over the seeds (one seed: the figure alone)."]
    if blanked:
        notes.append(
            f"{', '.join(blanked)}: accuracy left blank. With the backbone frozen (metric.freeze_backbone) the "
            "classifier reads the FC embedding, which only the softmax term trains when the constraint acts on SV "
            "(it trains the 1×1 convolutions alone): the figure would be plain softmax at weight 1-ω, not the "
            "paper's SV network. Its retrieval (mAP) is the SV's own."
        )
    if not ours:
        notes.append("The run measured no ablation rows (metrics/retrieval.json: ablation is empty).")
    return Table(
        "Table 1 (seed 002)",
        f"Test accuracy (%) and retrieval mAP (test queries against the train split) by the constraints the "
        f"embedding is trained with and the feature it retrieves with (FC layer or sentiment vector SV). "
        f"Paper: {pub['source']} (FI).",
        [
            "row",
            "the paper's row",
            "feature",
            "seeds",
            "accuracy % (ours)",
            "accuracy % (paper)",
            "mAP8 (ours)",
            "mAP8 (paper)",
            "mAP2 (ours)",
            "mAP2 (paper)",
        ],
        rows,
        notes,
    )


@cache
def _dcg_ideal(n: int) -> tuple[float, ...]:
    """``(D_0, ..., D_n)``: the shape-benchmark DCG's summed discounts of ranks 1..k (``metrics.dcg``: 1 for rank 1,
    ``1 / log2(i)`` after), so ``D_R`` is a query's ideal DCG with R relevant items."""
    sums, total = [0.0], 0.0
    for i in range(1, n + 1):
        total += 1.0 if i == 1 else 1.0 / math.log2(i)
        sums.append(total)
    return tuple(sums)


def dcg_chance(
    query_counts: list[int], gallery_counts: list[int], leave_one_out: bool = False
) -> float | None:  # fmt: skip
    """The expected DCG (``metrics.dcg``, mean over the queries with a relevant item) of a uniformly random ranking
    of the whole gallery. ``query_counts[c]`` queries and ``gallery_counts[c]`` gallery items of class ``c``;
    ``leave_one_out``: the queries are the gallery, each ranking all the others.

    Exact: in a random ranking of ``n`` items each rank holds a relevant one with probability ``R / n``, so a
    query's expected DCG is ``(R / n) · D_n / D_R`` (``D_k`` the summed discounts of ranks 1..k, ``D_R`` its ideal
    DCG), and the mean's expectation is the mean of these. None when no query has a relevant item."""
    n = sum(gallery_counts) - (1 if leave_one_out else 0)
    ideal = _dcg_ideal(max(n, 0))
    weighted, queries = 0.0, 0
    for q, g in zip(query_counts, gallery_counts, strict=True):
        r = g - (1 if leave_one_out else 0)
        if q <= 0 or r <= 0:
            continue
        weighted += q * (r / n) * ideal[n] / ideal[r]
        queries += q
    return weighted / queries if queries else None


def apportion(weights: list[float], total: int) -> list[int]:
    """``total`` items shared in proportion to ``weights`` (largest remainders; the shares add up to ``total``)."""
    whole = sum(weights)
    raw = [total * w / whole for w in weights]
    counts = [math.floor(x) for x in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: counts[i] - raw[i])  # stable: ties keep class order
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def retrieval_chance(figures: dict[str, Any], prepare: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """The DCG of a random ranking for the main set and each transfer set of seed 002 (keys ``main`` and the set
    names), from the class sizes ``metrics/prepare/<set>.json`` gives; None where they do not match the measured
    set. Main (test queries against the train split): each split's class sizes apportioned from the set's (the
    split is stratified by class), within one image of the split's own. A transfer set (leave-one-out): exact."""
    out: dict[str, float | None] = {}
    main, info = figures.get("main") or {}, prepare.get("main") or {}
    per_class, per_split = list((info.get("per_class") or {}).values()), info.get("per_split") or {}
    out["main"] = None
    if (
        per_class
        and main.get("protocol") == "test queries against the train split"
        and info.get("num_images") == figures.get("collection_size")
        and per_split.get("train") == figures.get("gallery_size")
    ):
        queries = apportion(per_class, per_split.get("test", 0))
        out["main"] = dcg_chance(queries, apportion(per_class, per_split["train"]))
    for name, t in (figures.get("transfer") or {}).items():
        info = prepare.get(name) or {}
        counts = list((info.get("per_class") or {}).values())
        out[name] = None
        if not counts or info.get("num_images") != t.get("images"):
            continue
        if t.get("folds"):  # each fold's images query the other folds' (stratified folds): the mean over folds
            folds = t["folds"]
            each = [
                dcg_chance(apportion(counts, f["test_images"]), apportion(counts, f["train_images"])) for f in folds
            ]
            out[name] = sum(each) / len(each)
        elif t.get("protocol") == "leave-one-out":
            out[name] = dcg_chance(counts, counts, leave_one_out=True)
    return out


def paper_dcg_chance() -> tuple[float | None, str]:
    """The DCG of a random ranking under the same definition at the paper's FI protocol (its 15 % test split
    querying its 80 % training split of its 22,713 images), eight classes of equal size assumed (the papers give
    no class sizes; the chance level moves little with them); and that protocol in words."""
    pub = published_002()
    images, split = pub["dataset"]["images"], pub["setup"]["split"]
    queries, gallery = round(images * split["test"]), round(images * split["train"])
    equal = [1.0] * 8
    words = f"{queries:,} test queries against {gallery:,} training images, eight equal classes assumed"
    return dcg_chance(apportion(equal, queries), apportion(equal, gallery)), words


def dcg_chance_note(main_chance: float | None) -> str:
    """What the DCG of a random ranking says of the paper's DCG values (its Table 2), in words."""
    table2 = published_002()["table2"]
    paper = {p["name"]: p["dcg"] for p in table2["rows"].values()} | table2.get("dcg_others", {})
    fi, protocol = paper_dcg_chance()
    below = [name for name, v in paper.items() if v < fi]
    above = [f"{name} {v:.4f}" for name, v in paper.items() if v >= fi]
    return (
        f"{DCG_CHANCE}: the expected DCG of a uniformly random ranking of the same gallery, from the class sizes "
        "(metrics/prepare; exact for a leave-one-out set, the main set's split class sizes apportioned from the "
        "set's, as the split is stratified). DCG (metrics.dcg) discounts every rank of the full ranking, so chance "
        f"is far above 0: {num4(main_chance)} on this run's main set, and {num4(fi)} on FI at the paper's protocol "
        f"({protocol}). {len(below)} of the paper's {len(paper)} DCG values in its Table 2 are below that FI chance "
        "level" + (f" (not: {', '.join(above)})" if above else "") + ", so the paper's DCG is not this definition "
        "over a full ranking (perhaps a cut-off it does not state): compare our DCG with its chance level, not with "
        "the paper's values."
    )


def retrieval_measures_table(figures: dict[str, Any], chance: dict[str, float | None] | None = None) -> Table:
    """Table 2's seven measures (and accuracy) on the main set and every transfer set, beside the paper's FI rows;
    after DCG, its chance level on each of our sets (``chance``: ``retrieval_chance``'s, by set name)."""
    pub = published_002()["table2"]
    main = figures.get("main") or {}
    transfer = figures.get("transfer") or {}
    sets = [(f"main: {figures.get('dataset', DASH)} (ours)", main)]
    sets += [(f"{name}: {t.get('dataset', DASH)} (ours)", t) for name, t in transfer.items()]
    papers = [(f"paper, FI: {p['name']}", p) for p in pub["rows"].values()]
    rows = [
        ["accuracy (%)"] + [pct(r.get("accuracy")) for _, r in sets] + [paper_pct(p.get("accuracy")) for _, p in papers]
    ]
    chance = chance or {}
    for key, label in RETRIEVAL_MEASURES:
        rows.append([label] + [num4(r.get(key)) for _, r in sets] + [num4(p.get(key)) for _, p in papers])
        if key == "dcg":
            names = ["main", *transfer]
            rows.append([DCG_CHANCE] + [num4(chance.get(n)) for n in names] + [DASH for _ in papers])
    notes = [
        f"main: {main.get('protocol', DASH)}, {main.get('num_queries', DASH)} queries, "
        f"a gallery of {figures.get('gallery_size', DASH)} of {figures.get('collection_size', DASH)} images."
    ]
    for name, t in transfer.items():
        if t.get("folds"):
            loo = t.get("leave_one_out") or {}
            notes.append(
                f"{name}: {t.get('protocol', DASH)} on {t.get('images', DASH)} images ({t.get('label_set', DASH)}), "
                f"the mean over the folds (accuracy ± {pct(t.get('accuracy_std'))}, mAP8 ± {num4(t.get('map8_std'))}); "
                f"as an extra, leave-one-out with the FI model unchanged: mAP8 {num4(loo.get('map8'))}, NN "
                f"{num4(loo.get('nn'))}."
            )
        else:
            notes.append(
                f"{name}: {t.get('protocol', DASH)} on {t.get('images', DASH)} images ({t.get('label_set', DASH)}), "
                f"{t.get('num_queries', DASH)} queries; no accuracy is measured there."
            )
    if transfer:
        notes.append(
            "The paper gives its small sets' retrieval (IAPSa, ArtPhoto, Abstract) as bar charts only (Fig. 6)."
        )
    notes.append(dcg_chance_note(chance.get("main")))
    return Table(
        "Retrieval (Table 2 protocol)",
        "Retrieval by the learned embedding: NN (precision of the first result), FT and ST (recall in the top m and "
        "2m, m the relevant images), mAP over 8 emotions and over 2 polarities, DCG, ANMRR. "
        f"Paper: {pub['source']} (FI; 'Ours' is the paper's method).",
        ["measure"] + [name for name, _ in sets] + [name for name, _ in papers],
        rows,
        notes,
    )


def retrieval_claims(figures: dict[str, Any]) -> tuple[list[Claim], Table]:
    """Seed 002's shapes checked on this run (mAP8 of one Table-1 row over another's), and them as a table."""
    rows = {r.get("row"): r for r in figures.get("ablation") or []}
    claims, table_rows = [], []
    for c in published_002()["claims"]:
        a, b = rows.get(c["a"], {}).get("map8"), rows.get(c["b"], {}).get("map8")
        ours = None if a is None or b is None else round(a - b, 4)
        paper = round(c["paper_a"] - c["paper_b"], 4)
        holds = None if ours is None else ours > 0
        claims.append(Claim(c["key"], c["text"], ours, paper, holds, seed="002"))
        verdict = "not measured" if holds is None else "holds" if holds else "does not hold"
        table_rows.append(
            [
                c["text"],
                DASH if ours is None else f"{num4(a)} vs {num4(b)}",
                DASH if ours is None else f"{ours:+.4f}",
                verdict,
                f"{num4(c['paper_a'])} vs {num4(c['paper_b'])} ({paper:+.4f})",
            ]
        )
    table = Table(
        "The paper's claims on this run (seed 002)",
        "mAP8 of the rows each claim compares (Table 1; this run's means over its seeds) and their difference; "
        "a claim whose rows the run did not measure is not measured.",
        ["claim", "this run", "difference", "verdict", "the paper"],
        table_rows,
    )
    return claims, table


def section_figures(
    run: RunFigures, folder: Path | None, figures: tuple[tuple[str, str], ...]
) -> list[RetrievalFigure]:
    """A later seed's figures (``figures``: (file under ``folder``, title)): each with its file and its name
    relative to ``plots/`` when the run wrote it."""
    out = []
    for file_name, title in figures:
        path = folder / file_name if folder is not None else None
        if path is None or not path.is_file():
            out.append(RetrievalFigure(title, file_name, None, None))
            continue
        name = Path(os.path.relpath(path, run.plots)).as_posix() if run.plots is not None else path.as_posix()
        out.append(RetrievalFigure(title, file_name, path, name))
    return out


def retrieval_figures(run: RunFigures) -> list[RetrievalFigure]:
    """Seed 002's figures: each with its file and its name relative to ``plots/`` when the run wrote it."""
    return section_figures(run, run.retrieval_plots, RETRIEVAL_FIGURES)


def retrieval_section(run: RunFigures) -> RetrievalSection | None:
    """Seed 002's section from ``metrics/retrieval.json`` (None when the retrieve stage has not run)."""
    figures = run.extras.get("retrieval")
    if figures is None:
        return None
    g = figures.get
    header = (
        f"Dataset {g('dataset', DASH)} ({g('label_set', DASH)}), backbone {g('backbone', DASH)} at "
        f"{g('image_size', DASH)} px, feature {g('feature', DASH)} ({g('dimension', DASH)}-d), "
        f"{g('index_kind', DASH)} index."
    )
    pub = published_002()["dataset"]
    notes = []
    if g("dataset") != pub["key"]:
        notes.append(
            f"Not the paper's data: this run retrieves in {g('dataset', DASH)}, the paper in {pub['name']} "
            f"({pub['images']} images), so the numbers are not comparable with the paper's; compare the shapes "
            "(which rows win, whether the claims hold)."
        )
    claims, claims_table = retrieval_claims(figures)
    return RetrievalSection(
        title=EXTRAS["retrieval"],
        paper=published_002()["paper"],
        header=header,
        notes=notes,
        tables=[
            retrieval_table1(figures),
            retrieval_measures_table(figures, retrieval_chance(figures, run.prepare)),
            claims_table,
        ],
        claims=claims,
        figures=retrieval_figures(run),
    )


# ---------------------------------------------------------------------------------------------- seed 001

PAPER_001 = (
    "Shi et al., One for All: A Unified Generative Framework for Image Emotion Classification (UGRIE; IEEE TCSVT "
    "34(8), 2024, pp. 7057-7068; seed 001)"
)
SOURCE_001 = (
    "The source we have of this paper is its abstract only: it publishes no numbers we could set beside ours, so "
    "this section has no paper column. Its claims (one model for several emotion models; large gains in supervised "
    "and in low-resource settings) are checked qualitatively, on this run's own numbers: the one model against "
    "separate models trained for each emotion model."
)
GENERATIVE_FIGURES = (  # (file under plots_generative/, title), as the evaluate_generative stage writes them
    ("low_resource.png", "Low-resource curve: test accuracy by training images a class, the one model and the probes"),
)
CLAIMS_001 = (  # (key, text): seed 001's shapes, checked on every run (the abstract gives no number)
    (
        "one_model_vs_probes",
        "one generative model (one set of weights) is at least as accurate as a separate probe on every emotion model",
    ),
    (
        "low_resource_vs_probe_fewest_shots",
        "with the fewest training images a class (the curve's smallest k), the one model is at least as accurate "
        "as the probe on the main emotion model",
    ),
)


def _points(a: float | None, b: float | None) -> float | None:
    """``a - b`` in percentage points (two decimals); None when either is absent."""
    return None if a is None or b is None else round(100 * (a - b), 2)


def classifier_accuracy(emotion_model: str, figures: dict[str, Any], evaluation: dict[str, Any]) -> float | None:
    """Seed 000's multi-level classifier's test accuracy where it answers ``emotion_model`` on the same test set:
    ``test_accuracy`` for its own label set when that is also the one model's main emotion model, and the binary
    head's ``binary_test_accuracy`` for ``binary``; None elsewhere, or when the two stages read different main
    sets."""
    ours, theirs = figures.get("dataset"), evaluation.get("dataset")
    if ours is not None and theirs is not None and ours != theirs:
        return None
    if emotion_model == "binary":
        return evaluation.get("binary_test_accuracy")
    if emotion_model == evaluation.get("label_set") == figures.get("label_set"):
        return evaluation.get("test_accuracy")
    return None


def one_model_table(figures: dict[str, Any], evaluation: dict[str, Any]) -> Table:
    """One row an emotion model: its test images, the one model's accuracy, the separate probe's, seed 000's
    classifier's where it applies, and the constrained (and unconstrained) generation."""
    probes = figures.get("probe_accuracy") or {}
    primary = figures.get("label_set")
    rows = []
    for name, m in (figures.get("emotion_models") or {}).items():
        rows.append(
            [
                f"{name} (main)" if name == primary else name,
                str(m.get("num_samples", DASH)),
                pct(m.get("accuracy")),
                pct(probes.get(name)),
                pct(classifier_accuracy(name, figures, evaluation)),
                pct(m.get("generated_valid")),
                pct(m.get("unconstrained_valid")),
                pct(m.get("generated_accuracy")),
            ]
        )
    return Table(
        "One model, every emotion model (seed 001)",
        "Test accuracy (%) of the one generative model (one set of weights answers every emotion model: the most "
        "likely template), of a separate softmax probe trained for each emotion model on the same frozen features, "
        "and of seed 000's multi-level classifier (metrics/evaluate.json) where it answers the same emotion model on "
        f"the same main set ({evaluation.get('dataset', DASH)}): its own label set "
        f"({evaluation.get('label_set', DASH)}) when that is the one model's main emotion model, its binary head on "
        "binary; a dash elsewhere.",
        [
            "emotion model",
            "test images",
            "one model",
            "separate probe",
            "seed 000 classifier",
            "constrained valid",
            "unconstrained valid",
            "generation accuracy",
        ],
        rows,
        [
            "constrained valid: share (%) of the beam-search generations, constrained to the templates, that are a "
            "valid template; unconstrained valid: the same without the constraint; generation accuracy: the "
            "accuracy of the constrained generation.",
        ],
    )


def low_resource_table(figures: dict[str, Any]) -> Table:
    """The low-resource curve: one row a k (training images a class), the one model and the probe per emotion
    model."""
    curve = figures.get("low_resource") or []
    models = list(dict.fromkeys(r["emotion_model"] for r in curve))
    by_key = {(r["shots"], r["emotion_model"]): r for r in curve}
    shots = sorted({r["shots"] for r in curve})
    columns = ["k (images a class)"] + [f"{m}: {who}" for m in models for who in ("one model", "probe")]
    rows, notes = [], []
    for k in shots:
        row = [str(k)]
        for m in models:
            r = by_key.get((k, m), {})
            row += [
                _mean_std(r.get("generative"), r.get("generative_std"), pct),
                _mean_std(r.get("probe"), r.get("probe_std"), pct),
            ]
        rows.append(row)
        sizes = [f"{by_key[(k, m)]['train_images']} ({m})" for m in models if "train_images" in by_key.get((k, m), {})]
        if sizes:
            notes.append(f"k = {k}: training images " + ", ".join(sizes) + ".")
    seeds = next((r.get("seeds") for r in curve if r.get("seeds")), None)
    if seeds:
        notes.append(
            f"Seeds {', '.join(str(s) for s in seeds)}: mean ± std over the seeds (one seed: the figure alone)."
        )
    if not curve:
        notes.append("The run measured no low-resource curve (metrics/generative.json: low_resource is empty).")
    return Table(
        "Low resource (seed 001)",
        "Test accuracy (%) of a fresh one model and of a fresh probe per emotion model, each trained on k images a "
        "class of the training split (the same frozen features).",
        columns,
        rows,
        notes,
    )


def _verdict(holds: bool | None) -> str:
    return "not measured" if holds is None else "holds" if holds else "does not hold"


def generative_claims(figures: dict[str, Any]) -> tuple[list[Claim], Table]:
    """Seed 001's shapes checked on this run (differences in points, at least 0 holds), and them as a table."""
    probes = figures.get("probe_accuracy") or {}
    models = figures.get("emotion_models") or {}
    pairs = {name: (m.get("accuracy"), probes.get(name)) for name, m in models.items()}
    diffs = {name: _points(a, b) for name, (a, b) in pairs.items()}
    measured = {name: d for name, d in diffs.items() if d is not None}
    if any(d < 0 for d in measured.values()):  # one emotion model where the probe wins: it fails
        every = False
    else:  # every emotion model must be measured for "every" to hold
        every = None if not measured or len(measured) < len(diffs) else True
    one_model = (
        min(measured.values()) if measured else None,
        "; ".join(f"{name} {pct(a)} vs {pct(b)}" for name, (a, b) in pairs.items()) or DASH,
        every,
    )
    primary = figures.get("label_set")
    curve = [r for r in figures.get("low_resource") or [] if r.get("emotion_model") == primary]
    fewest = min(curve, key=lambda r: r["shots"]) if curve else {}
    d = _points(fewest.get("generative"), fewest.get("probe"))
    low = (
        d,
        f"k = {fewest['shots']} ({primary}): {pct(fewest.get('generative'))} vs {pct(fewest.get('probe'))}"
        if fewest
        else DASH,
        None if d is None else d >= 0,
    )
    claims, rows = [], []
    for (key, text), (ours, shown, holds) in zip(CLAIMS_001, (one_model, low), strict=True):
        claims.append(Claim(key, text, ours, None, holds, seed="001"))
        difference = (
            DASH if ours is None else f"{ours:+.1f} points" + (" (smallest)" if key == CLAIMS_001[0][0] else "")
        )
        rows.append([text, shown, difference, _verdict(holds), "claimed in the abstract; no number published"])
    table = Table(
        "The paper's claims on this run (seed 001)",
        "Test accuracy (%) of the one model vs the separate probe (this run, one model first) and the difference "
        "in points; a claim holds at a difference of at least 0, and is not measured where a number is missing.",
        ["claim", "this run", "difference", "verdict", "the paper"],
        rows,
    )
    return claims, table


def _compare(a_name: str, a: float, b_name: str, b: float) -> str:
    """Which of two accuracies is higher, in words, with the difference in points."""
    if a == b:
        return f"{a_name} and {b_name} are equal ({pct(a)})"
    (hi_name, hi), (lo_name, lo) = ((a_name, a), (b_name, b)) if a > b else ((b_name, b), (a_name, a))
    return f"{hi_name} is higher than {lo_name} ({pct(hi)} vs {pct(lo)}, {100 * (hi - lo):+.1f} points)"


def generative_summary(figures: dict[str, Any], evaluation: dict[str, Any]) -> list[str]:
    """What the numbers say: per emotion model, which of the one model, the probe and seed 000's classifier is
    higher; per k, where the one model beats the probe; and the setup they share."""
    probes = figures.get("probe_accuracy") or {}
    out = []
    for name, m in (figures.get("emotion_models") or {}).items():
        acc = m.get("accuracy")
        if acc is None:
            out.append(f"{name}: the one model's accuracy was not measured.")
            continue
        parts = []
        if probes.get(name) is not None:
            parts.append(_compare("the one model", acc, "the probe", probes[name]))
        clf = classifier_accuracy(name, figures, evaluation)
        if clf is not None:
            parts.append(_compare("the one model", acc, "seed 000's classifier", clf))
        out.append(f"{name}: " + ("; ".join(parts) if parts else f"the one model {pct(acc)}, nothing beside it") + ".")
    curve = figures.get("low_resource") or []
    for k in sorted({r["shots"] for r in curve}):
        rows = [r for r in curve if r["shots"] == k and r.get("generative") is not None and r.get("probe") is not None]
        if not rows:
            continue
        wins = [r["emotion_model"] for r in rows if r["generative"] > r["probe"]]
        losses = [r["emotion_model"] for r in rows if r["generative"] < r["probe"]]
        ties = [r["emotion_model"] for r in rows if r["generative"] == r["probe"]]
        said = [f"the one model is higher on {', '.join(wins)}"] if wins else []
        said += [f"the probe is higher on {', '.join(losses)}"] if losses else []
        said += [f"they are equal on {', '.join(ties)}"] if ties else []
        out.append(f"Low resource, k = {k}: " + "; ".join(said) + ".")
    out.append(
        f"The encoder ({figures.get('encoder') or DASH}) is frozen: the one model, the probes and the low-resource "
        f"runs all read its features of the same images; the decoder is {figures.get('decoder') or DASH}. "
        "Seed 000's classifier reads its own features (its detector's global and region features)."
    )
    return out


def generative_section(run: RunFigures) -> RetrievalSection | None:
    """Seed 001's section from ``metrics/generative.json`` (None when evaluate_generative has not run)."""
    figures = run.extras.get("generative")
    if figures is None:
        return None
    sets = figures.get("sets") or {}
    main = sets.get("main") or {}
    header = (
        f"Main set {figures.get('dataset', DASH)} ({figures.get('label_set', DASH)}, {main.get('images', DASH)} images)"
    )
    others = [
        f"{name}: {s.get('dataset', DASH)} ({s.get('label_set', DASH)}, {s.get('images', DASH)} images)"
        for name, s in sets.items()
        if name != "main"
    ]
    if others:
        header += "; also " + "; ".join(others)
    header += (
        f". Encoder {figures.get('encoder') or DASH} (frozen), decoder {figures.get('decoder') or DASH}. "
        f"Valid generations, the smallest over the emotion models: "
        f"{pct((figures.get('decoding') or {}).get('valid'))}% constrained, "
        f"{pct((figures.get('decoding') or {}).get('unconstrained_valid'))}% unconstrained."
    )
    claims, claims_table = generative_claims(figures)
    return RetrievalSection(
        title=EXTRAS["generative"],
        paper=PAPER_001,
        header=header,
        notes=[SOURCE_001],
        tables=[one_model_table(figures, run.evaluation), low_resource_table(figures), claims_table],
        claims=claims,
        figures=section_figures(run, run.generative_plots, GENERATIVE_FIGURES),
        summary=generative_summary(figures, run.evaluation),
    )


# ---------------------------------------------------------------------------------------------- deviations

SEED_NAMES = {"000": "Rao et al.", "002": "Yang et al.", "001": "UGRIE"}


def _seed_000_deviations(run: RunFigures, config: Config, datasets: Table) -> list[tuple[str, str, str]]:
    """Seed 000's rows (the paper, this run, why): from the config and the run's files where the value varies."""
    setup = published()["setup"]
    src = setup["sources"]
    out = []
    off = [r for r in datasets.rows if r[5] == "no"]
    if off:
        out.append(
            (
                "FI (main), EmotionROI (detector), IAPSsubset, ArtPhoto, Abstract, EmotionROI (transfer) (§5.1)",
                "; ".join(f"{r[0]}: {r[1]} ({r[2]} images)" for r in off),
                "the papers' datasets are not given in params; synthetic sets stand in"
                if any(r[1] == "synthetic" for r in off)
                else "params choose these datasets",
            )
        )
    if config.detector.object_weights is None:
        out.append(
            (
                f"detector pretrained on COCO, Table 1's object regions from it ({src['objects']})",
                f"detector pretrained on the synthetic objects set ({config.pretrain.root}, {config.pretrain.epochs} "
                "epochs) playing COCO; Table 1's object regions from it",
                "no COCO checkpoint given (detector.object_weights is null)",
            )
        )
    if config.detector.backbone != setup["backbone"]:
        weights = config.detector.backbone_weights or "random"
        out.append(
            (
                f"FPN on ResNet-101 ({src['backbone']})",
                f"FPN on {config.detector.backbone} ({weights} weights)",
                "CPU-sized default (detector.backbone)",
            )
        )
    if config.detector.min_size != setup["min_size"]:
        out.append(
            (
                f"{setup['min_size']} px images ({src['min_size']})",
                f"{config.detector.min_size} px images (at most {config.detector.max_size})",
                "CPU-sized default (detector.min_size)",
            )
        )
    if config.finetune.max_images is not None:
        d = run.detector
        out.append(
            (
                f"emotional detector fine-tuned on EmotionROI ({src['detector_schedule']})",
                f"{d.get('epochs', config.finetune.epochs)} epochs on {d.get('train_images', DASH)} images "
                f"(finetune.max_images = {config.finetune.max_images})",
                "CPU-sized default (finetune)",
            )
        )
    hp = config.classifier
    ours = {"epochs": hp.epochs, "batch": hp.batch_size, "lr": hp.lr}
    paper = {k: setup[f"classifier_{key}"] for k, key in (("epochs", "epochs"), ("batch", "batch_size"), ("lr", "lr"))}
    changed = [k for k in ours if ours[k] != paper[k]]
    if changed:
        out.append(
            (
                "classifier: " + ", ".join(f"{k} {paper[k]:g}" for k in paper) + f" ({src['classifier']})",
                "classifier: " + ", ".join(f"{k} {ours[k]:g}" for k in changed),
                "params classifier",
            )
        )
    out.append(
        (
            "Table 1's global row: ResNet101 fine-tuned on FI, its last conv layer's feature (§5.3.2, §5.4.1)",
            "a head on the mean- and max-pooled FPN maps P2-P5 of the frozen emotional detector (the global feature "
            "of every row)",
            "one detector pass gives every row's features: the rows differ only in what the head reads",
        )
    )
    global_row = next((r for r in run.ablation if r.get("mode") == "global"), None)
    if global_row is not None and ablation_loss(global_row) != "cls":
        out.append(
            (
                "Table 1's global row with L_cls (its 60.82 % is Table 2's 'ResNet101 + L_cls')",
                f"global row with L_{ablation_loss(global_row)} at λ = {global_row.get('lambda')}",
                "as metrics/ablation.json records it"
                + ("" if "loss" in global_row else " (no per-row loss: every row was trained with L_multi)"),
            )
        )
    out.append(
        (
            "L_p (eq. 10): -Σ y_i log p_i^θ, p_i^θ = softmax(p*² · p_i), p_i the class probabilities",
            "cross-entropy of softmax(p*² · a), a the logits; p* = the label's vote share "
            f"({config.emotions.dominant_probability} without votes, emotions.dominant_probability)",
            "on probabilities in [0, 1] the softmax stays within a factor e of uniform; on logits p*² is a "
            "temperature: a less certain label weighs less (eq. 11's reading)",
        )
    )
    if config.emotions.target != "eq4":
        out.append(
            (
                "L_ed's target: the eq. 4 distribution (§4.2, eq. 8)",
                f"L_ed's target: {config.emotions.target}",
                "params emotions.target",
            )
        )
    return out


def _seed_002_deviations(figures: dict[str, Any], config: Config) -> list[tuple[str, str, str]]:
    """Seed 002's rows, from its ``retrieval.json`` (what the model was) and the ``metric`` params."""
    setup, data = published_002()["setup"], published_002()["dataset"]
    m = config.metric
    out = []
    if figures.get("dataset") != data["key"]:
        out.append(
            (
                f"{data['name']}, {data['images']:,} images (Datasets)",
                f"{figures.get('dataset', DASH)} ({figures.get('collection_size', DASH)} images)",
                "the paper's dataset is not given in params; a synthetic set stands in"
                if figures.get("dataset") == "synthetic"
                else "params data",
            )
        )
    backbone = figures.get("backbone", m.backbone)
    if backbone != "googlenet":
        out.append(
            (
                f"{setup['backbone']}, ImageNet weights ({setup['source']})",
                f"{backbone} ({m.backbone_weights or 'random'} weights)",
                "CPU-sized default (metric.backbone)",
            )
        )
    if m.freeze_backbone:
        out.append(
            (
                f"all layers fine-tuned ({setup['source']}), so the loss on SV also trains what the softmax reads",
                "backbone frozen: the loss on SV trains only its 1×1 convs, which the classifier does not read; Table "
                f"1's SV-row accuracy is the softmax branch's (weight 1 - ω = {1 - m.omega:g})",
                "CPU: the backbone's maps computed once for every row (metric.freeze_backbone)",
            )
        )
    size = figures.get("image_size", m.image_size)
    if size != setup["image_size"]:
        out.append(
            (
                f"input size not stated (GoogLeNet's is {setup['image_size']} px)",
                f"{size} px",
                "CPU-sized default (metric.image_size)",
            )
        )
    ours = {"epochs": m.epochs, "batch": m.batch_size, "a class": m.min_per_class, "lr conv": m.lr_conv,
            "lr FC": m.lr_last}  # fmt: skip
    paper = {"epochs": setup["epochs"], "batch": setup["batch_size"], "a class": setup["min_per_class"],
             "lr conv": setup["lr_conv"], "lr FC": setup["lr_last"]}  # fmt: skip
    changed = [k for k in ours if ours[k] != paper[k]]
    if changed:
        out.append(
            (
                ", ".join(f"{k} {paper[k]:g}" for k in paper) + f" ({setup['source']})",
                ", ".join(f"{k} {ours[k]:g}" for k in changed),
                "CPU-sized default (metric)"
                + ("; the new 1×1 convs learn from scratch on a frozen backbone" if m.freeze_backbone else ""),
            )
        )
    if m.embedding_dim != setup["embedding_dim"]:
        out.append(
            (
                f"FC feature of {setup['embedding_dim']} dimensions ({setup['source']})",
                f"{m.embedding_dim}-d FC embedding" if m.embedding_dim else "no FC embedding (the pooled features)",
                "CPU-sized default (metric.embedding_dim)",
            )
        )
    out.append(
        (
            "SV = [SV_1, ..., SV_5] normalised to unit L2 norm as a whole (Sentiment Vector for Feature Embedding)",
            "each layer's 136 values at unit norm, the five concatenated ÷ √5",
            "one norm over all 680 lets the layer with the largest Grams dominate the distance",
        )
    )
    if any(not t.get("folds") for t in (figures.get("transfer") or {}).values()):  # a run before the folds
        out.append(
            (
                "small sets: the FI model fine-tuned on each, 80/20 split, 5 folds averaged (Implementation "
                "details); each image queries the remaining ones (Evaluation)",
                "the main set's model unchanged (no fine-tuning); every image queries all the others once "
                "(leave-one-out); no accuracy",
                "no per-fold training (retrieve_transfer); the paper shows these sets as bar charts only (Fig. 6)",
            )
        )
    return out


def _seed_001_deviations(figures: dict[str, Any], config: Config) -> list[tuple[str, str, str]]:
    """Seed 001's rows, from its ``generative.json`` and the ``generative`` / ``emotions`` params."""
    g = config.generative
    out = []
    if figures.get("dataset") == "synthetic":
        out.append(
            (
                "'multiple public datasets' (abstract; not named there)",
                "synthetic sets: main" + "".join(f", {s.name}" for s in g.sets),
                "the papers' datasets are not given in params; synthetic sets stand in",
            )
        )
    encoder = figures.get("encoder") or g.encoder
    if encoder != "clip" or g.decoder_weights is None:
        decoder = figures.get("decoder") or "BART"
        out.append(
            (
                "CLIP mapped into BART, both pre-trained models (abstract)",
                f"{encoder} ({g.encoder_weights or 'random'} weights, frozen) mapped into "
                + (f"{decoder} trained from scratch" if g.decoder_weights is None else f"{decoder} (decoder_weights)"),
                "CPU-sized default, offline (generative.encoder, generative.decoder_weights)",
            )
        )
    target = {
        "eq4": "seed 000's eq. 4 distribution (Rao et al. §4.2, Mikels' wheel)",
        "votes": "the vote distribution (seed 000's eq. 4 without votes)",
        "onehot": "the one-hot label (no relation)",
    }[config.emotions.target]
    out.append(
        (
            "'capturing intricate semantic relationships between emotion labels' (abstract; no term defined)",
            "no label-relation term (generative.distribution_weight = 0)"
            if g.distribution_weight == 0
            else f"(1 - λ) · template NLL + λ · CE(target, label softmax), λ = {g.distribution_weight:g}, "
            f"target: {target}",
            "we have only the abstract; seed 000's eq. 4 stands in for UGRIE's relation term",
        )
    )
    return out


def deviations(run: RunFigures, config: Config, datasets: Table) -> Table:
    """Every place this run differs from the paper it reproduces: one row a deviation (the paper with its section,
    table or equation; this run; why). Rows whose value varies are derived from the config and the run's files
    (a setting equal to the paper's has no row); structural ones are fixed text. Seeds 002 and 001 get rows when
    their results are in the run."""
    rows = [["000", *r] for r in _seed_000_deviations(run, config, datasets)]
    if "retrieval" in run.extras:
        rows += [["002", *r] for r in _seed_002_deviations(run.extras["retrieval"], config)]
    if "generative" in run.extras:
        rows += [["001", *r] for r in _seed_001_deviations(run.extras["generative"], config)]
    return Table(
        "Deviations from the papers",
        "Where this run differs from the paper it reproduces (seed "
        + ", ".join(f"{k}: {v}" for k, v in SEED_NAMES.items())
        + "); a setting equal to the paper's has no row.",
        ["seed", "the paper does", "this run does", "why"],
        rows,
        prose=True,
    )


def build_report(run: RunFigures, config: Config, revision: str, params_hash: str) -> Report:
    """The whole report of one run."""
    datasets = dataset_table(run, config)
    retrieval = retrieval_section(run)
    generative = generative_section(run)
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
        deviations=deviations(run, config, datasets),
        claims=claims(run)  # seed 000's first, then seed 002's, then seed 001's
        + (retrieval.claims if retrieval else [])
        + (generative.claims if generative else []),
        tables=[table1(run), table2(run), table3(run, config), calibration_table(run)],
        lambda_table=lambda_table(run),
        detector=detector_summary(run),
        extras={  # seeds 002 and 001 get their own sections; any other a table of its numbers
            name: (extras_table(name, run.extras[name]) if name in run.extras and name not in SECTIONS else None)
            for name in EXTRAS
        },
        retrieval=retrieval,
        generative=generative,
    )
