"""DVC's plots page draws with no network: the repository's HTML template inlines vega, vega-lite and vega-embed
(the versions DVC's own page loads from a CDN), and every plot of dvc.yaml draws in headless Chromium with every
host name unresolvable. The screenshot is kept under ``test-artifacts/screenshots/``."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc_render.vega import VegaRenderer
from PIL import Image

from image_emotion.report.plots_page import LIBRARIES, TEMPLATE, inlined

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OFFLINE = ["--headless", "--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND"]
DVC = [sys.executable, "-m", "dvc"]


def test_the_template_inlines_the_versions_dvc_asks_for_and_loads_nothing(repo_root):
    page = (repo_root / TEMPLATE).read_text()
    asked = dict(re.findall(r"cdn\.jsdelivr\.net/npm/([a-z-]+)@([\d.]+)", VegaRenderer.SCRIPTS))
    assert {package: version for package, (version, _, _) in inlined(page).items()} == asked  # digests checked too
    assert {package for package, _, _ in LIBRARIES} == set(asked)
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|https?://(?!www\.w3\.org)", page[: page.index("<script")])
    assert "{plot_divs}" in page and "{scripts}" not in page  # DVC adds no CDN tag where there is no placeholder
    config = (repo_root / ".dvc/config").read_text()
    assert re.search(rf"\[plots\]\s+html_template = {TEMPLATE.name}\b", config)
    tampered = page.replace("vegaEmbed", "vegaEmbeD", 1)
    with pytest.raises(ValueError, match="is not the file its header records"):
        inlined(tampered)


def _fill(project: Path, plots: list) -> tuple[int, int]:
    """Data for every plot of ``plots`` (dvc.yaml's list) under ``project``: CSVs with the fields the plot reads,
    small PNGs for the image plots. Returns (vega plots, image plots)."""
    vega = images = 0
    for entry in plots:
        if isinstance(entry, str):  # an image
            (project / entry).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 48), (200, 30, 30)).save(project / entry)
            images += 1
            continue
        ((_, spec),) = entry.items()
        for path, fields in spec["y"].items():
            fields = [fields] if isinstance(fields, str) else fields
            columns = [spec["x"], *fields]
            rows = [",".join(columns)] + [
                ",".join(str((i * 7 + j * 3) % 5) for j in range(len(columns))) for i in range(6)
            ]
            (project / path).parent.mkdir(parents=True, exist_ok=True)
            (project / path).write_text("\n".join(rows) + "\n")
        vega += 1
    return vega, images


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: `apt-get install chromium` (Debian) runs this test")
def test_every_plot_of_dvc_yaml_draws_in_a_browser_with_no_network(repo_root, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    subprocess.run([*DVC, "init", "--no-scm", "-q"], cwd=project, check=True)
    shutil.copy(repo_root / TEMPLATE, project / TEMPLATE)
    subprocess.run([*DVC, "config", "plots.html_template", TEMPLATE.name], cwd=project, check=True)
    plots = yaml.safe_load((repo_root / "dvc.yaml").read_text())["plots"]
    (project / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}))
    vega, images = _fill(project, plots)
    assert (vega, images) == (4, 3)

    shown = subprocess.run([*DVC, "plots", "show", "-o", "out"], cwd=project, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    page = project / "out/index.html"
    assert "cdn.jsdelivr.net" not in page.read_text()
    dom = subprocess.run(
        [CHROMIUM, *OFFLINE, "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    drawn = re.findall(r'<canvas width="(\d+)" height="(\d+)" class="marks">', dom)
    assert len(drawn) == vega and all(int(w) > 100 and int(h) > 100 for w, h in drawn), drawn
    assert len(re.findall(r'<img src="static/[^"]+\.png"', dom)) == images

    artifacts = repo_root / "test-artifacts/screenshots"
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "dvc_plots.png"
    subprocess.run(
        [CHROMIUM, *OFFLINE, "--virtual-time-budget=10000", "--hide-scrollbars", "--window-size=1300,1400",
         f"--screenshot={shot}", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert Image.open(shot).size == (1300, 1400)
