"""The report's "Deviations from the papers" table (rows that follow the config and the run's files, fixed rows for
the structural ones), the chance level of seed 002's DCG (against a brute force over every ranking and a seeded
Monte Carlo, both with ``metrics.dcg``), and the published figures' citations, as the papers' text says them."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_report import _HtmlTables, md_tables
from tiny import tiny_config

from image_emotion.metrics import dcg
from image_emotion.report.render import html_page, markdown
from image_emotion.report.tables import (
    DCG_CHANCE,
    PUBLISHED,
    PUBLISHED_002,
    RunFigures,
    build_report,
    dcg_chance,
    paper_dcg_chance,
    retrieval_chance,
)

DEVIATIONS = "Deviations from the papers"
RETRIEVAL = "Retrieval (Table 2 protocol)"
THE_PAPERS = {  # overrides that set every config-derived setting of seed 000 and 002 to the paper's
    "detector.backbone": "resnet101",
    "detector.min_size": 800,
    "detector.max_size": 1333,
    "detector.object_weights": "coco.pth",
    "finetune.max_images": "null",
    "classifier.epochs": 100,
    "classifier.batch_size": 128,
    "classifier.lr": 0.001,
    "metric.backbone": "googlenet",
    "metric.image_size": 224,
    "metric.embedding_dim": 512,
    "metric.freeze_backbone": "false",
    "metric.epochs": 100,
    "metric.batch_size": 128,
    "metric.min_per_class": 8,
    "metric.lr_conv": 0.0001,
    "metric.lr_last": 0.001,
}


def _retrieval(backbone: str = "efficientnet_lite0", image_size: int = 48) -> dict:
    """A metrics/retrieval.json of seed 002: the main set (20 test queries against 60 train images of 100) and a
    leave-one-out transfer set ``small``."""
    return {
        "dataset": "synthetic", "label_set": "mikels8", "backbone": backbone, "image_size": image_size,
        "feature": "sentiment", "dimension": 680, "index_kind": "exact", "gallery_size": 60, "collection_size": 100,
        "main": {"protocol": "test queries against the train split", "accuracy": 0.4, "num_queries": 20, "dcg": 0.7},
        "transfer": {"small": {"protocol": "leave-one-out", "dataset": "synthetic", "label_set": "mikels8",
                               "images": 24, "num_queries": 24, "dcg": 0.6}},
        "ablation": [],
    }  # fmt: skip


PREPARE = {  # metrics/prepare of that run: the main set's class sizes and splits, the small set's class sizes
    "main": {"num_images": 100, "per_class": {"a": 40, "b": 30, "c": 20, "d": 10},
             "per_split": {"train": 60, "val": 20, "test": 20}},
    "small": {"num_images": 24, "per_class": {"a": 10, "b": 8, "c": 5, "d": 1}},
}  # fmt: skip


def _run(ablation: list[dict] | None = None, later_seeds: bool = True, retrieval: dict | None = None) -> RunFigures:
    """A run whose Table 1 has only the global row (trained with L_cls unless ``ablation`` says otherwise), with
    seed 002's and seed 001's results unless ``later_seeds`` is false."""
    global_row = {"mode": "global", "loss": "cls", "lambda": 0.0, "test_accuracy": 0.5}
    generative = {"dataset": "synthetic", "encoder": "efficientnet_lite0", "decoder": "small BART"}
    return RunFigures(
        prepare=PREPARE,
        detector={"epochs": 2, "train_images": 16},
        classifier={"best_lambda": 0.5},
        sweep=[],
        ablation=[global_row] if ablation is None else ablation,
        transfer={},
        evaluation={"dataset": "synthetic"},
        extras={"retrieval": retrieval or _retrieval(), "generative": generative} if later_seeds else {},
    )


def _deviations(config, run: RunFigures | None = None) -> list[list[str]]:
    """The deviations table of the report, as Markdown renders it (header row first)."""
    report = build_report(run or _run(), config, "abc", "hash")
    return md_tables(markdown(report, lambda name: name))[DEVIATIONS]


def _row(rows: list[list[str]], seed: str, *words: str) -> list[str] | None:
    """The one row of ``seed`` whose cells hold all of ``words``; None when there is none."""
    found = [r for r in rows[1:] if r[0] == seed and all(w in " ".join(r) for w in words)]
    assert len(found) <= 1, found
    return found[0] if found else None


def test_the_deviations_table_lists_every_known_deviation_in_markdown_and_html():
    config = tiny_config()
    report = build_report(_run(), config, "abc", "hash")
    md = markdown(report, lambda name: name)
    rows = md_tables(md)[DEVIATIONS]
    assert rows[0] == ["seed", "the paper does", "this run does", "why"]
    assert all(len(r) == 4 and all(r) for r in rows)
    # seed 000
    assert _row(rows, "000", "FI (main)", "synthetic (", "§5.1")  # the data
    objects = _row(rows, "000", "COCO", "synthetic objects set", "data/synthetic/objects", "object_weights is null")
    assert objects and "§5.2" in objects[1]
    assert _row(rows, "000", "ResNet-101", "FPN on efficientnet_lite0", "§5.2")[2] == "FPN on efficientnet_lite0 " + (
        "(imagenet weights)"
    )
    size = _row(rows, "000", "800 px", "FPN [37]")
    assert size[1].startswith("800 px") and "not stated" in size[1] and size[2].startswith("96 px")
    assert _row(rows, "000", "classifier:", "epochs 100")[2] == "classifier: epochs 10"  # the tiny run's
    assert _row(rows, "000", "global row", "pooled FPN maps P2-P5", "§5.4.1")
    assert _row(rows, "000", "with L_cls") is None  # the run's global row was trained with L_cls, as the paper's
    lp = _row(rows, "000", "L_p (eq. 10)")
    assert "p_i the class probabilities" in lp[1] and "softmax(p*² · a), a the logits" in lp[2]
    # seed 002
    embedding = _row(rows, "002", "FC feature of 512")
    assert embedding[2] == "16-d FC embedding" and "Implementation details" in embedding[1]
    sv = _row(rows, "002", "all layers fine-tuned")
    assert "SV-row accuracy is the softmax branch's" in sv[2] and "metric.freeze_backbone" in sv[3]
    small = _row(rows, "002", "small sets", "80/20", "5 folds")
    assert "no fine-tuning" in small[2] and "leave-one-out" in small[2]
    assert _row(rows, "002", "GoogleNet-Inception")[2] == "efficientnet_lite0 (imagenet weights)"
    assert _row(rows, "002", "input size not stated")[2] == "48 px"
    # seed 001
    relation = _row(rows, "001", "semantic relationships between emotion labels")
    assert "seed 000's eq. 4" in relation[2] and "λ = 0.5" in relation[2]
    assert _row(rows, "001", "CLIP", "BART")
    # the HTML page carries the same table, its cells aligned as text
    page = html_page(report, Path("no-plots"))
    parsed = _HtmlTables()
    parsed.feed(page)
    assert parsed.tables[DEVIATIONS] == rows
    assert f'<h2>{DEVIATIONS}</h2><p class="caption">' in page and '<table class="prose">' in page


def test_config_derived_rows_follow_the_config():
    rows = _deviations(tiny_config(**THE_PAPERS), _run(retrieval=_retrieval("googlenet", 224)))
    for seed, words in (
        ("000", ("ResNet-101",)),  # the backbone
        ("000", ("800 px",)),  # the input size
        ("000", ("COCO",)),  # the objects data: a COCO checkpoint is given
        ("000", ("fine-tuned on EmotionROI",)),  # no subset of the detector's data
        ("000", ("classifier:",)),
        ("002", ("GoogleNet-Inception",)),
        ("002", ("input size",)),
        ("002", ("FC feature of 512",)),
        ("002", ("all layers fine-tuned",)),
        ("002", ("epochs 100",)),
    ):
        assert _row(rows, seed, *words) is None, (seed, words)
    # the structural rows stay whatever the config
    assert _row(rows, "000", "L_p (eq. 10)") and _row(rows, "002", "small sets") and _row(rows, "000", "P2-P5")
    # a value that changes changes its row
    rows = _deviations(tiny_config(**{"detector.min_size": 320, "metric.embedding_dim": "null", "classifier.lr": 0.01}))
    assert _row(rows, "000", "800 px")[2].startswith("320 px")
    assert _row(rows, "002", "FC feature of 512")[2] == "no FC embedding (the pooled features)"
    assert _row(rows, "000", "classifier:")[2] == "classifier: epochs 10, lr 0.01"
    rows = _deviations(tiny_config(**{"generative.distribution_weight": 0.0, "emotions.target": "votes"}))
    assert (
        _row(rows, "001", "semantic relationships")[2] == "no label-relation term (generative.distribution_weight = 0)"
    )
    assert _row(rows, "000", "L_ed's target")[2] == "L_ed's target: votes"


def test_the_global_rows_loss_follows_the_runs_ablation_and_later_seeds_wait_for_their_results():
    config = tiny_config()
    multi = {"mode": "global", "loss": "multi", "lambda": 0.4, "test_accuracy": 0.5}
    row = _row(_deviations(config, _run([multi])), "000", "with L_cls")
    assert row[2] == "global row with L_multi at λ = 0.4"
    old = {"mode": "global", "lambda": 0.4, "test_accuracy": 0.5}  # a file from before the rows recorded their loss
    assert "every row was trained with L_multi" in _row(_deviations(config, _run([old])), "000", "with L_cls")[3]
    rows = _deviations(config, _run(later_seeds=False))
    assert {r[0] for r in rows[1:]} == {"000"}


def _brute_force(query_labels: list[int], gallery_labels: list[int], leave_one_out: bool) -> float:
    """The mean over every ranking of the gallery of ``metrics.dcg`` (itertools: each ordering once)."""
    total, count = 0.0, 0
    gallery = np.asarray(gallery_labels)
    orders = list(itertools.permutations(range(len(gallery) - (1 if leave_one_out else 0))))
    for order in orders:
        relevant, n_relevant = [], []
        for i, q in enumerate(query_labels):
            ranked = np.delete(gallery, i) if leave_one_out else gallery
            relevant.append(ranked[list(order)] == q)
            n_relevant.append(int((ranked == q).sum()))
        total += dcg(np.asarray(relevant), np.asarray(n_relevant))
        count += 1
    return total / count


@pytest.mark.parametrize(
    ("query_labels", "gallery_labels"),
    [([0, 1, 2, 1], [0, 0, 1, 1, 1, 2]), ([0, 0, 3], [1, 0, 0, 2, 2, 2, 0])],  # class 3: no relevant item, skipped
)
def test_dcg_chance_is_the_mean_dcg_over_every_ranking(query_labels, gallery_labels):
    classes = sorted(set(query_labels) | set(gallery_labels))
    counts = [[labels.count(c) for c in classes] for labels in (query_labels, gallery_labels)]
    assert dcg_chance(*counts) == pytest.approx(_brute_force(query_labels, gallery_labels, False), abs=1e-12)


def test_dcg_chance_leave_one_out_is_the_mean_dcg_over_every_ranking_of_the_others():
    labels = [0, 0, 1, 1, 1, 2]  # class 2's only image has nothing relevant: skipped
    counts = [labels.count(c) for c in (0, 1, 2)]
    expected = _brute_force(labels, labels, True)
    assert dcg_chance(counts, counts, leave_one_out=True) == pytest.approx(expected, abs=1e-12)
    assert dcg_chance(counts, counts) != pytest.approx(expected, abs=1e-3)  # the query left out matters here


def test_the_papers_fi_chance_level_agrees_with_a_seeded_monte_carlo_of_metrics_dcg():
    fi, words = paper_dcg_chance()
    gallery, queries, draws = 18170, 400, np.random.default_rng(0)
    labels = np.arange(gallery) % 8  # eight equal classes (2271 or 2272 images)
    query_labels = np.arange(queries) % 8
    relevant = np.stack([labels[draws.permutation(gallery)] == q for q in query_labels])
    n_relevant = np.asarray([(labels == q).sum() for q in query_labels])
    assert fi == pytest.approx(dcg(relevant, n_relevant), abs=0.003)
    assert "18,170 training images" in words and "3,407 test queries" in words
    assert 0.74 < fi < 0.76  # above 11 of the paper's 12 DCG values (its Table 2), below its method's 0.7802


def test_the_retrieval_table_prints_the_chance_level_from_the_runs_class_sizes():
    report = build_report(_run(), tiny_config(), "abc", "hash")
    chance = retrieval_chance(_retrieval(), PREPARE)
    # main: the 20 test / 60 train images shared 4:3:2:1 (8/6/4/2 and 24/18/12/6); small: leave-one-out on 10/8/5/1
    assert chance["main"] == pytest.approx(dcg_chance([8, 6, 4, 2], [24, 18, 12, 6]), abs=1e-12)
    assert chance["small"] == pytest.approx(_brute_force_sizes([10, 8, 5, 1]), abs=1e-12)
    rows = {r[0]: r for r in md_tables(markdown(report, lambda name: name))[RETRIEVAL]}
    assert rows[DCG_CHANCE][1:3] == [f"{chance['main']:.4f}", f"{chance['small']:.4f}"]
    assert set(rows[DCG_CHANCE][3:]) == {"—"}  # no chance level is put in the paper's columns
    table = next(t for t in report.retrieval.tables if t.title == RETRIEVAL)
    note = next(n for n in table.notes if n.startswith(DCG_CHANCE))
    assert f"{chance['main']:.4f} on this run's main set" in note
    assert "11 of the paper's 12 DCG values in its Table 2 are below that FI chance level (not: Ours 0.7802)" in note
    # class sizes that are not the measured set's give no chance level
    other = PREPARE | {"main": PREPARE["main"] | {"num_images": 99}}
    assert retrieval_chance(_retrieval(), other)["main"] is None


def _brute_force_sizes(sizes: list[int]) -> float:
    """Leave-one-out chance from the formula written out per query, the discounts summed by hand."""
    n = sum(sizes) - 1

    def ideal(k: int) -> float:
        return 1.0 + sum(1.0 / math.log2(i) for i in range(2, k + 1))

    values = [(s - 1) / n * ideal(n) / ideal(s - 1) for s in sizes for _ in range(s) if s > 1]
    return sum(values) / len(values)


def test_the_published_figures_cite_what_the_papers_say():
    pub = yaml.safe_load(PUBLISHED.read_text(encoding="utf-8"))
    emotionroi = pub["datasets"]["emotionroi"]
    assert emotionroi["classes"] == 2  # §5.1: "EmotionRoI(2 categories)"
    assert "§5.1" in emotionroi["source"] and "2 categories" in emotionroi["source"]
    sources = pub["setup"]["sources"]
    assert sources["min_size"].startswith("not stated") and "FPN [37]" in sources["min_size"]
    assert "§5.2" in sources["backbone"] and "§4.3" in sources["backbone"]
    assert "COCO" in sources["objects"] and sources["classifier"] == "§5.2"
    assert pub["fig8"]["source"] == "Figure 8 and §5.4.4 (validation set of FI)"
    pub2 = yaml.safe_load(PUBLISHED_002.read_text(encoding="utf-8"))
    setup = pub2["setup"]
    assert (setup["embedding_dim"], setup["min_per_class"], setup["split"]) == (512, 8, {"train": 0.8, "val": 0.05,
                                                                                          "test": 0.15})  # fmt: skip
    assert pub2["table2"]["dcg_others"]["SIFT"] == 0.4507 and len(pub2["table2"]["dcg_others"]) == 9


def test_a_transfer_set_run_by_the_papers_folds_gets_its_chance_level_and_no_deviation_row():
    """The fold protocol (each fold's images querying the other folds'): the chance level is the mean over the folds
    of each fold's own (class sizes apportioned, as the folds are stratified); the small-set deviation row goes."""
    folds = [{"fold": k, "test_images": 6, "train_images": 18} for k in range(4)]
    transfer = {"small": {"protocol": "fine-tuned, 4 folds", "dataset": "synthetic", "label_set": "mikels8",
                          "images": 24, "folds": folds, "accuracy": 0.5, "dcg": 0.6,
                          "leave_one_out": {"map8": 0.3, "nn": 0.2}}}  # fmt: skip
    retrieval = _retrieval() | {"transfer": transfer}
    chance = retrieval_chance(retrieval, PREPARE)["small"]
    from image_emotion.report.tables import apportion

    want = dcg_chance(apportion([10, 8, 5, 1], 6), apportion([10, 8, 5, 1], 18))
    assert chance == pytest.approx(want, abs=1e-12) and chance != pytest.approx(_brute_force_sizes([10, 8, 5, 1]))
    rows = _deviations(tiny_config(), _run(retrieval=retrieval))
    assert _row(rows, "002", "small sets", "80/20", "5 folds") is None
