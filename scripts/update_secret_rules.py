"""Refresh callward's secret ruleset from gitleaks' ``config/gitleaks.toml``.

    python scripts/update_secret_rules.py                 # clone gitleaks, take its HEAD
    python scripts/update_secret_rules.py --repo ../gitleaks --ref v8.28.0

Writes ``callward/data/secret_rules.json`` (the converted rules, with the source, the
commit and the licence) and ``callward/data/LICENSE.gitleaks``, then prints what was kept
and every rule dropped with its reason. Review the diff and run ``tests/test_redact.py``
and ``tests/test_secret_rules.py`` before committing; ``benchmarks/bench_redact.py``
shows what the new rules cost.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from callward.secret_rules import DATA_FILE, LICENCE_FILE, convert  # noqa: E402

UPSTREAM = "https://github.com/gitleaks/gitleaks"
OUT_DIR = REPO / "callward" / "data"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, help="a local clone of gitleaks (else cloned)")
    parser.add_argument("--ref", default="HEAD", help="the commit, tag or branch to take")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        repo = args.repo
        if repo is None:
            repo = Path(tmp) / "gitleaks"
            subprocess.run(["git", "clone", "--quiet", UPSTREAM, str(repo)], check=True)
        commit = _git(repo, "rev-parse", f"{args.ref}^{{commit}}").strip()
        config = tomllib.loads(_git(repo, "show", f"{commit}:config/gitleaks.toml"))
        licence = _git(repo, "show", f"{commit}:LICENSE")
    data = convert(config, commit)
    (OUT_DIR / DATA_FILE).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    (OUT_DIR / LICENCE_FILE).write_text(
        f"The rules in {DATA_FILE} are converted from gitleaks' config/gitleaks.toml\n"
        f"({data['source']}), under this licence:\n\n{licence}"
    )
    print(
        f"{len(data['rules'])} rules from gitleaks {commit[:12]}; dropped {len(data['dropped'])}:"
    )
    for entry in data["dropped"]:
        print(f"  {entry['id']}: {entry['reason']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
