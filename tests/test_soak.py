"""A short bounded soak in ``make test``: ``benchmarks/soak.py`` for a few seconds.

The real enforcer and collector, as processes, under steady Check/Report traffic; then
both stopped with SIGTERM and the store counted. What can be asserted in seconds is
asserted: every answered call is a row exactly once, and neither process gains file
descriptors once warm. Memory over time is the 30-minute soak's figure (BENCHMARKS.md).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _soak_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("callward_soak", REPO / "benchmarks" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_short_soak_loses_nothing_and_leaks_no_descriptors(tmp_path: Path) -> None:
    soak = _soak_module()
    result = soak.soak(seconds=15, rate=120, clients=2, work=tmp_path)
    assert result.calls > 500, result.summary()
    assert result.errors == 0, result.summary()
    assert result.missing == 0 and result.duplicates == 0, result.summary()
    assert result.rows == result.calls
    warm, last = result.after_warmup()[0], result.samples[-1]
    for name in ("enforcer", "collector"):
        assert last.fds[name] <= warm.fds[name] + 4, result.summary()
