"""The wheel works on its own: built from this tree, installed into a fresh virtualenv, run
with no source tree on the path.

The fresh environment gets callward from the wheel and nothing else of this repository.
Its third-party dependencies are borrowed from the running environment through a plain
path entry (not a site directory, so that environment's own ``.pth`` files, among them
the editable install's finder, are not processed): installing Streamlit, Polars and
DuckDB again would only test pip.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kw)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-w",
            str(out),
            str(REPO),
        ],
        cwd=out,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = out.glob("callward-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with only the wheel installed; returns its bin directory."""
    home = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(home)
    python = home / "bin" / "python"
    done = _run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        cwd=home,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    site = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            cwd=home,
        ).stdout.strip()
    )
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return home / "bin"


def test_callward_is_the_only_top_level_name(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"callward"}, sorted(tops)
    # Every component and the shipped examples are inside it, as real files.
    for inside in (
        "callward/cli.py",
        "callward/enforcer/engine.py",
        "callward/collector/__init__.py",
        "callward/proto/callward/v1/enforcer_pb2.py",
        "callward/examples/policies/demo.yaml",
        "callward/examples/policies/seed.json",
        "callward/py.typed",
        "callward/data/secret_rules.json",
        "callward/data/LICENSE.gitleaks",
    ):
        assert inside in names, inside
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith("LICENSE") for n in names)


def test_version_from_the_installed_wheel(installed: Path, tmp_path: Path) -> None:
    out = _run([str(installed / "callward"), "--version"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("callward ")
    assert out.stdout.split()[1][0].isdigit()


def test_imports_come_from_the_wheel_not_the_tree(installed: Path, tmp_path: Path) -> None:
    out = _run(
        [
            str(installed / "python"),
            "-c",
            "import callward, callward.enforcer.engine as e; print(callward.__file__); print(e.__file__)",
        ],
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    for line in out.stdout.split():
        assert str(installed.parent) in line and str(REPO) not in line, out.stdout


def test_policy_check_on_a_shipped_example(installed: Path, tmp_path: Path) -> None:
    where = _run(
        [
            str(installed / "python"),
            "-c",
            "from callward.bundled import example_policy; print(example_policy('seed.json'))",
        ],
        cwd=tmp_path,
    )
    assert where.returncode == 0, where.stderr
    seed = Path(where.stdout.strip())
    assert seed.is_file() and str(REPO) not in str(seed)
    ok = _run([str(installed / "callward"), "policy", "check", str(seed)], cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": "1", "default": "maybe"}')
    bad = _run([str(installed / "callward"), "policy", "check", str(broken)], cwd=tmp_path)
    assert bad.returncode != 0


def test_datasets_generate_with_its_defaults(installed: Path, tmp_path: Path) -> None:
    help_text = _run([str(installed / "callward"), "datasets", "generate", "--help"], cwd=tmp_path)
    assert help_text.returncode == 0, help_text.stderr
    out = _run(
        [str(installed / "callward"), "datasets", "generate", "--out", str(tmp_path / "lab")],
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    files = list((tmp_path / "lab").rglob("*.parquet"))
    assert files, out.stdout
