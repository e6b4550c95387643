"""The report stage: its tables say what the metrics files say, beside the paper's published figures (typed here
from the paper, not read from the package's data file); a banner when the data are not the paper's; the HTML
is one self-contained file with the same tables; later seeds' results get their section; logged to MLflow."""

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


def _paths(work: Path, out: Path) -> ReportPaths:
    m = work / "metrics"
    return ReportPaths(
        m / "prepare", m / "detector.json", m / "classifier.json", m / "sweep.json", m / "ablation.json",
        m / "transfer", m / "evaluate.json", m, work / "plots", out,
    )  # fmt: skip


def md_tables(text: str) -> dict[str, list[list[str]]]:
    """Every Markdown table under its ``## `` heading, as rows of cells (header row first)."""
    tables: dict[str, list[list[str]]] = {}
    heading = None
    for line in text.splitlines():
        if line.startswith("## "):
            heading = line[3:]
        elif line.startswith("|") and not line.startswith("|---"):
            tables.setdefault(heading, []).append([c.strip() for c in line.strip("|").split(" | ")])
    return tables


class _HtmlTables(HTMLParser):
    """Cells of every ``<table>`` under the preceding ``<h2>``, and every ``src`` attribute."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.sources: list[str] = []
        self._heading, self._in_h2, self._cell = None, False, None

    def handle_starttag(self, tag, attrs):
        if tag == "h2":
            self._in_h2, self._heading = True, ""
        elif tag == "tr":
            self.tables.setdefault(self._heading, []).append([])
        elif tag in ("td", "th"):
            self._cell = ""
        self.sources += [v for k, v in attrs if k in ("src", "href")]

    def handle_endtag(self, tag):
        if tag == "h2":
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
    assert regions[1] == f"{gain:+.1f} points" and regions[3] == "+14.64 points"
    assert regions[2] == ("holds" if gain > 0 else "does not hold") and result["regions_over_global"] == (gain > 0)
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
    runs = client.search_runs(
        [client.get_experiment_by_name("image-emotion").experiment_id], "tags.stage = 'report'", max_results=5
    )
    parent = runs[0].data.tags["mlflow.parentRunId"]
    assert {a.path for a in client.list_artifacts(parent, "report")} == {"report/paper.md", "report/paper.html"}
    assert runs[0].data.metrics["claim.regions_over_global"] == float(written[1]["regions_over_global"])


def test_later_seeds_results_get_their_section_when_present(tiny_run, mlflow_uri, tmp_path):
    work, config = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(work / "metrics", copy / "metrics")
    shutil.copytree(work / "plots", copy / "plots")
    (copy / "metrics/retrieval.json").write_text(json.dumps({"mAP8": 0.3125, "retrieval": {"ANMRR": 0.5}}))
    report.run(config, _paths(copy, tmp_path / "out"))
    tables = md_tables((tmp_path / "out/paper.md").read_text())
    assert tables["Seed 002: deep metric learning and affective image retrieval"][1:] == [
        ["mAP8", "0.3125"],
        ["retrieval.ANMRR", "0.5"],
    ]
    assert (
        "## Seed 001: one generative model for every emotion model\n\nNot run in this pipeline yet."
        in (tmp_path / "out/paper.md").read_text()
    )


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
