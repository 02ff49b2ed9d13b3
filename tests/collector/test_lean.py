"""The collector's processes run without pandas (collector/lean.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_PROBE = """
import sys
from callward.collector.lean import keep_pandas_out
assert keep_pandas_out()
import pyarrow as pa
from callward.collector.decode import Decoder
from callward.collector.otlp_build import tool_call_batch
import time
result = Decoder().decode(tool_call_batch(3), time.time_ns())
assert result.table.num_rows == 3, result.reasons
assert result.table.to_pylist()[0]["tool"] == "read_file"
assert "pandas" not in sys.modules, "pandas was loaded"
try:
    import pandas
except ModuleNotFoundError:
    print("refused")
"""


def test_decoding_works_and_pandas_stays_out() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "refused"


def test_a_process_already_using_pandas_is_left_alone() -> None:
    probe = "import pandas\nfrom collector.lean import keep_pandas_out\nprint(keep_pandas_out())"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
