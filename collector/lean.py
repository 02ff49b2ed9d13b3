"""Keep pandas out of the collector's processes.

pyarrow, when pandas is installed, imports it on first use of many ordinary functions
(``pa.array``, ``Table.to_pylist``, compute kernels) only to check whether an argument
is a pandas object. The collector never hands it one, yet the import costs each process
about 45 MB of memory and a second or more of CPU at the first Parquet flush. Only
processes that belong to the collector alone call :func:`keep_pandas_out`: the
``callward collector`` command and its decode workers, never a process that hosts a
Collector next to other code.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType


class _NoPandas:
    """A finder that makes ``import pandas`` fail; pyarrow then treats pandas as absent."""

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError("the collector process does not load pandas", name=name)
        return None


def keep_pandas_out() -> bool:
    """Make later ``import pandas`` fail in this process. Returns False (and does
    nothing) when pandas is already imported, since something here uses it."""
    if "pandas" in sys.modules:
        return False
    if not any(isinstance(f, _NoPandas) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoPandas())
    return True
