"""The documentation: the site under docs/ builds with `mkdocs build --strict` (no broken link or anchor, every page
in nav), the README stays short with its quickstart first and its relative links resolving, and the word "seed"
means a random seed only — the papers are named by their authors or method, never "seed 000/001/002"."""

from __future__ import annotations

import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import yaml

MAX_README_LINES = 300
QUICKSTART_WITHIN = 60  # the quickstart's heading is on one of the README's first 60 lines

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.S)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)
# "seed 000", "Seed 002's", "seeds 000, 002 and 001", "seed-001", "seed_000": a paper named by its number
_PAPER_SEED = [
    re.compile(r"\bseeds?[\s_-]*00[0-2]\b", re.I),
    re.compile(r"\bseeds?[\s_-]+papers?\b", re.I),  # "the seed papers"
    re.compile(r"\bpapers?[\s_-]+seeds?\b", re.I),  # "paper seed 2"
]


def _docs_pages(repo_root: Path) -> list[Path]:
    return sorted((repo_root / "docs").glob("**/*.md"))


def _nav_files(nav) -> list[str]:
    """Every file the mkdocs nav names, depth first."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [f for item in nav for f in _nav_files(item)]
    if isinstance(nav, dict):
        return [f for value in nav.values() for f in _nav_files(value)]
    return []


def _without_code(text: str) -> str:
    """The text with fenced blocks and inline code spans blanked out (the line count kept)."""
    text = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return _CODE_SPAN.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def _without_code_spans(text: str) -> str:
    return _CODE_SPAN.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def _github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"[`*]", "", text).strip().lower()
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    """The heading anchors of a Markdown file, GitHub's way (a repeated slug gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    anchors = set()
    for _, title in _HEADING.findall(_FENCE.sub("", path.read_text())):
        slug = _github_slug(title)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _relative_links(text: str) -> list[str]:
    """The link targets of a Markdown text that are not URLs (outside code)."""
    targets = _LINK.findall(_without_code(text))
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]


def _paper_seeds(text: str) -> list[str]:
    """Each place where "seed" names a paper, outside inline code spans (identifiers keep their names)."""
    prose = _without_code_spans(text)
    return [m.group(0) for pattern in _PAPER_SEED for m in pattern.finditer(prose)]


def test_the_site_builds_strictly_with_every_page_in_nav_and_in_html(repo_root, tmp_path):
    config = yaml.safe_load((repo_root / "mkdocs.yml").read_text())
    assert config["strict"] is True and config["docs_dir"] == "docs"
    pages = {p.relative_to(repo_root / "docs").as_posix() for p in _docs_pages(repo_root)}
    nav = _nav_files(config["nav"])
    assert sorted(nav) == sorted(pages), "every docs page is in mkdocs.yml's nav once, and nav names only pages"
    site = tmp_path / "site"
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(repo_root / "mkdocs.yml")]
    built = subprocess.run(
        [*command, "--site-dir", str(site)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    html = "{}.html" if config.get("use_directory_urls") is False else "{}/index.html"
    for page in pages:
        stem = page.removesuffix(".md")
        name = "index.html" if stem == "index" else html.format(stem)
        assert (site / name).is_file(), f"{page} produced no {name}"


def test_the_readme_is_short_with_the_quickstart_first(repo_root):
    lines = (repo_root / "README.md").read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move the long material to docs/"
    headings = [i + 1 for i, line in enumerate(lines) if re.match(r"##\s+Quickstart\s*$", line)]
    assert headings and headings[0] <= QUICKSTART_WITHIN, f"## Quickstart on line {headings[:1]}"
    start = headings[0]
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    quickstart = "\n".join(lines[start:end])
    # the two commands CI runs (.ci/run), the first prediction on your own photo, where the report is
    ci = (repo_root / ".ci/run").read_text().splitlines()
    for command in ("./setup.sh", ".venv/bin/python -m pytest"):
        assert command in ci, command
        assert re.search(rf"^{re.escape(command)}(\s|$)", quickstart, re.M), command
    assert re.search(r"^image-emotion predict \S+\.jpg", quickstart, re.M)
    assert "reports/paper.html" in quickstart


def test_the_readme_has_a_table_of_contents_linking_every_docs_page(repo_root):
    text = (repo_root / "README.md").read_text()
    assert re.search(r"^## Contents\s*$", text, re.M)
    linked = {t.split("#")[0] for t in _relative_links(text)}
    for page in _docs_pages(repo_root):
        assert page.relative_to(repo_root).as_posix() in linked, f"README.md does not link {page.name}"


def test_every_relative_link_in_the_readme_resolves(repo_root):
    readme = repo_root / "README.md"
    links = _relative_links(readme.read_text())
    assert links
    for target in links:
        path, _, anchor = target.partition("#")
        file = (readme.parent / path).resolve() if path else readme
        assert file.exists(), f"README.md links {target}: no {path}"
        assert file.is_relative_to(repo_root), f"README.md links {target}: outside the repository"
        if anchor:
            assert file.suffix == ".md", f"README.md links {target}: an anchor into a file that is not Markdown"
            assert anchor in _anchors(file), f"README.md links {target}: no heading with that anchor"


def test_seed_means_a_random_seed_never_a_paper(repo_root):
    files = [repo_root / "README.md", *_docs_pages(repo_root)]
    found = {}
    for file in files:
        text = file.read_text()
        if hits := _paper_seeds(text):
            found[file.relative_to(repo_root).as_posix()] = hits
    assert not found, f"name the papers by author or method (Rao et al., Yang et al., UGRIE), not by seed: {found}"


@pytest.mark.parametrize(
    ("text", "hits"),
    [
        ("Seed 000's classifier stays ahead", ["Seed 000"]),
        ("## Seed 002: affective image retrieval", ["Seed 002"]),
        ("which the README calls seeds 000, 002 and 001", ["seeds 000"]),
        ("the seed-000 and generative models", ["seed-000"]),
        ("the three seed papers", ["seed papers"]),
        ("over five generator seeds (`--seeds 0 1 2 3 4`)", []),
        ("mean ± std over 3 seeds of the initialisation; seeded splits", []),
        ("`published_000.yaml` and `metric.ablation_seeds` and `seed 001`", []),
        ("a random seed of 0001 or seed 7", []),
    ],
)
def test_the_paper_seed_check_finds_papers_named_by_seed(text, hits):
    assert _paper_seeds(text) == hits


def test_the_link_check_sees_links_outside_code_only():
    text = "[a](docs/a.md) `[b](b.md)` [c](https://x.org) [d](#top)\n```\n[e](e.md)\n```\n![f](img/f.png)"
    assert _relative_links(text) == ["docs/a.md", "#top", "img/f.png"]
    slug = _github_slug("The deployed shape: `mlflow server` on PostgreSQL")
    assert slug == "the-deployed-shape-mlflow-server-on-postgresql"
    assert _github_slug("Region-based classification (Rao et al.)") == "region-based-classification-rao-et-al"
