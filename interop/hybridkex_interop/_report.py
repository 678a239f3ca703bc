"""The report: ``report.json`` (the data), ``report.md`` and ``report.html`` (the matrices).

Each section is a matrix: rows are scenarios, columns peers or parameters, and every cell a
letter (see :class:`~hybridkex_interop._model.Outcome`) with the seconds it took.  A dot
marks a combination that this run did not include (``--quick`` or ``--only``).  Below the
matrices: every failure with its first error line and the command that reruns just that
cell, then the skip reasons, then the environment the run saw.
"""

from __future__ import annotations

import html
import json
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._model import LEGEND_ORDER, CellResult, Outcome, Section

__all__ = ["RunInfo", "report_document", "write_reports", "render_markdown", "render_html", "NOT_RUN"]

#: What a matrix shows where this run has no cell.
NOT_RUN = "·"


@dataclass(frozen=True)
class RunInfo:
    """Facts about the run as a whole."""

    mode: str
    """``quick``, ``full`` or ``selection`` (``--only``)."""
    started: str
    """UTC start time, ISO 8601."""
    duration: float
    """Wall-clock seconds for the whole run."""
    command: str
    """The command line that produced the report."""
    environment: Mapping[str, str]
    """Versions and availability of Python, hybridkex, plugins, backends and third-party peers."""


def _rows(section: Section, results: Sequence[CellResult]) -> OrderedDict[str, dict[str, CellResult]]:
    rows: OrderedDict[str, dict[str, CellResult]] = OrderedDict()
    for r in results:
        if r.cell.section == section.key:
            rows.setdefault(r.cell.row, {})[r.cell.column] = r
    return rows


def _counts(results: Sequence[CellResult]) -> dict[str, int]:
    c = Counter(r.outcome for r in results)
    return {o.label: c.get(o, 0) for o in LEGEND_ORDER}


def _summary_rows(sections: Sequence[Section], results: Sequence[CellResult]) -> list[tuple[Section, Counter[Outcome]]]:
    rows = []
    for section in sections:
        counts = Counter(r.outcome for r in results if r.cell.section == section.key)
        if counts:
            rows.append((section, counts))
    return rows


def report_document(sections: Sequence[Section], results: Sequence[CellResult], info: RunInfo) -> dict[str, Any]:
    """The JSON report as a dict."""
    failures = [r for r in results if r.counts_as_failure]
    doc_sections = []
    for section in sections:
        rows = _rows(section, results)
        if not rows:
            continue
        doc_sections.append({
            "key": section.key, "title": section.title, "description": section.description,
            "columns": list(section.columns),
            "rows": [{"scenario": label, "cells": {col: r.cell.id for col, r in cells.items()}}
                     for label, cells in rows.items()],
        })
    return {
        "schema": 1,
        "suite": "hybridkex-interop",
        "mode": info.mode,
        "started": info.started,
        "duration_s": round(info.duration, 1),
        "command": info.command,
        "ok": not failures,
        "counts": _counts(results),
        "legend": [{"letter": o.value, "outcome": o.label, "meaning": o.meaning} for o in LEGEND_ORDER],
        "environment": dict(info.environment),
        "sections": doc_sections,
        "cells": [{
            "id": r.cell.id, "section": r.cell.section, "scenario": r.cell.row, "column": r.cell.column,
            "letter": r.outcome.value, "outcome": r.outcome.label, "duration_s": round(r.duration, 2),
            "expected": "pass" if r.cell.xfail is None else f"known failure: {r.cell.xfail}",
            "detail": r.detail, "error": r.error, "rerun": r.rerun(), "log": r.log,
        } for r in results],
    }


def _cell_text(r: CellResult | None) -> str:
    if r is None:
        return NOT_RUN
    return f"{r.outcome.value} {r.duration:.1f}s"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(sections: Sequence[Section], results: Sequence[CellResult], info: RunInfo) -> str:
    """The Markdown report."""
    failures = [r for r in results if r.counts_as_failure]
    counts = _counts(results)
    out = ["# hybridkex interoperability report", ""]
    verdict = "all expected-to-pass cells passed" if not failures else f"{len(failures)} cell(s) FAILED"
    out += [f"{info.mode} run, {info.started}, {info.duration:.0f} s: **{verdict}** — "
            + ", ".join(f"{n} {label}" for label, n in counts.items() if n) + ".", "",
            f"Command: `{info.command}`", ""]
    out += ["Legend: " + "; ".join(f"**{o.value}** {o.label} ({o.meaning})" for o in LEGEND_ORDER)
            + f"; **{NOT_RUN}** not part of this run. Times are wall-clock seconds per cell.", ""]
    out += ["| matrix | " + " | ".join(o.value for o in LEGEND_ORDER) + " |", "|---|" + "---|" * len(LEGEND_ORDER)]
    out += [f"| {_md_escape(s.title)} | " + " | ".join(str(c.get(o, 0) or "") for o in LEGEND_ORDER) + " |"
            for s, c in _summary_rows(sections, results)]
    out.append("")
    for section in sections:
        rows = _rows(section, results)
        if not rows:
            continue
        columns = [c for c in section.columns if any(c in cells for cells in rows.values())]
        out += [f"## {section.title}", "", section.description, ""]
        out.append("| scenario | " + " | ".join(_md_escape(c) for c in columns) + " |")
        out.append("|---|" + "---|" * len(columns))
        for label, cells in rows.items():
            out.append(f"| {_md_escape(label)} | " + " | ".join(_cell_text(cells.get(c)) for c in columns) + " |")
        out.append("")
    out += ["## Failures", ""]
    if failures:
        for r in failures:
            out += [f"- **{r.outcome.value}** `{r.cell.id}` ({r.duration:.1f} s): {_md_escape(r.error)}",
                    f"  rerun: `{r.rerun()}`" + (f" — log: `{r.log}`" if r.log else "")]
    else:
        out.append("None.")
    out.append("")
    known = [r for r in results if r.cell.xfail is not None and r.outcome in (Outcome.XFAILED, Outcome.PASSED)]
    if known:
        out += ["## Known failures", ""]
        for r in known:
            seen = f"saw: {r.error}" if r.outcome is Outcome.XFAILED else f"now {r.outcome.label}: drop the entry"
            out.append(f"- **{r.outcome.value}** `{r.cell.id}`: {_md_escape(r.cell.xfail or '')} ({_md_escape(seen)})")
        out.append("")
    skipped = Counter(r.error for r in results if r.outcome is Outcome.SKIPPED)
    if skipped:
        out += ["## Skipped", ""]
        out += [f"- {n} cell(s): {_md_escape(reason)}" for reason, n in skipped.most_common()]
        out.append("")
    out += ["## Environment", "", "| | |", "|---|---|"]
    out += [f"| {_md_escape(k)} | {_md_escape(v)} |" for k, v in info.environment.items()]
    out.append("")
    return "\n".join(out)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #bbb; padding: 2px 6px; font-size: 13px; }
th { background: #f0f0f0; }
td.cell { text-align: center; font-family: monospace; white-space: nowrap; }
td.scenario { white-space: nowrap; }
td.notrun { color: #999; text-align: center; }
.legend span { display: inline-block; padding: 1px 6px; margin-right: 4px; font-family: monospace; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def render_html(sections: Sequence[Section], results: Sequence[CellResult], info: RunInfo) -> str:
    """The HTML report: one self-contained page, colour per outcome, details on hover."""
    failures = [r for r in results if r.counts_as_failure]
    counts = _counts(results)
    verdict = "all expected-to-pass cells passed" if not failures else f"{len(failures)} cell(s) FAILED"
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           "<title>hybridkex interoperability report</title>", f"<style>{_CSS}</style></head><body>",
           "<h1>hybridkex interoperability report</h1>",
           f"<p>{_esc(info.mode)} run, {_esc(info.started)}, {info.duration:.0f} s: <strong>{_esc(verdict)}"
           f"</strong> — " + _esc(", ".join(f"{n} {label}" for label, n in counts.items() if n)) + ".</p>",
           f"<p>Command: <code>{_esc(info.command)}</code></p>", "<p class=\"legend\">"]
    for o in LEGEND_ORDER:
        out.append(f"<span style=\"background:{o.colour}\">{o.value}</span>{_esc(o.label)}: {_esc(o.meaning)}<br>")
    out.append(f"<span>{NOT_RUN}</span>not part of this run. Times are wall-clock seconds per cell; hover a cell "
               "for what was checked.</p>")
    out.append("<table><tr><th>matrix</th>" + "".join(f"<th>{o.value}</th>" for o in LEGEND_ORDER) + "</tr>")
    for section, per_outcome in _summary_rows(sections, results):
        out.append(f"<tr><td><a href=\"#{_esc(section.key)}\">{_esc(section.title)}</a></td>"
                   + "".join(f"<td class=\"cell\">{per_outcome.get(o, 0) or ''}</td>" for o in LEGEND_ORDER)
                   + "</tr>")
    out.append("</table>")
    for section in sections:
        rows = _rows(section, results)
        if not rows:
            continue
        columns = [c for c in section.columns if any(c in cells for cells in rows.values())]
        out += [f"<h2 id=\"{_esc(section.key)}\">{_esc(section.title)}</h2>", f"<p>{_esc(section.description)}</p>",
                "<table><tr><th>scenario</th>" + "".join(f"<th>{_esc(c)}</th>" for c in columns) + "</tr>"]
        for label, cells in rows.items():
            tds = []
            for c in columns:
                r = cells.get(c)
                if r is None:
                    tds.append(f"<td class=\"notrun\">{NOT_RUN}</td>")
                    continue
                tip = r.cell.id + "\n" + (r.error or r.detail)
                tds.append(f"<td class=\"cell\" style=\"background:{r.outcome.colour}\" title=\"{_esc(tip)}\">"
                           f"{r.outcome.value} {r.duration:.1f}s</td>")
            out.append(f"<tr><td class=\"scenario\">{_esc(label)}</td>{''.join(tds)}</tr>")
        out.append("</table>")
    out.append("<h2>Failures</h2>")
    if failures:
        out.append("<table><tr><th></th><th>cell</th><th>first error line</th><th>rerun</th></tr>")
        for r in failures:
            out.append(f"<tr><td style=\"background:{r.outcome.colour}\">{r.outcome.value}</td>"
                       f"<td><code>{_esc(r.cell.id)}</code></td><td>{_esc(r.error)}</td>"
                       f"<td><code>{_esc(r.rerun())}</code></td></tr>")
        out.append("</table>")
    else:
        out.append("<p>None.</p>")
    known = [r for r in results if r.cell.xfail is not None and r.outcome in (Outcome.XFAILED, Outcome.PASSED)]
    if known:
        out.append("<h2>Known failures</h2><ul>")
        for r in known:
            seen = f"saw: {r.error}" if r.outcome is Outcome.XFAILED else f"now {r.outcome.label}: drop the entry"
            out.append(f"<li><strong>{r.outcome.value}</strong> <code>{_esc(r.cell.id)}</code>: {_esc(r.cell.xfail)} "
                       f"({_esc(seen)})</li>")
        out.append("</ul>")
    skipped = Counter(r.error for r in results if r.outcome is Outcome.SKIPPED)
    if skipped:
        out.append("<h2>Skipped</h2><ul>")
        out += [f"<li>{n} cell(s): {_esc(reason)}</li>" for reason, n in skipped.most_common()]
        out.append("</ul>")
    out.append("<h2>Environment</h2><table>")
    out += [f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in info.environment.items()]
    out += ["</table>", "</body></html>", ""]
    return "\n".join(out)


def write_reports(directory: Path, sections: Sequence[Section], results: Sequence[CellResult],
                  info: RunInfo) -> list[Path]:
    """Write ``report.json``, ``report.md`` and ``report.html`` into ``directory``; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / "report.json", directory / "report.md", directory / "report.html"]
    paths[0].write_text(json.dumps(report_document(sections, results, info), indent=1, ensure_ascii=False) + "\n",
                        encoding="utf-8")
    paths[1].write_text(render_markdown(sections, results, info), encoding="utf-8")
    paths[2].write_text(render_html(sections, results, info), encoding="utf-8")
    return paths
