"""BENCHMARKS.md says what the scripts print, with commands that run.

Each section is kept beside its script as ``benchmarks/<name>.md`` (headings one level
up, its own title); BENCHMARKS.md must hold the same text, so that neither copy drifts.
Every command a section gives (a line running ``benchmarks/<script>.py``) must name a
script that exists and only options that script accepts, as its ``--help`` lists them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "BENCHMARKS.md"
SECTIONS = sorted((REPO / "benchmarks").glob("*.md"))
COMMAND = re.compile(r"(?:^|\s)\S*python\S* (benchmarks/[\w.]+\.py)([^\n#`]*)")


def section_body(markdown: str) -> str:
    """A section's text without its title line, headings as they stand in BENCHMARKS.md."""
    title, _, body = markdown.partition("\n")
    if title.startswith("# "):  # kept one level up beside the script
        body = re.sub(r"(?m)^(#+) ", r"#\1 ", body)
    return body.strip()


def benchmark_sections(text: str) -> list[str]:
    """The bodies of BENCHMARKS.md's ``## `` sections."""
    return [section_body(part) for part in re.split(r"(?m)^(?=## )", text)[1:]]


@pytest.mark.parametrize("path", SECTIONS, ids=lambda p: p.name)
def test_section_is_in_benchmarks_md(path: Path) -> None:
    body = section_body(path.read_text(encoding="utf-8"))
    assert body in benchmark_sections(BENCHMARKS.read_text(encoding="utf-8")), (
        f"{path.name} and its section of BENCHMARKS.md differ"
    )


def commands(text: str) -> list[tuple[str, list[str]]]:
    """(script, options) of every benchmark command in ``text``."""
    return [(script, re.findall(r"--[\w-]+", rest)) for script, rest in COMMAND.findall(text)]


def test_commands_are_found() -> None:
    # The pattern must see the commands, or the next test would pass on nothing.
    found = commands(BENCHMARKS.read_text(encoding="utf-8"))
    assert ("benchmarks/bench_enforcer.py", []) in found
    assert ("benchmarks/bench_collector.py", []) in found
    assert ("benchmarks/bench_proxy.py", ["--calls", "--rounds"]) in found


@pytest.mark.parametrize("path", [BENCHMARKS, *SECTIONS], ids=lambda p: p.name)
def test_commands_run_as_written(path: Path, script_options: dict[str, set[str]]) -> None:
    for script, options in commands(path.read_text(encoding="utf-8")):
        assert (REPO / script).is_file(), f"{path.name}: {script} does not exist"
        unknown = set(options) - script_options[script]
        assert not unknown, f"{path.name}: {script} does not accept {sorted(unknown)}"


@pytest.fixture(scope="module")
def script_options() -> dict[str, set[str]]:
    """The options each benchmark script's ``--help`` lists."""

    def shown(script: Path, *sub: str) -> str:
        return subprocess.run(
            [sys.executable, str(script), *sub, "--help"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout

    out = {}
    for script in sorted((REPO / "benchmarks").glob("*.py")):
        text = shown(script)
        # A script with subcommands (``{run,report}``) lists their options in their help.
        usage = re.search(r"usage:[^\n]*\{([\w,-]+)\}", text)
        for sub in usage.group(1).split(",") if usage else []:
            text += shown(script, sub)
        out[f"benchmarks/{script.name}"] = set(re.findall(r"--[\w-]+", text))
    return out
