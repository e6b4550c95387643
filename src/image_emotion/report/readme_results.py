"""README.md's results block, rendered from ``metrics/`` (what the default ``dvc repro`` writes), so no result of
the default run is typed by hand: ``image-emotion readme-results`` rewrites the text between ``BEGIN`` and ``END``,
``--check`` (and a test) says whether it is fresh. A missing file or key is a one-line error naming it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from image_emotion.errors import ImageEmotionError
from image_emotion.files import write_text_atomic

BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"
NOTE = "<!-- generated from metrics/ by `image-emotion readme-results`; do not edit by hand -->"
DASH = "—"
MODES = {  # Table 1's feature modes (ablation.json's ``mode``), as the README names them
    "global": "global only",
    "object": "object regions only",
    "emotional": "emotional regions only",
    "global+object": "global + object regions",
    "global+emotional": "global + emotional regions",
}
CLAIMS = {  # classifier.json's ``claims``, in the report's order
    "regions_over_global": "global + emotional regions beat global only",
    "emotional_over_object": "emotional regions beat object regions (both with global)",
    "multi_over_cls": "L_multi beats L_cls",
}
EMOTION_MODELS = {"mikels8": "Mikels-8", "binary": "binary", "ekman6": "Ekman-6", "emotion6": "Emotion6"}
FEATURES = {"sentiment": "the sentiment vector (SV)", "fc": "the FC feature"}
RETRIEVAL = ("nn", "ft", "st", "map8", "map2", "dcg", "anmrr")  # keys in retrieval.json; the column names below
RETRIEVAL_NAMES = ("NN", "FT", "ST", "mAP8", "mAP2", "DCG", "ANMRR")


class MetricsError(ImageEmotionError):
    """A metrics file or key the README's results need is missing or unreadable."""


class _Metrics:
    """The JSON files under one metrics folder, each read once; ``get`` names the file and key it misses."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._files: dict[str, Any] = {}

    def file(self, name: str) -> Any:
        if name not in self._files:
            path = self.root / name
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise MetricsError(f"{path}: missing; run `dvc repro` to write it") from None
            try:
                self._files[name] = json.loads(text)
            except json.JSONDecodeError as exc:
                raise MetricsError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None
        return self._files[name]

    def get(self, name: str, *keys: str | int) -> Any:
        value = self.file(name)
        for i, key in enumerate(keys):
            try:
                value = value[key]
            except (KeyError, IndexError, TypeError):
                raise MetricsError(f"{self.root / name}: no key {_dotted(keys[: i + 1])}") from None
        return value

    def number(self, name: str, *keys: str | int) -> float:
        value = self.get(name, *keys)
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise MetricsError(f"{self.root / name}: {_dotted(keys)} is {value!r}, not a number")
        return float(value)


def _dotted(keys: tuple[str | int, ...]) -> str:
    return "'" + ".".join(map(str, keys)) + "'"


def _split(name: str) -> str:
    return {"val": "validation"}.get(name, name)


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _seed000(m: _Metrics) -> str:
    c = "classifier.json"
    mode = m.get(c, "mode")
    lam = m.number(c, "best_lambda")
    rows = [["chance", _pct(m.number(c, "chance_accuracy")), DASH]]
    ablation = m.get("ablation.json")
    if not isinstance(ablation, list):
        raise MetricsError(f"{m.root / 'ablation.json'}: not a list of Table 1 rows")
    for i in range(len(ablation)):
        name = m.get("ablation.json", i, "mode")
        if name != mode:
            acc, pol = (m.number("ablation.json", i, k) for k in ("test_accuracy", "test_polarity_accuracy"))
            rows.append([MODES.get(name, name), _pct(acc), _pct(pol)])
    rows.append(
        [
            f"{MODES.get(mode, mode)}: the method, L_multi at λ* = {lam:g} (chosen on validation)",
            _pct(m.number(c, "test_accuracy")),
            _pct(m.number(c, "test_polarity_accuracy")),
        ]
    )
    acc, pol = "loss_variants_test_accuracy", "loss_variants_test_polarity_accuracy"
    rows.append(
        [
            "the same with L_cls (λ = 0) / L_p",
            f"{_pct(m.number(c, acc, 'cls'))} / {_pct(m.number(c, acc, 'p'))}",
            f"{_pct(m.number(c, pol, 'cls'))} / {_pct(m.number(c, pol, 'p'))}",
        ]
    )
    rows.append(["the 2-class model", DASH, _pct(m.number(c, "binary_test_accuracy"))])
    for path in sorted((m.root / "transfer").glob("*.json")):
        t = f"transfer/{path.name}"
        rows.append(
            [
                f"transfer to `{path.stem}`, {int(m.number(t, 'folds'))}-fold one-against-all (mean ± std)",
                f"{100 * m.number(t, 'accuracy_mean'):.1f} ± {100 * m.number(t, 'accuracy_std'):.1f} %",
                f"{100 * m.number(t, 'accuracy_2class_mean'):.1f} ± {100 * m.number(t, 'accuracy_2class_std'):.1f} %",
            ]
        )
    return _table(["Rao et al., test accuracy", "8 classes", "2 classes (8→2)"], rows)


def _interval(m: _Metrics, *keys: str) -> str:
    diff, low, high = (m.number("classifier.json", *keys, k) for k in ("difference", "low", "high"))
    return f"{diff:+.1f} [{low:+.1f}, {high:+.1f}]"


def _claims(m: _Metrics) -> str:
    c = "classifier.json"
    rows = []
    for key, text in CLAIMS.items():
        level = m.number(c, "claims", key, "level")
        rows.append(
            [
                text,
                f"{int(m.number(c, 'claims', key, 'images'))} {_split(m.get(c, 'claims', key, 'split'))} images",
                f"{_interval(m, 'claims', key)} ({100 * level:g} %)",
                f"**{m.get(c, 'claims', key, 'verdict')}**",
            ]
        )
    key = "lambda_inside"
    ends = m.get(c, "claims", key, "versus_ends")
    if not isinstance(ends, dict) or not ends:
        raise MetricsError(f"{m.root / c}: no key 'claims.{key}.versus_ends.<λ>'")
    order = sorted(ends, key=float)
    levels = {m.number(c, "claims", key, "versus_ends", end, "level") for end in order}
    versus = "; ".join(
        f"vs λ = {float(end):g}: {_interval(m, 'claims', key, 'versus_ends', end)}"
        + ("" if len(levels) == 1 else f" ({100 * m.number(c, 'claims', key, 'versus_ends', end, 'level'):g} %)")
        for end in order
    )
    versus += f" ({100 * levels.pop():g} %)" if len(levels) == 1 else ""
    images = int(m.number(c, "claims", key, "versus_ends", order[0], "images"))
    rows.append(
        [
            f"λ* = {m.number(c, 'claims', key, 'lambda'):g} lies inside (0, 1), beating both ends",
            f"{images} {_split(m.get(c, 'claims', key, 'split'))} images",
            versus,
            f"**{m.get(c, 'claims', key, 'verdict')}**",
        ]
    )
    return _table(["the paper's claim", "on", "difference, points [paired bootstrap interval]", "verdict"], rows)


def _calibration(m: _Metrics) -> str:
    e = "evaluate.json"
    rows = [
        [
            f"{split} ({int(m.number(e, f'num_{key}_images'))} images)",
            f"{m.number(e, 'calibration', f'{key}_ece_before'):.3f}",
            f"{m.number(e, 'calibration', f'{key}_ece_after'):.3f}",
        ]
        for split, key in (("validation", "val"), ("test", "test"))
    ]
    temperature = m.number(e, "calibration", "temperature")
    return _table(
        [
            f"calibration: ECE, {int(m.number(e, 'calibration', 'bins'))} bins",
            "T = 1",
            f"T = {temperature:.3f} (fitted on validation)",
        ],
        rows,
    )


def _detector(m: _Metrics) -> str:
    d = "detector.json"
    ks = sorted(int(k.removeprefix("recall_at_")) for k in m.file(d) if k.startswith("recall_at_"))
    if not ks:
        raise MetricsError(f"{m.root / d}: no key 'recall_at_<K>'")
    header = (
        f"detector: emotional branch, {int(m.number(d, 'train_images'))} training images, "
        f"{int(m.number(d, 'epochs'))} epochs"
    )
    holdout = _split(m.get(d, "holdout_split"))
    row = [f"ground-truth regions among its top K emotional regions ({holdout})"]
    row += [_pct(m.number(d, f"recall_at_{k}")) for k in ks]
    objects = [f"the same among the object detector's top K object regions (Table 1's object regions, {holdout})"]
    objects += [_pct(m.number(d, f"object_recall_at_{k}")) for k in ks]
    return _table([header] + [f"recall@{k}" for k in ks], [row, objects])


def _retrieval(m: _Metrics) -> str:
    r = "retrieval.json"
    feature = m.get(r, "feature")
    rows = [
        [
            f"{m.get(r, 'main', 'protocol')} ({int(m.number(r, 'gallery_size'))} images)",
            str(int(m.number(r, "main", "num_queries"))),
            _pct(m.number(r, "main", "accuracy")),
        ]
        + [f"{m.number(r, 'main', k):.3f}" for k in RETRIEVAL]
    ]
    for path in sorted((m.root / "retrieval_transfer").glob("*.json")):
        t = f"retrieval_transfer/{path.name}"
        name, images = m.get(t, "set"), str(int(m.number(t, "images")))
        rows.append(
            [f"`{name}`, fine-tuned on each 80 %, tested on its 20 % (mean of 5 folds)", images]
            + [_pct(m.number(t, "accuracy"))]
            + [f"{m.number(t, k):.3f}" for k in RETRIEVAL]
        )
        rows.append(
            [
                f"`{name}`, leave-one-out with the main model unchanged",
                str(int(m.number(t, "leave_one_out", "num_queries"))),
            ]
            + [DASH]
            + [f"{m.number(t, 'leave_one_out', k):.3f}" for k in RETRIEVAL]
        )
    header = [f"Yang et al.: retrieval with {FEATURES.get(feature, feature)}", "queries", "accuracy", *RETRIEVAL_NAMES]
    return _table(header, rows)


def _generative(m: _Metrics) -> str:
    g = "generative.json"
    main = m.get(g, "label_set")
    found = m.get(g, "emotion_models")
    if not isinstance(found, dict) or main not in found:
        raise MetricsError(f"{m.root / g}: no key 'emotion_models.{main}'")
    names = [main] + [name for name in found if name != main]
    rows = []
    for name in names:
        one = ("emotion_models", name)
        classifier = _pct(m.number("classifier.json", "test_accuracy")) if name == main else DASH
        rows.append(
            [
                EMOTION_MODELS.get(name, name),
                str(int(m.number(g, *one, "num_samples"))),
                _pct(m.number(g, *one, "accuracy")),
                _pct(m.number(g, "probe_accuracy", name)),
                classifier,
                _pct(m.number(g, *one, "generated_valid")),
                _pct(m.number(g, *one, "generation_agrees_with_ranking")),
            ]
        )
    table = _table(
        [
            "UGRIE: emotion model",
            "test images",
            "one generative model",
            "separate probe (same features)",
            "Rao et al.'s classifier (same images)",
            "written text valid (constrained)",
            "written = most likely",
        ],
        rows,
    )
    points = m.get(g, "low_resource")
    if not isinstance(points, list):
        raise MetricsError(f"{m.root / g}: no key 'low_resource' (a list)")
    by_shots: dict[int, dict[str, str]] = {}
    images: dict[int, int] = {}
    for i in range(len(points)):
        shots = int(m.number(g, "low_resource", i, "shots"))
        images[shots] = int(m.number(g, "low_resource", i, "train_images"))
        ours, probe = (m.number(g, "low_resource", i, k) for k in ("generative", "probe"))
        by_shots.setdefault(shots, {})[m.get(g, "low_resource", i, "emotion_model")] = (
            f"{100 * ours:.1f} / {100 * probe:.1f} %"
        )
    low = _table(
        ["k images a class (training images)"] + [f"{EMOTION_MODELS.get(n, n)}: one model / probe" for n in names],
        [[f"{k} ({images[k]})"] + [by_shots[k].get(n, DASH) for n in names] for k in sorted(by_shots)],
    )
    return table + "\n\n" + low


def render(metrics_dir: Path) -> str:
    """The README's results block (without the markers) from the files under ``metrics_dir``."""
    m = _Metrics(Path(metrics_dir))
    parts = [NOTE, _seed000(m), _claims(m), _calibration(m), _detector(m), _retrieval(m), _generative(m)]
    return "\n\n".join(parts) + "\n"


def update(readme: Path, metrics_dir: Path, check: bool) -> bool:
    """Whether ``readme``'s results block was already what ``render`` gives; unless ``check``, rewrite it
    (atomically) when it was not."""
    readme = Path(readme)
    try:
        text = readme.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MetricsError(f"{readme}: missing") from None
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(END) < text.index(BEGIN):
        raise MetricsError(f"{readme}: needs one {BEGIN} line and, after it, one {END} line around the results")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    new = f"{head}{BEGIN}\n{render(metrics_dir)}{END}{tail}"
    if new == text:
        return True
    if not check:
        write_text_atomic(readme, new)
    return False
