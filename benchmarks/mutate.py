"""Mutation testing of the decision core and the detectors' role logic, with mutmut.

Not a test: it runs mutmut one module at a time (one worker, a time budget per module)
and prints, per module, how many mutants the tests killed, how many survived and how
many ran out of time. ``make mutate`` runs it; ``report`` reprints the table from the
results mutmut keeps in ``mutants/`` without running anything.

    .venv/bin/python benchmarks/mutate.py run [--budget 900] [--module limits ...] [--keep]
    .venv/bin/python benchmarks/mutate.py rerun [--also GLOB] [--module limits ...]
    .venv/bin/python benchmarks/mutate.py report [--survivors]

``rerun`` runs again only the mutants that survived (or that no test executed), after
tests were added: adding tests cannot bring a killed mutant back. ``--also`` adds the
mutants of functions that were edited meanwhile (mutmut resets their results).

mutmut reads its configuration (the files to mutate, the fast test files that may kill a
mutant) from ``[tool.mutmut]`` in pyproject.toml. Property tests run under the ``repro``
Hypothesis profile, so a mutant's survival is reproducible from run to run. For each
mutant mutmut runs only the selected tests that execute the mutated function.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
MUTANTS = REPO / "mutants"


class Module(NamedTuple):
    name: str
    path: str  # under callward/, as in [tool.mutmut] source_paths
    patterns: tuple[str, ...]  # mutant names to run (fnmatch); the rest are not counted
    scope: str  # what of the module is mutated, for the table


MODULES = (
    Module("limits", "callward/enforcer/limits.py", ("callward.enforcer.limits.*",), "all"),
    Module("engine", "callward/enforcer/engine.py", ("callward.enforcer.engine.*",), "all"),
    Module(
        "conditions", "callward/enforcer/conditions.py", ("callward.enforcer.conditions.*",), "all"
    ),
    Module(
        "policy_load",
        "callward/enforcer/policy_load.py",
        ("callward.enforcer.policy_load.xǁ_Validatorǁ*",),
        "the validator (`_Validator`)",
    ),
    Module(
        "detectors.calls",
        "callward/detectors/calls.py",
        ("callward.detectors.calls.x__classify_tools*",),
        "tool roles (`_classify_tools`)",
    ),
)

# mutmut's exit codes per mutant (mutmut.stats.status_by_exit_code), folded into the four
# columns of the table. A mutant no selected test executes is "no tests": it survives too.
KILLED = {1, 3, 37}
SURVIVED = {0}
NO_TESTS = {5, 33}
TIMEOUT = {36, 24, -24, 152, 255}


def mutmut_bin() -> str:
    here = Path(sys.executable).parent / "mutmut"
    return str(here) if here.exists() else "mutmut"


def run_module(module: Module, budget: float, names: tuple[str, ...] = ()) -> float:
    """Run mutmut on one module's mutants (or on ``names``), stopping it after ``budget``
    seconds."""
    env = dict(os.environ, HYPOTHESIS_PROFILE="repro")
    cmd = [mutmut_bin(), "run", "--max-children", "1", *(names or module.patterns)]
    shown = " ".join(cmd) if not names else f"{' '.join(cmd[:4])} <{len(names)} mutants>"
    print(f"== {module.name}: {shown} (budget {budget:.0f} s)", flush=True)
    start = time.monotonic()
    # A session of its own, so the budget stops mutmut's forked workers too.
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL
    )
    try:
        proc.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        print("   budget reached; the mutants left are counted as not run", flush=True)
    return time.monotonic() - start


def results(module: Module) -> dict[str, int | None]:
    meta = MUTANTS / (module.path + ".meta")
    if not meta.exists():
        return {}
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    return {
        k: v for k, v in codes.items() if any(fnmatch.fnmatchcase(k, p) for p in module.patterns)
    }


def tally(codes: dict[str, int | None]) -> Counter[str]:
    c: Counter[str] = Counter()
    for v in codes.values():
        if v is None:
            c["not run"] += 1
        elif v in KILLED:
            c["killed"] += 1
        elif v in SURVIVED:
            c["survived"] += 1
        elif v in NO_TESTS:
            c["no tests"] += 1
        elif v in TIMEOUT:
            c["timeout"] += 1
        else:
            c["other"] += 1
    return c


def table(modules: tuple[Module, ...]) -> str:
    rows = [
        "| module | mutated | killed | survived | no tests | timeout | not run | total"
        " | survival rate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in modules:
        codes = results(m)
        c = tally(codes)
        ran = c["killed"] + c["survived"] + c["no tests"] + c["timeout"] + c["other"]
        lived = c["survived"] + c["no tests"]
        rate = f"{100 * lived / ran:.1f} %" if ran else "–"
        rows.append(
            f"| `{m.path.removeprefix('callward/')}` | {m.scope} | {c['killed']} | "
            f"{c['survived']} | {c['no tests']} | {c['timeout']} | {c['not run']} | "
            f"{len(codes)} | {rate} |"
        )
    return "\n".join(rows)


def survivors(modules: tuple[Module, ...]) -> list[str]:
    return [k for m in modules for k, v in sorted(results(m).items()) if v in SURVIVED | NO_TESTS]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run mutmut per module, then print the table")
    run.add_argument("--budget", type=float, default=900, help="seconds per module")
    run.add_argument("--module", action="append", choices=[m.name for m in MODULES])
    run.add_argument("--keep", action="store_true", help="reuse the results in mutants/")
    again = sub.add_parser("rerun", help="run the survivors again, then print the table")
    again.add_argument("--budget", type=float, default=900, help="seconds per module")
    again.add_argument("--module", action="append", choices=[m.name for m in MODULES])
    again.add_argument("--also", action="append", default=[], help="mutant names (globs)")
    rep = sub.add_parser("report", help="print the table from mutants/")
    rep.add_argument("--module", action="append", choices=[m.name for m in MODULES])
    rep.add_argument("--survivors", action="store_true", help="list the surviving mutants")
    args = ap.parse_args()
    chosen = tuple(m for m in MODULES if not args.module or m.name in args.module)
    if args.cmd == "run":
        if not args.keep and MUTANTS.exists():
            shutil.rmtree(MUTANTS)
        for m in chosen:
            took = run_module(m, args.budget)
            print(f"   {took:.0f} s", flush=True)
    if args.cmd == "rerun":
        for m in chosen:
            also = [g for g in args.also if any(fnmatch.fnmatchcase(g, p) for p in m.patterns)]
            names = (*survivors((m,)), *also)
            if names:
                took = run_module(m, args.budget, names)
                print(f"   {took:.0f} s", flush=True)
    print(table(chosen))
    if args.cmd == "report" and args.survivors:
        print("\n".join(survivors(chosen)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
