"""Renderers of the replay report: Rich terminal text, Markdown, JSON and standalone HTML.

All four read the same report document (:func:`replay.report.build_report`). The HTML page
is one file with inline CSS and an inline SVG chart that this module draws itself, so it
opens offline and in a CI artifact viewer without fetching anything.
"""

from __future__ import annotations

import html
import json
import re
from io import StringIO
from typing import Any

from rich.console import Console
from rich.table import Table

FORMATS = ("text", "markdown", "json", "html")
_SPARK = "▁▂▃▄▅▆▇█"


def render(report: dict[str, Any], fmt: str, *, width: int = 100) -> str:
    if fmt == "json":
        return json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    if fmt == "markdown":
        return render_markdown(report)
    if fmt == "html":
        return render_html(report)
    if fmt == "text":
        return render_text(report, width=width)
    raise ValueError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")


def _pct(share: float | None) -> str:
    return "n/a" if share is None else f"{share * 100:.2f}%"


def _fidelity_line(report: dict[str, Any]) -> str:
    f = report["fidelity"]
    return (
        f"fidelity {_pct(f['share'])} ({f['reproduced']} of {f['replayed']} calls reproduced "
        f"by their recorded policy version; {f['unknown']} unknown)"
    )


def _headline(report: dict[str, Any]) -> str:
    return (
        f"{report['total']} calls: {report['unchanged']} unchanged, {report['changed']} changed "
        f"({report['newly_denied']} newly denied, {report['newly_allowed']} newly allowed), "
        f"{report['unknown']} unknown"
    )


def sparkline(counts: list[int]) -> str:
    top = max(counts, default=0)
    if top == 0:
        return _SPARK[0] * len(counts)
    return "".join(
        _SPARK[min(len(_SPARK) - 1, (c * (len(_SPARK) - 1) + top - 1) // top)] for c in counts
    )


# --------------------------------------------------------------------------- text


def render_text(report: dict[str, Any], *, width: int = 100) -> str:
    buf = StringIO()
    con = Console(file=buf, width=width, force_terminal=False, color_system=None, highlight=False)
    cand = report["candidate"]
    con.print(f"Replay of {cand['source']} ({cand['version']})", markup=False)
    if report["message"]:
        con.print(report["message"], markup=False)
    con.print(_headline(report), markup=False)
    con.print(_fidelity_line(report), markup=False)
    if report["transitions"]:
        t = Table(title="Transitions", title_justify="left")
        for col in ("from", "to", "calls", "share"):
            t.add_column(col, justify="right" if col in ("calls", "share") else "left")
        for tr in report["transitions"]:
            t.add_row(tr["from"], tr["to"], str(tr["count"]), _pct(tr["share"]))
        con.print(t)
        for tr in report["transitions"]:
            con.print(f"examples of {tr['name']}:", markup=False)
            for ex in tr["examples"]:
                con.print(
                    f"  {ex['start_time']} {ex['agent_id'] or '-'} {ex['tool']}: "
                    f"{ex['from_rule']} ({ex['from_message'] or 'no message'}) -> "
                    f"{ex['to_rule']} ({ex['to_message'] or 'no message'})",
                    markup=False,
                )
    for key, label in (("agents", "agent"), ("tools", "tool"), ("rules", "rule")):
        rows = report["most_affected"][key]
        if not rows:
            continue
        t = Table(title=f"Most affected {key}", title_justify="left")
        t.add_column(label)
        for col in ("changed", "newly denied", "newly allowed"):
            t.add_column(col, justify="right")
        for r in rows:
            t.add_row(
                r["name"] or "-", str(r["changed"]), str(r["newly_denied"]), str(r["newly_allowed"])
            )
        con.print(t)
    points = report["newly_denied_over_time"]["points"]
    if any(p["count"] for p in points):
        con.print(
            f"newly denied over time ({points[0]['start']} .. {points[-1]['start']}): "
            f"{sparkline([p['count'] for p in points])}",
            markup=False,
        )
    _print_store_notes(con, report)
    for g in report["gates"]:
        con.print(
            f"gate {g['rule']}: {'FAILED' if g['failed'] else 'passed'} (value {g['value']})",
            markup=False,
        )
    return buf.getvalue()


def _print_store_notes(con: Console, report: dict[str, Any]) -> None:
    for s in report["store"]["skipped_files"]:
        con.print(f"skipped unreadable file {s['path']}: {s['reason']}", markup=False)
    for s in report["store"]["invalid_policy_files"]:
        con.print(f"ignored policy file {s['path']}: {s['reason']}", markup=False)


# --------------------------------------------------------------------------- markdown


def _code(text: Any, *, cell: bool = False) -> str:
    """A code span. Its content is shown literally (CommonMark), so it is not HTML-escaped
    (``&gt;`` would be shown as is); the fence is one backtick longer than any run inside,
    and a table cell's pipes are escaped, as GFM tables need even inside code."""
    s = ("" if text is None else str(text)).replace("\n", " ")
    if cell:
        s = s.replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall("`+", s)), default=0) + 1)
    # CommonMark strips one space from each end of a span that starts and ends with one.
    edge = s[:1] + s[-1:]
    pad = " " if "`" in edge or (edge == "  " and s.strip(" ")) else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def _md(text: Any) -> str:
    """Table-cell text: pipes escaped, newlines flattened, HTML neutralised."""
    s = "" if text is None else str(text)
    return html.escape(s.replace("\n", " ").replace("|", "\\|"), quote=False)


def render_markdown(report: dict[str, Any]) -> str:
    cand = report["candidate"]
    lines = [
        f"### Policy replay: {_code(cand['source'])} ({_md(cand['version'])})",
        "",
        f"**{_headline(report)}**",
        "",
        _fidelity_line(report),
        "",
    ]
    if report["message"]:
        lines += [f"> {_md(report['message'])}", ""]
    if report["transitions"]:
        lines += ["| from | to | calls | share |", "|---|---|---:|---:|"]
        for tr in report["transitions"]:
            lines.append(f"| {tr['from']} | {tr['to']} | {tr['count']} | {_pct(tr['share'])} |")
        lines.append("")
        for tr in report["transitions"]:
            lines += [
                f"<details><summary>Examples of {tr['name']}</summary>",
                "",
                "| time | agent | tool | recorded rule | recorded message | new rule | new message |",
                "|---|---|---|---|---|---|---|",
            ]
            for ex in tr["examples"]:
                lines.append(
                    f"| {_md(ex['start_time'])} | {_md(ex['agent_id'])} | {_md(ex['tool'])} | "
                    f"{_code(ex['from_rule'], cell=True)} | {_md(ex['from_message'])} | {_code(ex['to_rule'], cell=True)} | "
                    f"{_md(ex['to_message'])} |"
                )
            lines += ["", "</details>", ""]
    for key in ("agents", "tools", "sessions", "rules"):
        rows = report["most_affected"][key]
        if not rows:
            continue
        lines += [
            f"**Most affected {key}**",
            "",
            "| name | changed | newly denied | newly allowed |",
            "|---|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(
                f"| {_md(r['name'])} | {r['changed']} | {r['newly_denied']} | {r['newly_allowed']} |"
            )
        lines.append("")
    points = report["newly_denied_over_time"]["points"]
    if any(p["count"] for p in points):
        lines += [f"Newly denied over time: `{sparkline([p['count'] for p in points])}`", ""]
    for g in report["gates"]:
        mark = "❌" if g["failed"] else "✅"
        lines.append(f"- {mark} gate {_code(g['rule'])} (value {g['value']})")
    for s in report["store"]["skipped_files"]:
        lines.append(f"- skipped unreadable file {_code(s['path'])}: {_md(s['reason'])}")
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- html


def chart_svg(points: list[dict[str, Any]], *, width: int = 720, height: int = 200) -> str:
    """A bar chart of newly denied calls over time, as inline SVG."""
    pad_l, pad_b, pad_t = 40, 24, 10
    n = max(len(points), 1)
    top = max((p["count"] for p in points), default=0) or 1
    bar_w = (width - pad_l) / n
    plot_h = height - pad_b - pad_t
    parts = [
        f'<svg id="newly-denied-chart" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
        "<title>Newly denied calls over time</title>",
        f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{width}" y2="{pad_t + plot_h}" stroke="#888"/>',
        f'<text x="{pad_l - 4}" y="{pad_t + 10}" text-anchor="end" font-size="10">{top}</text>',
        f'<text x="{pad_l - 4}" y="{pad_t + plot_h}" text-anchor="end" font-size="10">0</text>',
    ]
    for i, p in enumerate(points):
        h = plot_h * p["count"] / top
        x = pad_l + i * bar_w
        parts.append(
            f'<rect class="bar" x="{x:.2f}" y="{pad_t + plot_h - h:.2f}" width="{max(bar_w - 1, 0.5):.2f}" '
            f'height="{h:.2f}" fill="#c0392b"><title>{html.escape(str(p["start"]))}: '
            f"{p['count']}</title></rect>"
        )
    if points:
        parts.append(
            f'<text x="{pad_l}" y="{height - 6}" font-size="10">{html.escape(str(points[0]["start"]))}</text>'
        )
        parts.append(
            f'<text x="{width}" y="{height - 6}" text-anchor="end" font-size="10">'
            f"{html.escape(str(points[-1]['start']))}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape('' if c is None else str(c))}</td>" for c in r)
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: dict[str, Any]) -> str:
    e = html.escape
    cand = report["candidate"]
    sections = [
        f"<h1>Policy replay: {e(str(cand['source']))}</h1>",
        f'<p class="version">{e(str(cand["version"]))}</p>',
        f'<p class="headline">{e(_headline(report))}</p>',
        f"<p>{e(_fidelity_line(report))}</p>",
    ]
    if report["message"]:
        sections.append(f'<p class="message">{e(report["message"])}</p>')
    sections.append("<h2>Newly denied calls over time</h2>")
    sections.append(chart_svg(report["newly_denied_over_time"]["points"]))
    sections.append("<h2>Transitions</h2>")
    sections.append(
        _table(
            ["from", "to", "calls", "share"],
            [[t["from"], t["to"], t["count"], _pct(t["share"])] for t in report["transitions"]],
        )
    )
    for t in report["transitions"]:
        sections.append(f"<h3>Examples of {e(t['name'])}</h3>")
        sections.append(
            _table(
                [
                    "time",
                    "agent",
                    "session",
                    "tool",
                    "recorded rule",
                    "recorded message",
                    "new rule",
                    "new message",
                ],
                [
                    [
                        x["start_time"],
                        x["agent_id"],
                        x["session_id"],
                        x["tool"],
                        x["from_rule"],
                        x["from_message"],
                        x["to_rule"],
                        x["to_message"],
                    ]
                    for x in t["examples"]
                ],
            )
        )
    for key in ("agents", "tools", "sessions", "rules"):
        sections.append(f"<h2>Most affected {key}</h2>")
        sections.append(
            _table(
                ["name", "changed", "newly denied", "newly allowed"],
                [
                    [r["name"], r["changed"], r["newly_denied"], r["newly_allowed"]]
                    for r in report["most_affected"][key]
                ],
            )
        )
    if report["gates"]:
        sections.append("<h2>Gates</h2>")
        sections.append(
            _table(
                ["gate", "value", "result"],
                [
                    [g["rule"], g["value"], "FAILED" if g["failed"] else "passed"]
                    for g in report["gates"]
                ],
            )
        )
    # Inside <script>, "<" could end the element or start a comment: keep it out of the text.
    data = (
        json.dumps(report, ensure_ascii=False)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;"
        "font-size:13px;text-align:left}.headline{font-weight:bold}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Policy replay</title><style>{style}</style></head><body>"
        + "".join(sections)
        + f'<script type="application/json" id="report-data">{data}</script>'
        + "</body></html>\n"
    )


__all__ = ["FORMATS", "chart_svg", "render", "sparkline"]
