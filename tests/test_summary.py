"""``image-emotion summary``: the end of ``./setup.sh``, a few lines a person reads, from metrics/ only."""

from __future__ import annotations

import json

from image_emotion.cli import main
from image_emotion.report.summary import summary


def _write(folder, name, value):
    (folder / name).write_text(json.dumps(value))


def test_the_summary_sets_each_headline_beside_the_papers(tmp_path):
    _write(tmp_path, "classifier.json", {
        "dataset": "synthetic", "test_accuracy": 0.625, "binary_test_accuracy": 0.875,
        "claims": {"regions_over_global": {"verdict": "holds"}, "multi_over_cls": {"verdict": "inconclusive"}},
    })  # fmt: skip
    _write(tmp_path, "retrieval.json", {"main": {"map8": 0.3125}})
    models = {"mikels8": {"accuracy": 0.5}, "binary": {"accuracy": 0.75}}
    _write(tmp_path, "generative.json", {"emotion_models": models})
    lines = summary(tmp_path).splitlines()
    assert lines[0] == (
        "Done: the default run on synthetic data (synthetic shapes: the models know nothing of real photos)"
    )
    # the paper's figures: Rao et al. Table 1 (75.46 / 87.51), Yang et al. Table 2 (mAP8 0.4885)
    assert lines[2] == (
        "  Rao et al., region-based CNN: 62.5 % test accuracy on 8 classes (paper, FI: 75.46 %), 87.5 % on 2 (87.51 %)"
    )
    assert lines[3:6] == [
        "    the paper's claims on this run (95 % intervals in the report):",
        "      regions_over_global: holds",
        "      multi_over_cls: inconclusive",
    ]
    assert lines[6] == "  Yang et al., retrieval: mAP8 0.312 (the paper on FI: 0.4885)"
    assert lines[7] == "  UGRIE, one generative model for every emotion model: mikels8 50.0 %, binary 75.0 %"
    assert any(line.startswith("Report:  reports/paper.html") for line in lines)
    assert lines[-1].startswith("Next:    .venv/bin/image-emotion predict")
    assert max(map(len, lines)) <= 120  # a terminal's width, not dvc metrics show's 5,000 columns


def test_a_partial_run_gets_dashes_not_an_error(tmp_path, capsys):
    _write(tmp_path, "classifier.json", {"dataset": "fi"})
    (tmp_path / "retrieval.json").write_text("{not json")
    assert main(["summary", "--metrics", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Done: the default run on fi data"
    assert "— test accuracy on 8 classes" in out[2]
    assert not any(line.startswith(("  Yang et al.", "  UGRIE")) for line in out)
