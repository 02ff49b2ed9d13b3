"""The committed sample store: the schema, its labels, its quality, and its seed."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as ds
import pytest

from callward.collector.schema import PARQUET_DIR, TOOL_CALL_SCHEMA
from callward.datasets.generator import generate
from callward.datasets.labels import read_labels
from callward.datasets.sample_store import SAMPLE_DIR, sample_config
from callward.datasets.scoring import score
from callward.detectors import KINDS, detect


def table(d: Path):
    return ds.dataset(d / PARQUET_DIR, format="parquet", partitioning="hive").to_table()


def test_sample_is_small_and_in_the_schema() -> None:
    size = sum(p.stat().st_size for p in SAMPLE_DIR.rglob("*") if p.is_file())
    assert size < 5 * 1024 * 1024
    t = table(SAMPLE_DIR)
    assert t.num_rows > 20_000
    for field in TOOL_CALL_SCHEMA:
        assert t.schema.field(field.name).type == field.type


def test_sample_labels_match_the_store_and_the_detectors() -> None:
    labels = read_labels(SAMPLE_DIR)
    spans = set(table(SAMPLE_DIR).column("span_id").to_pylist())
    assert labels and all(set(lab.span_ids) <= spans for lab in labels)
    card = score(detect(SAMPLE_DIR), labels)
    for kind in KINDS:
        assert card.by_kind[kind].precision >= 0.9 and card.by_kind[kind].recall >= 0.9


@pytest.mark.timeout(300)
def test_sample_is_reproducible_from_its_seed(tmp_path: Path) -> None:
    out = tmp_path / "sample"
    generate(sample_config(out))
    assert (
        table(out)
        .drop(["date"])
        .sort_by("span_id")
        .equals(table(SAMPLE_DIR).drop(["date"]).sort_by("span_id"))
    )
    assert (out / "labels.jsonl").read_text() == (SAMPLE_DIR / "labels.jsonl").read_text()
