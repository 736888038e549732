"""A self-contained ``index.html``: figures embedded as PNG data, tables, settings, warnings."""

from __future__ import annotations

import base64
import datetime as _dt
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from ..io import atomic_write

_STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
.meta { color: #666; font-size: 0.9em; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.92em; margin-top: 0.4em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f5f5f5; } td:first-child, th:first-child { text-align: left; }
.warning { background: #fff7e0; border-left: 4px solid #f0b400; padding: 0.4em 0.8em; margin: 0.3em 0; }
.scroll { overflow-x: auto; max-width: 100%; }
code { background: #f4f4f4; padding: 0 3px; }
"""


@dataclass
class FigureEntry:
    title: str
    png: Path
    caption: str = ""
    downloads: Mapping[str, Path] = field(default_factory=dict)


def _image_tag(png: Path, alt: str) -> str:
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def render_report_html(
    out_path: str | Path,
    title: str,
    figures: Sequence[FigureEntry],
    tables: Mapping[str, pd.DataFrame],
    settings: Mapping[str, object],
    warnings: Sequence[str] = (),
    intro: str = "",
    summary: pd.DataFrame | None = None,
    html_tables: Mapping[str, tuple[pd.DataFrame, str]] | None = None,
) -> Path:
    """Write the report page atomically and return its path.

    ``summary`` is shown first, under the intro; ``tables`` are plain tables (numbers to 4
    decimals); ``html_tables`` maps a title to (a table of ready HTML cells, a note in HTML under
    it). Every table scrolls sideways instead of overflowing the page."""
    out_path = Path(out_path)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='meta'>Generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by clusterprobe.</p>",
    ]
    if intro:
        parts.append(f"<p>{intro}</p>")
    if summary is not None and not summary.empty:
        parts.append("<h2>Summary</h2><div class='scroll'>" + summary.to_html(na_rep="–", border=0) + "</div>")
    if warnings:
        parts.append("<h2>Warnings</h2>")
        parts += [f"<div class='warning'>{html.escape(w)}</div>" for w in warnings]
    for entry in figures:
        links = " ".join(
            f"<a href='{html.escape(p.relative_to(out_path.parent).as_posix())}'>{fmt.upper()}</a>"
            for fmt, p in entry.downloads.items()
        )
        parts.append(f"<h2>{html.escape(entry.title)}</h2><figure>{_image_tag(entry.png, entry.title)}"
                     f"<figcaption>{entry.caption} {('Download: ' + links) if links else ''}</figcaption></figure>")
    for name, table in tables.items():
        parts.append(f"<h2>{html.escape(name)}</h2><div class='scroll'>")
        parts.append(table.to_html(float_format=lambda v: f"{v:.4f}", na_rep="–", border=0) + "</div>")
    for name, (table, note) in (html_tables or {}).items():
        parts.append(f"<h2>{html.escape(name)}</h2><div class='scroll'>")
        parts.append(table.to_html(escape=False, na_rep="–", border=0) + f"</div><p class='meta'>{note}</p>")
    parts.append("<h2>Settings</h2><table>")
    for key, value in settings.items():
        parts.append(f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(str(value))}</td></tr>")
    parts.append("</table></body></html>")
    text = "\n".join(parts)
    return atomic_write(out_path, lambda f: f.write(text), mode="w")
