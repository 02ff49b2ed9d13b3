"""Which installed packages only the dev extras bring, and a guard that keeps them out.

``make demo`` installs the runtime dependencies only, so the demo must never import a
package that only ``.[dev]`` installs. :func:`dev_only_modules` works that set out from
the installed metadata (the dev extras minus everything the runtime dependencies pull
in), and :func:`guard_dir` writes a ``sitecustomize`` that refuses to import them in
every Python process started with it on ``PYTHONPATH``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def _requirements(dist: str, extra: str = "") -> list[Requirement]:
    try:
        raw = requires(dist) or []
    except PackageNotFoundError:
        return []
    out = []
    for line in raw:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": extra}):
            out.append(req)
    return out


def _closure(roots: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        todo.extend(r.name for r in _requirements(name))
    return seen


# What the Makefile puts into every virtualenv before the project itself.
BOOTSTRAP = ("pip", "setuptools", "wheel")


def dev_only_modules(project: str = "callward") -> set[str]:
    """Top-level import names of the distributions only the dev extras install."""
    runtime = _closure([r.name for r in _requirements(project)] + list(BOOTSTRAP))
    with_dev = _closure([r.name for r in _requirements(project, "dev")])
    dev_only = with_dev - runtime
    return {
        module
        for module, dists in packages_distributions().items()
        if dists and all(canonicalize_name(d) in dev_only for d in dists)
    }


GUARD = """
import sys

BLOCKED = frozenset({blocked!r})


class _DevOnly:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(
                f"{{name}} is installed by the dev extras only; the demo may not import it",
                name=name,
            )
        return None


sys.meta_path.insert(0, _DevOnly())
"""


def guard_dir(where: Path, blocked: set[str]) -> Path:
    """A directory whose ``sitecustomize`` refuses to import ``blocked`` modules."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "sitecustomize.py").write_text(GUARD.format(blocked=sorted(blocked)))
    return where
