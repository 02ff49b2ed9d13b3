"""Files that ship inside the package: the example policies and token files.

They are package data read through :mod:`importlib.resources`, so a wheel install finds
them without a source tree; in the source tree they are the repository's ``examples/``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def example(*parts: str) -> Path:
    """The path of a shipped example, e.g. ``example("policies", "demo.yaml")``.

    callward is installed as plain files (never zipped), so the resource is a real path.
    """
    return Path(str(resources.files("callward").joinpath("examples", *parts)))


def example_policy(name: str) -> Path:
    """A shipped example policy by file name (``demo.yaml``, ``seed.json``, ...)."""
    return example("policies", name)
