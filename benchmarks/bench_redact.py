"""Redaction benchmark: what the maintained ruleset (gitleaks' rules, callward/data/
secret_rules.json) costs on clean text, the text every call and every span carries.

    python benchmarks/bench_redact.py                 # about a minute
    python benchmarks/bench_redact.py --quick
    python benchmarks/bench_redact.py --before <git ref>

"Before" is callward/redact.py as it was at ``--before`` (by default the commit before the
ruleset came in), loaded from git into this process; "after" is the current module. Both
run in the same process in interleaved rounds (median of the rounds), so the ratio holds
on a noisy machine. Not a test: no figure is asserted anywhere.

Measured per text: ``redact_text`` and ``redact_json_text`` on clean values (ids, a tool
name, typical arguments, a paragraph, a 10 KB file body), on text that passes the screen
but holds no secret (``max_tokens``), and ``clean_texts`` over a batch of 1,000 values
(the collector's screen for values seen once).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from callward import redact as after  # noqa: E402

console = Console(highlight=False)

PROSE = (
    "The build finished on the second attempt after the cache was warmed; the report lists "
    "three flaky tests in the scheduler module and one slow query in the billing service. "
)
CLEAN: dict[str, str] = {
    "call id (uuid)": "3f2b9c1e-8d4a-4b6f-9e2a-7c1d5e8f0a3b",
    "tool name": "read_file",
    "arguments, typical": json.dumps(
        {"path": "/srv/app/docs/readme.md", "offset": 0, "limit": 200, "mode": "text"}
    ),
    "arguments, SQL": json.dumps(
        {"query": "select id, total from orders where created_at > now() - interval '1 day'"}
    ),
    "paragraph (1 KB)": PROSE * 6,
    "file body (10 KB)": PROSE * 60,
    "passes the screen, no secret": json.dumps({"max_tokens": 512, "temperature": 0.2}),
}
BATCH = [f"call-{i}-{'abcdef'[i % 6]}" for i in range(500)] + ["read_file", "agent-7"] * 250


def load_before(ref: str) -> types.ModuleType:
    """callward/redact.py at ``ref``, as a module of its own."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{ref}:callward/redact.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    spec = importlib.util.spec_from_loader("callward_redact_before", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    exec(compile(source, f"{ref}:callward/redact.py", "exec"), module.__dict__)
    return module


def default_before() -> str:
    added = subprocess.run(
        [
            "git",
            "-C",
            str(REPO),
            "log",
            "--diff-filter=A",
            "--format=%H",
            "--",
            "callward/secret_rules.py",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return f"{added[-1]}^" if added else "HEAD"


def per_call_us(fn: Callable[[], Any], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=None, help="git ref of the 'before' redact.py")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    ref = args.before or default_before()
    before = load_before(ref)
    rounds, number = (3, 300) if args.quick else (7, 1000)
    old, new = before.Redactor(), after.Redactor()
    for r in (old, new):
        for text in CLEAN.values():  # same answers before and after on these
            assert r.redact_json_text(text) == text and r.redact_text(text) == text
    cases: list[tuple[str, str, Callable[[Any], Callable[[], Any]]]] = []
    for label, text in CLEAN.items():
        n = number if len(text) < 2000 else max(50, number // 10)
        cases.append((label, "redact_text", lambda r, t=text: lambda: r.redact_text(t)))
        cases.append((label, "redact_json_text", lambda r, t=text: lambda: r.redact_json_text(t)))
    cases.append(("1,000 values", "clean_texts", lambda r: lambda: r.clean_texts(BATCH)))
    results: dict[tuple[str, str], tuple[list[float], list[float]]] = {
        (label, fn): ([], []) for label, fn, _ in cases
    }
    for _ in range(rounds):
        for label, fn, make in cases:
            text = CLEAN.get(label, "")
            n = number if len(text) < 2000 else max(50, number // 10)
            if fn == "clean_texts":
                n = max(10, number // 50)
            results[(label, fn)][0].append(per_call_us(make(old), n))
            results[(label, fn)][1].append(per_call_us(make(new), n))
    table = Table(title=f"clean-text redaction, before ({ref}) and after, µs per call")
    for col in ("text", "call", "chars", "before µs", "after µs", "after / before"):
        table.add_column(
            col, justify="right" if col.endswith(("µs", "before", "chars")) else "left"
        )
    for label, fn, _ in cases:
        b, a = (statistics.median(v) for v in results[(label, fn)])
        chars = sum(map(len, BATCH)) if fn == "clean_texts" else len(CLEAN[label])
        table.add_row(label, fn, f"{chars:,}", f"{b:,.2f}", f"{a:,.2f}", f"{a / b:.2f}")
    console.print(table)
    console.print(
        f"rules: before {len(before.BUILTIN_KINDS)} built-in kinds; after "
        f"{len(after.BUILTIN_KINDS)} built-in + {len(after.RULESET)} from the ruleset; "
        f"screen triggers before {len(before._ALL_TRIGGERS)}, after {len(after._ALL_TRIGGERS)}"
    )


if __name__ == "__main__":
    main()
