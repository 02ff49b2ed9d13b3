"""The small sample store committed under datasets/sample/, and how to rebuild it.

    callward datasets generate --out datasets/sample --agents 7 --days 3 --seed 7 --calls 20000

(or ``python -m callward.datasets.sample_store``). The DuckDB file is not committed: its view holds
the absolute path of the store, so readers recreate it with
:func:`collector.store.ensure_store` (or read the Parquet files directly).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from callward.collector.schema import DUCKDB_FILE
from callward.datasets.generator import GenerateConfig, generate

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
SAMPLE_AGENTS = 7
SAMPLE_DAYS = 3
SAMPLE_SEED = 7
SAMPLE_CALLS = 20_000


def sample_config(out: Path = SAMPLE_DIR) -> GenerateConfig:
    return GenerateConfig(
        out=out, agents=SAMPLE_AGENTS, days=SAMPLE_DAYS, seed=SAMPLE_SEED, calls=SAMPLE_CALLS
    )


def build_sample(out: Path = SAMPLE_DIR) -> None:
    """Regenerate the sample from scratch (the same seed gives the same content)."""
    shutil.rmtree(out, ignore_errors=True)
    generate(sample_config(out))
    (out / DUCKDB_FILE).unlink(missing_ok=True)
    (out / "policies").rmdir() if (out / "policies").exists() and not any(
        (out / "policies").iterdir()
    ) else None


if __name__ == "__main__":
    build_sample()
