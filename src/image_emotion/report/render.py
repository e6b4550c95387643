"""``Report`` -> Markdown (images linked) and a self-contained HTML page (images inlined, no external files).

Seed 002's section (``Report.retrieval``) and seed 001's (``Report.generative``) print their tables under their
own heading, seed 001's what its numbers say in words, and their figures (``plots_retrieval/``,
``plots_generative/``) the way the others are printed: linked or inlined through the Markdown's ``figure_src``,
inlined in the HTML page.
"""

from __future__ import annotations

import base64
import html
import posixpath
from collections.abc import Callable
from pathlib import Path

from image_emotion.report.tables import EXTRAS, Claim, Report, RetrievalSection, Table

FIGURES = (  # (file under plots/, heading): the λ curve (Fig. 8), the confusion matrix, the region overlays
    ("lambda_curve.png", "Fig. 8: accuracy by λ"),
    ("confusion.png", "Confusion matrix of the full method (test split)"),
    ("regions.png", "Emotional regions (red, the best first and thickest) and ground truth (green) on test images"),
    ("reliability.png", "Reliability of the classifier's confidence on test, without and with the fitted temperature"),
)
TITLE = "image-emotion: seed 000's tables, this run beside the paper"
SUMMARY = "What this run shows"  # the heading of a section's ``summary``


def _claim_verdict(c: Claim) -> str:
    if c.verdict is not None:
        return c.verdict
    return "n/a" if c.holds is None else "holds" if c.holds else "does not hold"


def _claim_value(c: Claim) -> str:
    if c.ours is None:
        return "—"
    if c.key == "lambda_inside":
        return f"λ* = {c.ours:g}" + (f"; {c.detail}" if c.detail else "")
    shown = f"{c.ours:+.1f} points"
    return shown + (f" [{c.interval[0]:+.1f}, {c.interval[1]:+.1f}]" if c.interval else "")


def _paper_value(c: Claim) -> str:
    return f"λ = {c.paper:g}" if c.key == "lambda_inside" else f"{c.paper:+.2f} points"


def claims_table(report: Report) -> Table:
    """Seed 000's claims (seed 002's are in its own section)."""
    rows = [[c.text, _claim_value(c), _claim_verdict(c), _paper_value(c)] for c in report.claims if c.seed == "000"]
    return Table(
        "The paper's claims on this run",
        "Differences in test accuracy (8 classes) between the rows each claim compares, with the 95 % paired "
        "bootstrap interval over the test images (4000 resamples of the images, both rows on the same ones). A claim "
        "holds when the interval lies above zero, does not hold when below, and is inconclusive when it contains "
        "zero. λ: the interval of λ*'s validation accuracy over each end of the grid (λ = 0 and λ = 1); λ* inside "
        "holds only when it beats both.",
        ["claim", "this run", "verdict", "the paper"],
        rows,
    )


# ---------------------------------------------------------------------------------------------- Markdown


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(table: Table, level: int = 2) -> str:
    lines = [f"{'#' * level} {table.title}", "", table.caption, ""]
    lines.append("| " + " | ".join(_md_cell(c) for c in table.columns) + " |")
    lines.append("|" + "|".join("---" for _ in table.columns) + "|")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    lines += [""] + [f"- {n}" for n in table.notes] + ([""] if table.notes else [])
    return "\n".join(lines)


def _md_src(figure_src: Callable[[str], str], name: str) -> str:
    src = figure_src(name)  # a data: URI is left alone (base64 holds "/"); a link loses "plots/../"
    return src if src.startswith("data:") else posixpath.normpath(src)


def md_retrieval(section: RetrievalSection, figure_src: Callable[[str], str]) -> str:
    """A later seed's section: header, notes, its tables, its summary and its figures (names relative to
    ``plots/``)."""
    out = [f"## {section.title}", "", f"- **paper**: {section.paper}", f"- **this run**: {section.header}", ""]
    out += [f"> {n}" for n in section.notes] + ([""] if section.notes else [])
    out += [md_table(t, level=3) for t in section.tables]
    if section.summary:
        out += [f"### {SUMMARY}", ""] + [f"- {line}" for line in section.summary] + [""]
    for fig in section.figures:
        body = f"![{fig.title}]({_md_src(figure_src, fig.name)})" if fig.name is not None else "(not written)"
        out += [f"### {fig.title}", "", body, ""]
    return "\n".join(out)


def markdown(report: Report, figure_src: Callable[[str], str]) -> str:
    """The report as GitHub Markdown; ``figure_src(file name under plots/)`` gives each figure's link (seed 002's
    and 001's figures are named relative to ``plots/``, e.g. ``../plots_retrieval/tsne.png``)."""
    out = [f"# {TITLE}", ""]
    out += [f"- **{k}**: {v}" for k, v in report.header] + [""]
    if report.banner:
        out += ["> **Not the paper's data.** " + " ".join(report.banner), ""]
    out.append(md_table(report.datasets))
    out.append(md_table(report.deviations))
    out.append(md_table(claims_table(report)))
    out += [md_table(t) for t in report.tables]
    out.append(md_table(report.lambda_table))
    out += ["## Emotional-region detector", ""] + [f"- {k}: {v}" for k, v in report.detector] + [""]
    out += ["## Figures", ""] + [f"![{title}]({figure_src(name)})" for name, title in FIGURES] + [""]
    sections = report.sections()
    for name, table in report.extras.items():
        if sections.get(name) is not None:
            out.append(md_retrieval(sections[name], figure_src))
        else:
            out.append(md_table(table) if table else f"## {EXTRAS[name]}\n\nNot run in this pipeline yet.\n")
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------- HTML

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; } p.caption { color: #555; margin-bottom: .3em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child, td.text { text-align: left; }
td.paper, th.paper { background: #f3f6fb; color: #345; }
.banner { background: #fff4d6; border: 1px solid #e0b84a; padding: .6em 1em; border-radius: 4px; }
.holds { color: #1a7f37; font-weight: 600; } .fails { color: #b42318; font-weight: 600; }
dl.header { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; }
dl.header dt { font-weight: 600; } dl.header dd { margin: 0; font-family: ui-monospace, monospace; }
img { max-width: 100%; border: 1px solid #eee; } ul.notes { color: #555; margin-top: 0; }
table.prose td, table.prose th { text-align: left; vertical-align: top; }
"""


def _cell(column: str, value: str) -> str:
    classes = ["paper"] if "paper" in column else []
    if not any(ch.isdigit() for ch in value) and value != "—":
        classes.append("text")  # words align left, figures right
    if value in ("holds", "does not hold"):
        classes = ["holds" if value == "holds" else "fails"]
    elif value == "inconclusive":
        classes = ["text"]
    return f'<td class="{" ".join(classes)}">{html.escape(value)}</td>' if classes else f"<td>{html.escape(value)}</td>"


def html_table(table: Table, level: int = 2) -> str:
    head = "".join(f'<th class="{"paper" if "paper" in c else ""}">{html.escape(c)}</th>' for c in table.columns)
    body = "".join(
        "<tr>" + "".join(_cell(c, v) for c, v in zip(table.columns, row, strict=True)) + "</tr>" for row in table.rows
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in table.notes)
    return (
        f'<h{level}>{html.escape(table.title)}</h{level}><p class="caption">{html.escape(table.caption)}</p>'
        + ('<table class="prose">' if table.prose else "<table>")
        + f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        + (f'<ul class="notes">{notes}</ul>' if notes else "")
    )


def inline_png(path: Path) -> str:
    """A PNG file as a ``data:`` URI (a page that needs no other file)."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def html_retrieval(section: RetrievalSection) -> str:
    """A later seed's section, its figures inlined."""
    parts = [
        f"<h2>{html.escape(section.title)}</h2>",
        f'<dl class="header"><dt>paper</dt><dd>{html.escape(section.paper)}</dd>'
        f"<dt>this run</dt><dd>{html.escape(section.header)}</dd></dl>",
    ]
    parts += [f'<p class="banner">{html.escape(n)}</p>' for n in section.notes]
    parts += [html_table(t, level=3) for t in section.tables]
    if section.summary:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in section.summary)
        parts.append(f"<h3>{html.escape(SUMMARY)}</h3><ul>{items}</ul>")
    for fig in section.figures:
        body = (
            f'<img alt="{html.escape(fig.title)}" src="{inline_png(fig.path)}"/>'
            if fig.path is not None
            else "<p>(not written)</p>"
        )
        parts.append(f"<h3>{html.escape(fig.title)}</h3>{body}")
    return "\n".join(parts)


def html_page(report: Report, plots: Path) -> str:
    """The report as one self-contained HTML page: figures under ``plots`` inlined (a missing one is said so)."""
    parts = [f"<h1>{html.escape(TITLE)}</h1>"]
    parts.append(
        '<dl class="header">'
        + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in report.header)
        + "</dl>"
    )
    if report.banner:
        parts.append(
            '<p class="banner"><strong>Not the paper\'s data.</strong> ' + html.escape(" ".join(report.banner)) + "</p>"
        )
    parts.append(html_table(report.datasets))
    parts.append(html_table(report.deviations))
    parts.append(html_table(claims_table(report)))
    parts += [html_table(t) for t in report.tables]
    parts.append(html_table(report.lambda_table))
    items = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in report.detector)
    parts.append(f"<h2>Emotional-region detector</h2><ul>{items}</ul>")
    for name, title in FIGURES:
        path = plots / name
        body = f'<img alt="{html.escape(title)}" src="{inline_png(path)}"/>' if path.is_file() else "(not written)"
        parts.append(f"<h2>{html.escape(title)}</h2>{body}")
    sections = report.sections()
    for name, table in report.extras.items():
        if sections.get(name) is not None:
            parts.append(html_retrieval(sections[name]))
            continue
        missing = f"<h2>{html.escape(EXTRAS[name])}</h2><p>Not run in this pipeline yet.</p>"
        parts.append(html_table(table) if table else missing)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"/>'
        f"<title>{html.escape(TITLE)}</title><style>{CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n"
    )
