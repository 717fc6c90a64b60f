"""The report as a document: a list of blocks (headings, paragraphs, lists, tables, images) rendered
to markdown (report.md) and to a standalone HTML page (report.html).

Block text is plain text, never markup: names come from study specs and hand-edited run directories,
so both renderers escape it. HTML escapes everything; markdown escapes what a markdown viewer would
act on (raw HTML, autolinks, entities, inline links, line breaks in table cells), which ordinary text
never contains, so an ordinary report.md is byte for byte what it was before escaping.
"""
from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2  # 1: the title; 2: a section; 3: a subsection


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: Sequence[str]


@dataclass(frozen=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]  # cells already formatted


@dataclass(frozen=True)
class Image:
    src: str  # relative to the report
    caption: str


Block = Heading | Paragraph | Bullets | Table | Image


_MD_TAG = re.compile(r"<(?=[A-Za-z/!?])")  # what opens raw HTML or an autolink in CommonMark
_MD_ENTITY = re.compile(r"&(?=#?[A-Za-z0-9]+;)")  # an entity or character reference


def _md_text(text: str) -> str:
    """Plain text as a markdown viewer shows it literally: ``<script>`` stays text, not markup."""
    text = _MD_ENTITY.sub("&amp;", str(text))
    return _MD_TAG.sub("&lt;", text).replace("](", "]\\(")


def _md_cell(text: str) -> str:
    return " ".join(_md_text(text).splitlines()).replace("|", "\\|")


def _markdown(block: Block) -> str:
    match block:
        case Heading(text, level):
            return f"{'#' * level} {_md_text(text)}"
        case Paragraph(text):
            return _md_text(text)
        case Bullets(items):
            return "\n".join(f"- {_md_text(item)}" for item in items)
        case Table(headers, rows):
            lines = ["| " + " | ".join(map(_md_cell, headers)) + " |", "|" + "---|" * len(headers)]
            lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows]
            return "\n".join(lines)
        case Image(src, caption):
            return f"![{_md_text(caption)}]({src})\n\n*{_md_text(caption)}*"
    raise TypeError(f"not a report block: {block!r}")


def render_markdown(blocks: Sequence[Block]) -> str:
    return "\n\n".join(map(_markdown, blocks)) + "\n"


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.4}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}"
        "th{background:#eee}td.num{text-align:right;white-space:nowrap}img{max-width:100%}"
        "figcaption{font-style:italic}")
# A cell that is a number (a count, a mean ± sd, a difference with its interval, a p-value, a percentage): its
# digits line up when right-aligned. Text cells (names, readings, reasons) stay left-aligned.
_NUMBER = re.compile(r"[+-]?\d[\d,.]*(e[+-]?\d+)?(%|M|k)?( ± [\d.]+)?( \[[+-]?[\d.]+, [+-]?[\d.]+\])?"
                     r"( → [\d.]+)?( of \d+)?|\[[+-]?[\d.]+, [+-]?[\d.]+\]")


def _cell(text: str) -> str:
    numeric = _NUMBER.fullmatch(text) is not None
    return f"<td class='num'>{html.escape(text)}</td>" if numeric else f"<td>{html.escape(text)}</td>"


def _image_source(src: str, base: Path | None) -> str:
    """The figure inlined as a data URI when it exists under ``base``: report.html is one file to send."""
    path = None if base is None else base / src
    if path is None or not path.is_file():
        return src
    kind = "svg+xml" if path.suffix == ".svg" else "png"
    return f"data:image/{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _html(block: Block, base: Path | None = None) -> str:
    esc = html.escape
    match block:
        case Heading(text, level):
            return f"<h{level}>{esc(text)}</h{level}>"
        case Paragraph(text):
            return f"<p>{esc(text)}</p>"
        case Bullets(items):
            return "<ul>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>"
        case Table(headers, rows):
            head = "".join(f"<th>{esc(h)}</th>" for h in headers)
            body = "".join("<tr>" + "".join(_cell(str(c)) for c in r) + "</tr>" for r in rows)
            return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        case Image(src, caption):
            return (f"<figure><img src='{esc(_image_source(src, base))}' alt='{esc(caption)}' title='{esc(src)}'>"
                    f"<figcaption>{esc(caption)}</figcaption></figure>")
    raise TypeError(f"not a report block: {block!r}")


def render_html(blocks: Sequence[Block], title: str, base: Path | None = None) -> str:
    """A standalone page; with ``base`` (the folder image paths are relative to) every figure is embedded."""
    head = (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>")
    return "\n".join([head, *(_html(b, base) for b in blocks)]) + "\n</body></html>\n"
