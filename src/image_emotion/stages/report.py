"""Stage ``report``: the paper's tables for this run, beside the published figures (``reports/paper.md``,
``reports/paper.html``).

Reads every result file of the run (``ReportPaths``; a missing one is named), builds the tables of
``report/tables.py`` and writes them as Markdown (figures linked to ``plots/``) and as one self-contained
HTML page (figures inlined). Both are logged to the pipeline's MLflow parent run (``report/``) and to the
stage's own run, with the papers' claims as metrics (``claim.<key>``: 1 holds, 0 does not; seed 000's, then
seed 002's and seed 001's when their stages ran; a claim not measured is not logged). The later seeds' figures
(``plots_retrieval/``, ``plots_generative/``) are named relative to ``plots/``, so both modes reach them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from image_emotion.config import Config
from image_emotion.files import fingerprint, write_text_atomic
from image_emotion.report.render import html_page, inline_png, markdown
from image_emotion.report.summary import headline_metrics, read_metrics
from image_emotion.report.tables import build_report, read_run
from image_emotion.stages.paths import ReportPaths
from image_emotion.tracking import runs as tracking


def write_report(config: Config, paths: ReportPaths, inline_figures: bool = False) -> dict[str, Any]:
    """Build and write the report; the Markdown links the figures under ``paths.plots`` (relative to the report),
    or inlines them (``inline_figures``: a file that travels alone, as a kfp artifact)."""
    figures = read_run(paths)
    report = build_report(figures, config, tracking.git_revision(), fingerprint(config.to_dict()))
    out = paths.out_dir
    md_path, html_path = out / "paper.md", out / "paper.html"
    plots_link = Path(os.path.relpath(paths.plots, out)).as_posix()
    link = (lambda name: inline_png(paths.plots / name)) if inline_figures else (lambda name: f"{plots_link}/{name}")
    write_text_atomic(md_path, markdown(report, link))
    write_text_atomic(html_path, html_page(report, paths.plots))
    codes = {True: 1.0, False: -1.0, None: 0.0}  # holds / does not hold / inconclusive (not measured: absent)
    claims = {f"claim.{c.key}": codes[c.holds] for c in report.claims if c.holds is not None or c.verdict}
    with tracking.stage_run(config, "report") as mlflow:
        tracking.log_metrics(claims)
        for path in (md_path, html_path):
            mlflow.log_artifact(str(path), artifact_path="report")
        parent = mlflow.active_run().data.tags.get("mlflow.parentRunId")
        if parent:
            client = mlflow.MlflowClient()
            for path in (md_path, html_path):
                client.log_artifact(parent, str(path), artifact_path="report")
            files = (paths.classifier, paths.retrieval, paths.generative)
            for name, value in headline_metrics(*(read_metrics(f) for f in files)).items():
                client.log_metric(parent, name, value)
    return {
        "markdown": str(md_path),
        "html": str(html_path),
        "comparable_with_paper": not report.banner,
        **{c.key: c.holds for c in report.claims},
    }


def run(config: Config, paths: ReportPaths) -> dict[str, Any]:
    """The stage: ``reports/paper.md`` (figures linked) and ``reports/paper.html`` (self-contained)."""
    return write_report(config, paths)
