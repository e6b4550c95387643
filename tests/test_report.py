"""The report stage: its tables say what the metrics files say, beside the paper's published figures (typed here
from the paper, not read from the package's data file); a banner when the data are not the paper's; the HTML
is one self-contained file with the same tables; later seeds' results get their section (seed 002's: its Table 1,
the retrieval measures, its claims and figures, beside its paper's figures; seed 001's: the one model beside the
probes and seed 000's classifier, the low-resource curve, its claims and figure, with no paper numbers); logged to
MLflow."""

from __future__ import annotations

import base64
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import pytest
from tiny import tiny_config

from image_emotion.errors import ConfigError
from image_emotion.report.render import html_page, markdown
from image_emotion.report.tables import RunFigures, build_report, read_run
from image_emotion.stages import report
from image_emotion.stages.paths import ReportPaths

# seed 000, Table 1 (8 classes, 2 classes) and Table 2 "Ours" rows, typed from the paper
PAPER_TABLE1 = {
    "global": ("60.82", "74.67"),
    "object": ("54.82", "88.44"),
    "emotional": ("59.78", "72.57"),
    "global+object": ("68.47", "81.75"),
    "global+emotional": ("75.46", "87.51"),
}
PAPER_TABLE2 = {"L_cls": ("73.05", "85.94"), "L_p": ("73.58", "86.07"), "L_multi": ("75.46", "87.51")}
SEED_001 = "Seed 001: one generative model for every emotion model"
SEED_002 = "Seed 002: deep metric learning and affective image retrieval"


def _paths(work: Path, out: Path) -> ReportPaths:
    return ReportPaths.under(work, sweep=work / "metrics/sweep.json", out_dir=out)


def md_tables(text: str) -> dict[str, list[list[str]]]:
    """Every Markdown table under its ``## `` or ``### `` heading, as rows of cells (header row first)."""
    tables: dict[str, list[list[str]]] = {}
    heading = None
    for line in text.splitlines():
        if line.startswith(("## ", "### ")):
            heading = line.split(" ", 1)[1]
        elif line.startswith("|") and not line.startswith("|---"):
            tables.setdefault(heading, []).append([c.strip() for c in line.strip("|").split(" | ")])
    return tables


class _HtmlTables(HTMLParser):
    """Cells of every ``<table>`` under the preceding ``<h2>`` or ``<h3>``, every ``src`` attribute, and the image
    sources under each heading."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.sources: list[str] = []
        self.images: dict[str, list[str]] = {}
        self._heading, self._in_h2, self._cell = None, False, None

    def handle_starttag(self, tag, attrs):
        if tag in ("h2", "h3"):
            self._in_h2, self._heading = True, ""
        elif tag == "tr":
            self.tables.setdefault(self._heading, []).append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "img":
            self.images.setdefault(self._heading, []).append(dict(attrs)["src"])
        self.sources += [v for k, v in attrs if k in ("src", "href")]

    def handle_endtag(self, tag):
        if tag in ("h2", "h3"):
            self._in_h2 = False
        elif tag in ("td", "th"):
            self.tables[self._heading][-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._in_h2:
            self._heading += data
        elif self._cell is not None:
            self._cell += data


@pytest.fixture
def written(tiny_run, mlflow_uri, tmp_path):
    """The report of the tiny run: (its result files' directory, the stage's return, Markdown, HTML)."""
    work, config = tiny_run
    result = report.run(config, _paths(work, tmp_path / "reports"))
    return work, result, (tmp_path / "reports/paper.md").read_text(), (tmp_path / "reports/paper.html").read_text()


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def test_tables_say_what_the_metrics_files_say_beside_the_papers_figures(written):
    work, _, md, _ = written
    tables = md_tables(md)
    ablation = {r["mode"]: r for r in json.loads((work / "metrics/ablation.json").read_text())}
    rows = {r[0]: r for r in tables["Table 1: features"][1:]}
    assert list(rows) == list(PAPER_TABLE1)
    for mode, (paper8, paper2) in PAPER_TABLE1.items():
        ours = ablation[mode]
        assert rows[mode][2:] == [_pct(ours["test_accuracy"]), paper8, _pct(ours["test_polarity_accuracy"]), paper2]

    classifier = json.loads((work / "metrics/classifier.json").read_text())
    rows = {r[0].split(" ")[0]: r for r in tables["Table 2: losses"][1:]}
    for key, name in (("cls", "L_cls"), ("p", "L_p"), ("multi", "L_multi")):
        acc = classifier["loss_variants_test_accuracy"][key]
        pol = classifier["loss_variants_test_polarity_accuracy"][key]
        assert rows[name][1:] == [_pct(acc), PAPER_TABLE2[name][0], _pct(pol), PAPER_TABLE2[name][1]]

    evaluation = json.loads((work / "metrics/evaluate.json").read_text())
    small = json.loads((work / "metrics/transfer/small.json").read_text())
    main_row, small_row = tables["Table 3: datasets"][1:]
    # the main set plays FI's role: FI's published "Ours" figures beside it
    assert main_row == [
        "main (synthetic)", "48", "mikels8", _pct(evaluation["test_accuracy"]), "75.46",
        _pct(classifier["binary_test_accuracy"]), "87.51",
    ]  # fmt: skip
    assert small_row[:4] == [
        "small (synthetic)",
        "40",
        "mikels8",
        f"{_pct(small['accuracy_mean'])} ± {_pct(small['accuracy_std'])}",
    ]
    assert small_row[5] == f"{_pct(small['accuracy_2class_mean'])} ± {_pct(small['accuracy_2class_std'])}"
    assert small_row[4] == small_row[6] == "—"  # no published figure for a set the paper does not have

    sweep = json.loads((work / "metrics/sweep.json").read_text())
    lam_rows = tables["Fig. 8: λ"][1:]
    assert [r[1:] for r in lam_rows] == [[_pct(r["val_accuracy"]), _pct(r["test_accuracy"])] for r in sweep]
    starred = [r[0] for r in lam_rows if "(λ*)" in r[0]]
    assert starred == [f"{classifier['best_lambda']:g} (λ*)"]


def test_claims_follow_the_run_and_the_banner_names_every_role_that_is_not_the_papers(written):
    work, result, md, _ = written
    ablation = {r["mode"]: r["test_accuracy"] for r in json.loads((work / "metrics/ablation.json").read_text())}
    claims = {r[0]: r for r in md_tables(md)["The paper's claims on this run"][1:]}
    regions = claims["global + emotional regions beat global only (Table 1, 8 classes)"]
    gain = 100 * (ablation["global+emotional"] - ablation["global"])
    tested = json.loads((work / "metrics/classifier.json").read_text())["claims"]["regions_over_global"]
    assert tested["difference"] == pytest.approx(gain, abs=1e-6)  # the bootstrap's vectors agree with Table 1's
    assert tested["low"] <= tested["difference"] <= tested["high"]
    assert regions[1] == f"{gain:+.1f} points [{tested['low']:+.1f}, {tested['high']:+.1f}]"
    assert regions[3] == "+14.64 points"
    assert regions[2] == tested["verdict"]
    assert result["regions_over_global"] == {"holds": True, "does not hold": False}.get(tested["verdict"])
    assert "**Not the paper's data.**" in md and result["comparable_with_paper"] is False
    banner = next(line for line in md.splitlines() if "Not the paper's data" in line)
    for role in ("detector (emotional regions) = synthetic (32 images)", "classifier (main) = synthetic (48 images)"):
        assert role in banner


def test_html_is_self_contained_and_carries_the_same_tables(written):
    _, _, md, page = written
    parsed = _HtmlTables()
    parsed.feed(page)
    for title, rows in md_tables(md).items():
        assert parsed.tables[title] == rows, title
    assert parsed.sources and all(s.startswith("data:image/png;base64,") for s in parsed.sources)
    for src in parsed.sources:  # every figure decodes to a PNG
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Not the paper's data." in page


def test_the_report_is_logged_to_the_pipeline_parent_run(written, mlflow_uri):
    client = mlflow.MlflowClient(mlflow_uri)
    (run,) = client.search_runs(  # this test's own store: the one report it wrote
        [client.get_experiment_by_name("image-emotion").experiment_id], "tags.stage = 'report'"
    )
    parent = run.data.tags["mlflow.parentRunId"]
    assert {a.path for a in client.list_artifacts(parent, "report")} == {"report/paper.md", "report/paper.html"}
    code = {True: 1.0, False: -1.0, None: 0.0}[written[1]["regions_over_global"]]  # inconclusive: 0
    assert run.data.metrics["claim.regions_over_global"] == code


def test_later_seeds_sections_wait_for_their_results(written):
    _, result, md, page = written  # the tiny run stops at evaluate: neither retrieval.json nor generative.json
    for title in (SEED_002, SEED_001):
        assert f"## {title}\n\nNot run in this pipeline yet." in md, title
        assert f"<h2>{title}</h2><p>Not run in this pipeline yet." in page, title
    assert not {"one_model_vs_probes", "low_resource_vs_probe_fewest_shots", "sv_over_softmax_map8"} & set(result)


def test_a_missing_results_file_is_named(tiny_run, tmp_path):
    work, _ = tiny_run
    shutil.copytree(work / "metrics", tmp_path / "metrics")
    (tmp_path / "metrics/evaluate.json").unlink()
    with pytest.raises(ConfigError, match=r"evaluate\.json: not found; .*dvc repro evaluate"):
        read_run(_paths(tmp_path, tmp_path / "out"))


def test_no_banner_when_every_role_is_the_papers_dataset():
    config = tiny_config(
        **{
            "data.dataset": "fi",
            "detector_data.dataset": "emotionroi",
            "transfer.sets": "[{dataset: iaps, name: iaps, root: x}, {dataset: abstract, name: abstract, root: y}]",
        }
    )
    run = RunFigures(
        prepare={"main": {"num_images": 23164}, "detector": {"num_images": 1980}, "iaps": {"num_images": 395}},
        detector={},
        classifier={"loss_variants_test_accuracy": {"cls": 0.70, "multi": 0.72}, "best_lambda": 0.4},
        sweep=[],
        ablation=[{"mode": "global", "test_accuracy": 0.6, "lambda": 0.4}],
        transfer={"iaps": {"accuracy_mean": 0.8, "accuracy_std": 0.02, "label_set": "mikels8"}},
        evaluation={"dataset": "fi", "label_set": "mikels8", "test_accuracy": 0.72},
    )
    built = build_report(run, config, "abc", "hash")
    assert built.banner == []
    assert [r[5] for r in built.datasets.rows] == ["yes"] * 4
    assert built.datasets.rows[2][3:5] == ["IAPSsubset", "395"]
    claims = {c.key: (c.ours, c.holds) for c in built.claims}
    assert claims["multi_over_cls"] == (2.0, True) and claims["lambda_inside"] == (0.4, True)
    assert claims["regions_over_global"] == (None, None)  # no global+emotional row: nothing claimed
    iaps_row = built.tables[2].rows[1]
    assert iaps_row[3:5] == ["80.0 ± 2.0", "84.71"]


# ---------------------------------------------------------------------------------------------- seed 002

T1_002, RETRIEVAL_002, CLAIMS_002 = (
    "Table 1 (seed 002)",
    "Retrieval (Table 2 protocol)",
    "The paper's claims on this run (seed 002)",
)
# seed 002 (Yang et al. AAAI-18), Table 1 on FI: (accuracy %, mAP8, mAP2) by row, in the paper's order, typed from
# the paper; and Table 2's "Ours" row (NN, FT, ST, mAP8, mAP2, DCG, ANMRR)
PAPER_002_TABLE1 = {
    "softmax": ("65.18", "0.3583", "0.6773"),
    "centre": ("63.14", "0.3695", "0.7254"),
    "triplet_random": ("63.46", "0.3712", "0.7278"),
    "softmax_triplet_random": ("64.08", "0.4016", "0.7456"),
    "softmax_triplet_hard": ("64.58", "0.4228", "0.7532"),
    "softmax_triplet_semihard": ("65.35", "0.4426", "0.7592"),
    "sentiment_fc": ("65.84", "0.4575", "0.7913"),
    "sentiment_sv": ("67.64", "0.4885", "0.8098"),
}
PAPER_002_OURS = {
    "NN": "0.6023", "FT": "0.4834", "ST": "0.6978", "mAP8": "0.4885", "mAP2": "0.8098", "DCG": "0.7802",
    "ANMRR (lower is better)": "0.3135",
}  # fmt: skip
MEASURES = ("nn", "ft", "st", "map8", "map2", "dcg", "anmrr")


def _measures(base: float, **extra) -> dict:
    """Seven retrieval measures, each different (base + 0.01 * its position), and ``extra``."""
    return {m: round(base + 0.01 * i, 4) for i, m in enumerate(MEASURES)} | extra


def _ablation_row(row: str, map8: float, *, seeds=(0,), std: float | None = None, **extra) -> dict:
    """One ablation row of metrics/retrieval.json: accuracy and mAP2 derived from mAP8; ``*_std`` None for one seed."""
    out = {"row": row, "label": row, "feature": "SV" if row == "sentiment_sv" else "FC", "seeds": list(seeds)}
    for i, m in enumerate(("accuracy", *MEASURES)):
        out[m], out[f"{m}_std"] = round(map8 + 0.1 * i, 4), std
    out["map8"] = map8
    return out | extra


def _retrieval(ablation: list[dict], dataset: str = "synthetic", transfer: dict | None = None) -> dict:
    """A hand-written metrics/retrieval.json (the retrieve stage's schema)."""
    return {
        "dataset": dataset, "label_set": "mikels8", "backbone": "efficientnet_lite0", "image_size": 96,
        "feature": "sentiment", "dimension": 680, "index_kind": "exact", "gallery_size": 640, "collection_size": 800,
        "main": {"protocol": "test queries against the train split", "accuracy": 0.4125, "num_queries": 120}
        | _measures(0.5),
        "transfer": {"small": {"protocol": "leave-one-out", "dataset": dataset, "label_set": "mikels8", "images": 240,
                               "num_queries": 240} | _measures(0.3)} if transfer is None else transfer,
        "ablation": ablation,
    }  # fmt: skip


def _seed_002_report(retrieval: dict, tmp_path: Path | None = None):
    """The report of a run whose seed 000 files say little (not under test here) and whose retrieval.json is given."""
    run = RunFigures(
        prepare={}, detector={}, classifier={}, sweep=[], ablation=[], transfer={}, evaluation={},
        extras={"retrieval": retrieval},
        plots=tmp_path / "plots" if tmp_path else None,
        retrieval_plots=tmp_path / "plots_retrieval" if tmp_path else None,
    )  # fmt: skip
    return build_report(run, tiny_config(), "abc", "hash")


def _md(built) -> str:
    return markdown(built, lambda name: f"../plots/{name}")


def test_seed_002_table1_sets_this_runs_rows_beside_the_papers_in_its_order():
    ablation = [  # softmax over three seeds (std given), the SV row over one seed (std null), the others missing
        _ablation_row("sentiment_sv", 0.3, accuracy=0.4, map2=0.6),
        _ablation_row("softmax", 0.25, seeds=(0, 1, 2), std=0.0123, accuracy=0.37, accuracy_std=0.011, map2=0.51),
    ]
    rows = md_tables(_md(_seed_002_report(_retrieval(ablation))))[T1_002]
    assert rows[0][4:] == ["accuracy % (ours)", "accuracy % (paper)", "mAP8 (ours)", "mAP8 (paper)", "mAP2 (ours)",
                           "mAP2 (paper)"]  # fmt: skip
    body = {r[0]: r for r in rows[1:]}
    assert [r[0] for r in rows[1:]] == list(PAPER_002_TABLE1)  # the paper's order, whatever the file's
    for key, (acc, map8, map2) in PAPER_002_TABLE1.items():
        assert [body[key][5], body[key][7], body[key][9]] == [acc, map8, map2], key
    assert body["softmax"][2:] == [
        "FC", "0, 1, 2", "37.0 ± 1.1", "65.18", "0.2500 ± 0.0123", "0.3583", "0.5100 ± 0.0123", "0.6773",
    ]  # fmt: skip
    assert body["sentiment_sv"][2:] == ["SV", "0", "40.0", "67.64", "0.3000", "0.4885", "0.6000", "0.8098"]
    for key in set(PAPER_002_TABLE1) - {"softmax", "sentiment_sv"}:  # not measured by this run
        assert [body[key][i] for i in (3, 4, 6, 8)] == ["—"] * 4, key


def test_the_sv_rows_accuracy_is_left_blank_with_its_reason_when_the_backbone_was_frozen():
    ablation = [
        _ablation_row("sentiment_sv", 0.3, accuracy=0.4, map2=0.6, backbone_frozen=True),
        _ablation_row("softmax", 0.25, accuracy=0.37, map2=0.51, backbone_frozen=True),
    ]
    built = _seed_002_report(_retrieval(ablation))
    body = {r[0]: r for r in md_tables(_md(built))[T1_002][1:]}
    assert body["sentiment_sv"][4] == "—" and body["sentiment_sv"][6] == "0.3000"  # mAP is the SV's own
    assert body["softmax"][4] == "37.0"  # a row whose classifier is what it trains keeps its accuracy
    table = next(t for t in built.retrieval.tables if t.title == T1_002)
    assert any(n.startswith("sentiment_sv: accuracy left blank") and "1-ω" in n for n in table.notes)


def test_seed_002_retrieval_measures_of_each_set_beside_the_papers_fi_row():
    built = _seed_002_report(_retrieval([]))
    rows = md_tables(_md(built))[RETRIEVAL_002]
    assert rows[0][:3] == ["measure", "main: synthetic (ours)", "small: synthetic (ours)"]
    ours_col = rows[0].index("paper, FI: Ours")
    body = {r[0]: r for r in rows[1:]}
    chance = "DCG of a random ranking (chance)"  # after DCG; the run's prepare files are absent here: no value
    assert list(body) == ["accuracy (%)", *list(PAPER_002_OURS)[:6], chance, "ANMRR (lower is better)"]
    assert body[chance][1:] == ["—"] * (len(rows[0]) - 1)
    assert body["accuracy (%)"][1:3] == ["41.2", "—"] and body["accuracy (%)"][ours_col] == "67.64"
    for i, name in enumerate(PAPER_002_OURS):  # each measure in its own row (the fixture's values all differ)
        assert body[name][1:3] == [f"{0.5 + 0.01 * i:.4f}", f"{0.3 + 0.01 * i:.4f}"], name
        assert body[name][ours_col] == PAPER_002_OURS[name], name
    # no transfer set: the main set alone beside the paper
    rows = md_tables(_md(_seed_002_report(_retrieval([], transfer={}))))[RETRIEVAL_002]
    assert rows[0][:2] == ["measure", "main: synthetic (ours)"] and rows[0][2].startswith("paper")


def test_seed_002_header_names_the_setup_and_says_when_the_data_are_not_fi():
    md = _md(_seed_002_report(_retrieval([])))
    section = md[md.index(f"## {SEED_002}") :]
    header = next(line for line in section.splitlines() if line.startswith("- **this run**"))
    for part in ("synthetic", "efficientnet_lite0", "96 px", "sentiment", "exact index"):
        assert part in header, part
    assert "not comparable with the paper's" in section
    fi = _md(_seed_002_report(_retrieval([], dataset="fi")))
    fi_section = fi[fi.index(f"## {SEED_002}") : fi.index("## Seed 001")]
    assert "not comparable with the paper's" not in fi and "Not run in this pipeline yet" not in fi_section


@pytest.mark.parametrize(
    ("sv", "softmax", "semihard", "expected"),
    [
        (0.30, 0.25, 0.40, {"sv_over_softmax_map8": (0.05, True), "senti_over_triplet_map8": (-0.1, False)}),
        (0.20, 0.25, 0.10, {"sv_over_softmax_map8": (-0.05, False), "senti_over_triplet_map8": (0.1, True)}),
    ],
)
def test_seed_002_claims_hold_or_fail_with_the_runs_map8(sv, softmax, semihard, expected):
    ablation = [
        _ablation_row("softmax", softmax),
        _ablation_row("softmax_triplet_semihard", semihard),
        _ablation_row("sentiment_sv", sv),
    ]
    built = _seed_002_report(_retrieval(ablation))
    keys = [c.key for c in built.claims]  # seed 000's claims first, unchanged; then seed 002's
    assert keys == ["regions_over_global", "emotional_over_object", "multi_over_cls", "lambda_inside", *expected]
    got = {c.key: (c.ours, c.holds) for c in built.claims if c.key in expected}
    assert got == {k: (pytest.approx(diff), holds) for k, (diff, holds) in expected.items()}
    md = _md(built)
    assert len(md_tables(md)["The paper's claims on this run"]) == 1 + 4  # seed 002's are not in seed 000's table
    rows = md_tables(md)[CLAIMS_002][1:]
    verdicts = ["holds" if expected[k][1] else "does not hold" for k in expected]
    assert [r[3] for r in rows] == verdicts
    assert rows[0][1:3] == [f"{sv:.4f} vs {softmax:.4f}", f"{sv - softmax:+.4f}"]
    assert rows[0][4] == "0.4885 vs 0.3583 (+0.1302)" and rows[1][4] == "0.4885 vs 0.4426 (+0.0459)"


def test_seed_002_a_claim_whose_rows_are_missing_is_not_measured():
    built = _seed_002_report(_retrieval([_ablation_row("softmax", 0.25), _ablation_row("sentiment_sv", 0.3)]))
    got = {c.key: (c.ours, c.holds) for c in built.claims if c.seed == "002"}
    assert got == {"sv_over_softmax_map8": (pytest.approx(0.05), True), "senti_over_triplet_map8": (None, None)}
    rows = {r[0]: r for r in md_tables(_md(built))[CLAIMS_002][1:]}
    missing = next(r for text, r in rows.items() if "semi-hard" in text)
    assert missing[1:4] == ["—", "—", "not measured"]
    empty = _seed_002_report(_retrieval([]))  # no ablation at all
    assert [(c.ours, c.holds) for c in empty.claims if c.seed == "002"] == [(None, None), (None, None)]
    assert all(r[4] == "—" for r in md_tables(_md(empty))[T1_002][1:])


def _png(path: Path, colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 4), colour).save(path)
    return path.read_bytes()


def test_seed_002_section_in_the_stages_report_with_its_figures(tiny_run, mlflow_uri, tmp_path):
    work, config = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(work / "metrics", copy / "metrics")
    shutil.copytree(work / "plots", copy / "plots")
    ablation = [_ablation_row("softmax", 0.25), _ablation_row("sentiment_sv", 0.3)]
    (copy / "metrics/retrieval.json").write_text(json.dumps(_retrieval(ablation)))
    tsne = _png(copy / "plots_retrieval/tsne.png", (200, 30, 30))  # queries.png not written
    out = tmp_path / "out"
    result = report.run(config, _paths(copy, out))
    md, page = (out / "paper.md").read_text(), (out / "paper.html").read_text()

    assert result["sv_over_softmax_map8"] is True and result["senti_over_triplet_map8"] is None
    client = mlflow.MlflowClient(mlflow_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("image-emotion").experiment_id],
        "tags.stage = 'report'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    assert runs[0].data.metrics["claim.sv_over_softmax_map8"] == 1.0
    assert "claim.senti_over_triplet_map8" not in runs[0].data.metrics

    tables = md_tables(md)
    assert f"## {SEED_002}\n\nNot run" not in md and tables[T1_002][1][0] == "softmax"
    # Markdown: the figure linked relative to the report; the missing one said so
    section = md[md.index(f"## {SEED_002}") :]
    links = [line.split("](", 1)[1].rstrip(")") for line in section.splitlines() if line.startswith("![")]
    assert len(links) == 1 and (out / links[0]).resolve() == (copy / "plots_retrieval/tsne.png").resolve()
    assert "### Fig. 5: queries and their top retrieved images\n\n(not written)" in section
    # HTML: the same tables, the figure inlined under its heading
    parsed = _HtmlTables()
    parsed.feed(page)
    for title in (T1_002, RETRIEVAL_002, CLAIMS_002):
        assert parsed.tables[title] == tables[title], title
    fig4 = next(h for h in parsed.images if h.startswith("Fig. 4"))
    assert [base64.b64decode(s.split(",", 1)[1]) for s in parsed.images[fig4]] == [tsne]
    assert not any(h.startswith("Fig. 5") for h in parsed.images)

    # a report that travels alone (kfp): the Markdown inlines the figure too
    report.write_report(config, _paths(copy, tmp_path / "alone"), inline_figures=True)
    alone = (tmp_path / "alone/paper.md").read_text()
    srcs = [line.split("](", 1)[1].rstrip(")") for line in alone[alone.index(SEED_002) :].splitlines() if "![" in line]
    assert [base64.b64decode(s.split(",", 1)[1]) for s in srcs] == [tsne]


def test_seed_002_figures_inlined_in_html_when_both_exist(tmp_path):
    (tmp_path / "plots").mkdir()
    pngs = [_png(tmp_path / "plots_retrieval" / n, c) for n, c in (("tsne.png", (1, 2, 3)), ("queries.png", (4, 5, 6)))]
    built = _seed_002_report(_retrieval([]), tmp_path)
    parsed = _HtmlTables()
    parsed.feed(html_page(built, tmp_path / "plots"))
    inlined = [
        base64.b64decode(s.split(",", 1)[1])
        for h, ss in parsed.images.items()
        for s in ss
        if h.startswith(("Fig. 4", "Fig. 5"))
    ]
    assert inlined == pngs
    assert "../plots_retrieval/tsne.png" in _md(built) and "../plots_retrieval/queries.png" in _md(built)


# ---------------------------------------------------------------------------------------------- seed 001

ONE_MODEL_001, LOW_001, CLAIMS_001 = (
    "One model, every emotion model (seed 001)",
    "Low resource (seed 001)",
    "The paper's claims on this run (seed 001)",
)
GENERATIVE_FIG = "Low-resource curve: test accuracy by training images a class, the one model and the probes"
TRAIN_A_CLASS = {"mikels8": 8, "binary": 2, "ekman6": 6}  # classes: training images at k shots = k x this
# probes: each emotion model's separate probe; the one model's accuracies are 0.55 (mikels8), 0.75 (binary),
# 0.40 (ekman6): the first ties nothing, binary loses to its probe by 3 points, ekman6 ties its probe
PROBES_WIN_ONE = {"mikels8": 0.50, "binary": 0.78, "ekman6": 0.40}
PROBES_ALL_BELOW_OR_EQUAL = {"mikels8": 0.50, "binary": 0.70, "ekman6": 0.40}


def _lr(shots: int, model: str, gen: float, probe: float | None, gen_std=None, probe_std=None, seeds=(0,)) -> dict:
    """One row of generative.json's low_resource."""
    return {
        "shots": shots, "emotion_model": model, "train_images": shots * TRAIN_A_CLASS[model], "generative": gen,
        "generative_std": gen_std, "probe": probe, "probe_std": probe_std, "seeds": list(seeds),
    }  # fmt: skip


def _scores(accuracy: float, n: int, generated: float, unconstrained: float, polarity: float | None = None) -> dict:
    out = {
        "accuracy": accuracy, "per_class_accuracy": {}, "confusion_matrix": [], "num_samples": n,
        "generated_valid": 1.0, "generated_accuracy": generated, "generation_agrees_with_ranking": 0.9,
        "unconstrained_valid": unconstrained, "kl_to_target": 1.1,
    }  # fmt: skip
    return out | ({} if polarity is None else {"polarity_accuracy": polarity})


def _generative(probes: dict | None = None, low_resource: list | None = None, dataset: str = "synthetic") -> dict:
    """A hand-written metrics/generative.json (evaluate_generative's schema)."""
    probes = PROBES_WIN_ONE if probes is None else probes
    return {
        "dataset": dataset, "label_set": "mikels8", "accuracy": 0.55,
        "emotion_models": {
            "mikels8": _scores(0.55, 120, 0.5333, 0.80, polarity=0.8),
            "binary": _scores(0.75, 120, 0.7417, 0.95),
            "ekman6": _scores(0.40, 60, 0.3833, 0.85, polarity=0.7),
        },
        "probe_accuracy": probes,
        "decoding": {"valid": 1.0, "unconstrained_valid": 0.8},
        "low_resource": [
            _lr(1, "mikels8", 0.30, 0.25, gen_std=0.025, probe_std=0.011, seeds=(0, 1, 2)),
            _lr(1, "binary", 0.55, 0.60, gen_std=0.05, probe_std=0.02, seeds=(0, 1, 2)),
            _lr(1, "ekman6", 0.20, None, gen_std=0.01, seeds=(0, 1, 2)),
            _lr(5, "mikels8", 0.35, 0.45, gen_std=0.02, probe_std=0.03, seeds=(0, 1, 2)),
            _lr(5, "binary", 0.65, 0.65, gen_std=0.01, probe_std=0.01, seeds=(0, 1, 2)),
            _lr(5, "ekman6", 0.25, 0.22, gen_std=0.02, probe_std=0.04, seeds=(0, 1, 2)),
        ] if low_resource is None else low_resource,
        "sets": {"main": {"dataset": dataset, "label_set": "mikels8", "images": 800},
                 "ekman": {"dataset": dataset, "label_set": "ekman6", "images": 400}},
        "encoder": "efficientnet_lite0", "decoder": "small BART (d_model 128, 2+2 layers)",
    }  # fmt: skip


EVALUATION = {"dataset": "synthetic", "label_set": "mikels8", "test_accuracy": 0.48, "binary_test_accuracy": 0.71}


def _seed_001_report(generative: dict, evaluation: dict | None = None, tmp_path: Path | None = None):
    """The report of a run whose seed 000 files say little but evaluate.json, and whose generative.json is given."""
    run = RunFigures(
        prepare={}, detector={}, classifier={}, sweep=[], ablation=[], transfer={},
        evaluation=EVALUATION if evaluation is None else evaluation,
        extras={"generative": generative},
        plots=tmp_path / "plots" if tmp_path else None,
        generative_plots=tmp_path / "plots_generative" if tmp_path else None,
    )  # fmt: skip
    return build_report(run, tiny_config(), "abc", "hash")


def test_seed_001_one_model_table_sets_the_probes_and_seed_000s_classifier_beside_the_one_model():
    md = _md(_seed_001_report(_generative()))
    rows = md_tables(md)[ONE_MODEL_001]
    assert rows[0] == [
        "emotion model", "test images", "one model", "separate probe", "seed 000 classifier", "constrained valid",
        "unconstrained valid", "generation accuracy",
    ]  # fmt: skip
    assert rows[1:] == [  # the classifier: evaluate.json's test_accuracy (mikels8), binary_test_accuracy (binary)
        ["mikels8 (main)", "120", "55.0", "50.0", "48.0", "100.0", "80.0", "53.3"],
        ["binary", "120", "75.0", "78.0", "71.0", "100.0", "95.0", "74.2"],
        ["ekman6", "60", "40.0", "40.0", "—", "100.0", "85.0", "38.3"],
    ]
    section = md[md.index(f"## {SEED_001}") :]
    assert f"## {SEED_001}\n\nNot run" not in md
    header = next(line for line in section.splitlines() if line.startswith("- **this run**"))
    for part in ("synthetic (mikels8, 800 images)", "ekman: synthetic (ekman6, 400 images)",
                 "Encoder efficientnet_lite0 (frozen)", "decoder small BART (d_model 128, 2+2 layers)",
                 "100.0% constrained, 80.0% unconstrained"):  # fmt: skip
        assert part in header, part
    note = next(line for line in section.splitlines() if line.startswith("> "))
    assert "abstract only" in note and "no numbers" in note


@pytest.mark.parametrize(
    ("evaluation", "classifier_column"),
    [
        # seed 000's classifier on another emotion model than the one model's main one: its 8-class figure applies
        # to no row (ekman6 is not the one model's main emotion model either); its binary head still does
        ({"dataset": "synthetic", "label_set": "ekman6", "test_accuracy": 0.48, "binary_test_accuracy": 0.71},
         ["—", "71.0", "—"]),
        # another main set: nothing of seed 000 applies
        ({"dataset": "other", "label_set": "mikels8", "test_accuracy": 0.48, "binary_test_accuracy": 0.71},
         ["—", "—", "—"]),
    ],
)  # fmt: skip
def test_seed_001_classifier_column_only_where_it_answers_the_same_emotion_model_on_the_same_set(
    evaluation, classifier_column
):
    rows = md_tables(_md(_seed_001_report(_generative(), evaluation)))[ONE_MODEL_001][1:]
    assert [r[4] for r in rows] == classifier_column


def test_seed_001_low_resource_table_one_row_a_k_the_one_model_beside_the_probe():
    built = _seed_001_report(_generative())
    table = next(t for t in built.generative.tables if t.title == LOW_001)
    rows = md_tables(_md(built))[LOW_001]
    assert rows[0] == [
        "k (images a class)", "mikels8: one model", "mikels8: probe", "binary: one model", "binary: probe",
        "ekman6: one model", "ekman6: probe",
    ]  # fmt: skip
    assert rows[1:] == [
        ["1", "30.0 ± 2.5", "25.0 ± 1.1", "55.0 ± 5.0", "60.0 ± 2.0", "20.0 ± 1.0", "—"],
        ["5", "35.0 ± 2.0", "45.0 ± 3.0", "65.0 ± 1.0", "65.0 ± 1.0", "25.0 ± 2.0", "22.0 ± 4.0"],
    ]
    assert table.notes[:2] == [
        "k = 1: training images 8 (mikels8), 2 (binary), 6 (ekman6).",
        "k = 5: training images 40 (mikels8), 10 (binary), 30 (ekman6).",
    ]
    # one seed (no std): the figure alone
    one_seed = _seed_001_report(_generative(low_resource=[_lr(10, "mikels8", 0.4, 0.375)]))
    assert md_tables(_md(one_seed))[LOW_001][1:] == [["10", "40.0", "37.5"]]
    # no curve: an empty table that says so
    none = _seed_001_report(_generative(low_resource=[]))
    table = next(t for t in none.generative.tables if t.title == LOW_001)
    assert table.rows == [] and "no low-resource curve" in table.notes[-1]


@pytest.mark.parametrize(
    ("probes", "low_resource", "expected", "cells"),
    [
        (  # binary's probe beats the one model by 3 points; at k = 1 (listed after k = 5) the one model wins
            PROBES_WIN_ONE,
            [_lr(5, "mikels8", 0.35, 0.45), _lr(1, "binary", 0.55, 0.60), _lr(1, "mikels8", 0.30, 0.25)],
            {"one_model_vs_probes": (-3.0, False), "low_resource_vs_probe_fewest_shots": (5.0, True)},
            ["mikels8 55.0 vs 50.0; binary 75.0 vs 78.0; ekman6 40.0 vs 40.0", "-3.0 points (smallest)",
             "k = 1 (mikels8): 30.0 vs 25.0", "+5.0 points"],
        ),
        (  # no probe above the one model (ekman6 ties: at least as accurate); at k = 1 the probe wins by 2 points
            PROBES_ALL_BELOW_OR_EQUAL,
            [_lr(1, "mikels8", 0.20, 0.22), _lr(1, "binary", 0.7, 0.6), _lr(5, "mikels8", 0.5, 0.4)],
            {"one_model_vs_probes": (0.0, True), "low_resource_vs_probe_fewest_shots": (-2.0, False)},
            ["mikels8 55.0 vs 50.0; binary 75.0 vs 70.0; ekman6 40.0 vs 40.0", "+0.0 points (smallest)",
             "k = 1 (mikels8): 20.0 vs 22.0", "-2.0 points"],
        ),
        (  # ties everywhere: at least as accurate, both hold
            {"mikels8": 0.55, "binary": 0.75, "ekman6": 0.40},
            [_lr(1, "mikels8", 0.30, 0.30), _lr(5, "mikels8", 0.2, 0.4)],
            {"one_model_vs_probes": (0.0, True), "low_resource_vs_probe_fewest_shots": (0.0, True)},
            ["mikels8 55.0 vs 55.0; binary 75.0 vs 75.0; ekman6 40.0 vs 40.0", "+0.0 points (smallest)",
             "k = 1 (mikels8): 30.0 vs 30.0", "+0.0 points"],
        ),
    ],
)  # fmt: skip
def test_seed_001_claims_hold_or_fail_with_the_runs_accuracies(probes, low_resource, expected, cells):
    built = _seed_001_report(_generative(probes, low_resource))
    keys = [c.key for c in built.claims]  # seed 000's claims first, unchanged; then seed 001's
    assert keys == ["regions_over_global", "emotional_over_object", "multi_over_cls", "lambda_inside", *expected]
    got = {c.key: (c.ours, c.holds, c.paper, c.seed) for c in built.claims if c.key in expected}
    assert got == {k: (pytest.approx(d), holds, None, "001") for k, (d, holds) in expected.items()}
    rows = md_tables(_md(built))[CLAIMS_001]
    assert rows[0] == ["claim", "this run", "difference", "verdict", "the paper"]
    verdicts = ["holds" if holds else "does not hold" for _, holds in expected.values()]
    assert [r[3] for r in rows[1:]] == verdicts
    assert [rows[1][1], rows[1][2], rows[2][1], rows[2][2]] == cells
    assert all(r[4] == "claimed in the abstract; no number published" for r in rows[1:])
    assert len(md_tables(_md(built))["The paper's claims on this run"]) == 1 + 4  # not in seed 000's table


def test_seed_001_a_claim_without_its_numbers_is_not_measured():
    # ekman6 has no probe and the others tie or lose nothing: "every emotion model" cannot be said
    no_probe = _generative({"mikels8": 0.5, "binary": 0.7}, low_resource=[_lr(1, "mikels8", 0.3, None)])
    got = {c.key: (c.ours, c.holds) for c in _seed_001_report(no_probe).claims if c.seed == "001"}
    assert got == {
        "one_model_vs_probes": (pytest.approx(5.0), None),
        "low_resource_vs_probe_fewest_shots": (None, None),
    }
    rows = md_tables(_md(_seed_001_report(no_probe)))[CLAIMS_001][1:]
    assert [r[3] for r in rows] == ["not measured", "not measured"]
    assert rows[1][1:3] == ["k = 1 (mikels8): 30.0 vs —", "—"]
    # but one emotion model whose probe wins is enough to fail it
    fails = _generative({"mikels8": 0.6, "binary": 0.7}, low_resource=[])
    got = {c.key: (c.ours, c.holds) for c in _seed_001_report(fails).claims if c.seed == "001"}
    assert got == {
        "one_model_vs_probes": (pytest.approx(-5.0), False),
        "low_resource_vs_probe_fewest_shots": (None, None),
    }
    # a generative.json of an older stage (no emotion models, no curve): a section, nothing measured
    old = _seed_001_report({"accuracy": 0.3125, "decoding": {"valid": 1.0}})
    assert [(c.ours, c.holds) for c in old.claims if c.seed == "001"] == [(None, None), (None, None)]
    assert md_tables(_md(old))[ONE_MODEL_001][1:] == []


def test_seed_001_summary_says_which_is_higher_per_row_from_the_numbers():
    summary = _seed_001_report(_generative()).generative.summary
    assert summary[:5] == [
        "mikels8: the one model is higher than the probe (55.0 vs 50.0, +5.0 points); "
        "the one model is higher than seed 000's classifier (55.0 vs 48.0, +7.0 points).",
        "binary: the probe is higher than the one model (78.0 vs 75.0, +3.0 points); "
        "the one model is higher than seed 000's classifier (75.0 vs 71.0, +4.0 points).",
        "ekman6: the one model and the probe are equal (40.0).",
        "Low resource, k = 1: the one model is higher on mikels8; the probe is higher on binary.",
        "Low resource, k = 5: the one model is higher on ekman6; the probe is higher on mikels8; "
        "they are equal on binary.",
    ]
    assert "encoder (efficientnet_lite0) is frozen" in summary[5]
    assert "small BART (d_model 128, 2+2 layers)" in summary[5]
    # the classifier above the one model: said so
    higher = _seed_001_report(_generative(), EVALUATION | {"test_accuracy": 0.6}).generative.summary
    assert higher[0].endswith("seed 000's classifier is higher than the one model (60.0 vs 55.0, +5.0 points).")
    md = _md(_seed_001_report(_generative()))
    assert "### What this run shows\n\n- mikels8: the one model is higher than the probe" in md


def test_seed_001_section_in_the_stages_report_with_its_figure(tiny_run, mlflow_uri, tmp_path):
    work, config = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(work / "metrics", copy / "metrics")
    shutil.copytree(work / "plots", copy / "plots")
    evaluation = json.loads((work / "metrics/evaluate.json").read_text())
    # one model above binary's probe, below mikels8's: the first claim fails; at k = 1 it wins: the second holds
    probes = {"mikels8": 0.6, "binary": 0.7, "ekman6": 0.35}
    generative = _generative(probes, dataset=evaluation["dataset"])
    (copy / "metrics/generative.json").write_text(json.dumps(generative))
    png = _png(copy / "plots_generative/low_resource.png", (30, 160, 60))
    out = tmp_path / "out"
    result = report.run(config, _paths(copy, out))
    md, page = (out / "paper.md").read_text(), (out / "paper.html").read_text()

    assert result["one_model_vs_probes"] is False and result["low_resource_vs_probe_fewest_shots"] is True
    client = mlflow.MlflowClient(mlflow_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("image-emotion").experiment_id],
        "tags.stage = 'report'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    assert runs[0].data.metrics["claim.one_model_vs_probes"] == -1.0  # does not hold (inconclusive: 0)
    assert runs[0].data.metrics["claim.low_resource_vs_probe_fewest_shots"] == 1.0

    tables = md_tables(md)
    rows = {r[0]: r for r in tables[ONE_MODEL_001][1:]}
    assert evaluation["label_set"] == "mikels8"  # the tiny run's classifier answers the one model's main emotion model
    assert rows["mikels8 (main)"][3:5] == ["60.0", _pct(evaluation["test_accuracy"])]
    assert rows["binary"][3:5] == ["70.0", _pct(evaluation["binary_test_accuracy"])]
    assert rows["ekman6"][3:5] == ["35.0", "—"]
    # Markdown: the figure linked relative to the report
    section = md[md.index(f"## {SEED_001}") :]
    links = [line.split("](", 1)[1].rstrip(")") for line in section.splitlines() if line.startswith("![")]
    assert len(links) == 1 and (out / links[0]).resolve() == (copy / "plots_generative/low_resource.png").resolve()
    # HTML: the same tables, the figure inlined under its heading
    parsed = _HtmlTables()
    parsed.feed(page)
    for title in (ONE_MODEL_001, LOW_001, CLAIMS_001):
        assert parsed.tables[title] == tables[title], title
    fig = next(h for h in parsed.images if h.startswith("Low-resource curve"))
    assert [base64.b64decode(s.split(",", 1)[1]) for s in parsed.images[fig]] == [png]

    # a report that travels alone (kfp): the Markdown inlines the figure too
    report.write_report(config, _paths(copy, tmp_path / "alone"), inline_figures=True)
    alone = (tmp_path / "alone/paper.md").read_text()
    srcs = [line.split("](", 1)[1].rstrip(")") for line in alone[alone.index(SEED_001) :].splitlines() if "![" in line]
    assert [base64.b64decode(s.split(",", 1)[1]) for s in srcs] == [png]

    # the figure not written: said so, in both
    (copy / "plots_generative/low_resource.png").unlink()
    report.run(config, _paths(copy, tmp_path / "nofig"))
    md = (tmp_path / "nofig/paper.md").read_text()
    assert f"### {GENERATIVE_FIG}\n\n(not written)" in md
    assert f"<h3>{GENERATIVE_FIG}</h3><p>(not written)</p>" in (tmp_path / "nofig/paper.html").read_text()
