"""Small HTML helpers: escaped tables from polars, figures, links. No JavaScript, no external resources."""

from __future__ import annotations

import math
from html import escape

import polars as pl

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1.5em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #1f4e79; padding-bottom: .2em; }
h2 { margin-top: 2.2em; border-bottom: 1px solid #bbb; }
h3 { margin-top: 1.8em; color: #1f4e79; }
nav li { margin: .15em 0; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: right; }
th { background: #f0f4f8; }
td.text, th.text { text-align: left; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
details { margin: .6em 0; }
summary { cursor: pointer; font-weight: 600; }
.note { font-size: 0.85em; color: #555; }
.exports a { margin-right: .8em; }
.scroll { overflow-x: auto; max-width: 100%; }
.pairs { display: flex; gap: 2em; flex-wrap: wrap; }
"""


def format_cell(value: object, decimals: int = 3) -> tuple[str, bool]:
    """Text of one table cell and whether it is numeric (right-aligned)."""
    if value is None:
        return "", True
    if isinstance(value, bool):
        return ("yes" if value else "no"), False
    if isinstance(value, float):
        if math.isnan(value):
            return "–", True
        return f"{value:.{decimals}f}", True
    if isinstance(value, int):
        return str(value), True
    if isinstance(value, (list, tuple)):
        return escape(", ".join(str(v) for v in value)), False
    return escape(str(value)), False


def table(df: pl.DataFrame, *, decimals: int = 3, caption: str | None = None) -> str:
    """An escaped HTML table of a polars frame."""
    if df.is_empty():
        return '<p class="note">(no rows)</p>'
    head = "".join(
        f'<th class="{"" if df[c].dtype.is_numeric() else "text"}">{escape(c)}</th>' for c in df.columns
    )
    body = []
    for row in df.iter_rows():
        cells = []
        for value in row:
            text, numeric = format_cell(value, decimals)
            cells.append(f"<td>{text}</td>" if numeric else f'<td class="text">{text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    rows = "".join(body)
    # wide tables (the engine's properties) scroll instead of overflowing the page
    return (
        f'<div class="scroll"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'
    )


def figure(src: str, alt: str, caption: str | None = None, *, lazy: bool = False) -> str:
    loading = ' loading="lazy"' if lazy else ""
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{escape(src)}" alt="{escape(alt)}"{loading}>{cap}</figure>'


def links(items: list[tuple[str, str]]) -> str:
    """``[(label, href)]`` as a row of links."""
    return (
        '<p class="exports">'
        + " ".join(f'<a href="{escape(href)}">{escape(label)}</a>' for label, href in items)
        + "</p>"
    )


def page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'  # no favicon request: the page needs nothing beside its files
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )
