"""The collector benchmark's sustained load is what it claims: every span new.

Its memory figure is only worth something if no span of the sustained minute is a copy
(the collector would drop copies, and store nothing), so each request made from the
template must carry fresh span ids, call ids, arguments and start times, and still be a
valid OTLP request.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from callward import semconv

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_collector.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_collector", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load()


def _spans(data: bytes) -> list:
    request = ExportTraceServiceRequest.FromString(data)
    return list(request.resource_spans[0].scope_spans[0].spans)


def _attr(span, key: str) -> str:
    return next(kv.value.string_value for kv in span.attributes if kv.key == key)


@settings(max_examples=20, deadline=None)
@given(first=st.integers(min_value=0, max_value=10**6), requests=st.integers(1, 3))
def test_fresh_spans_are_all_new(first: int, requests: int) -> None:
    fresh = bench.FreshSpans(first=first)
    before = time.time_ns()
    spans = [span for _ in range(requests) for span in _spans(fresh.next())]
    after = time.time_ns()
    n = bench.SPANS_PER_REQUEST
    assert len(spans) == requests * n
    numbers = range(first * n, (first + requests) * n)
    assert [int.from_bytes(s.span_id, "big") for s in spans] == list(numbers)
    assert [_attr(s, semconv.GEN_AI_TOOL_CALL_ID) for s in spans] == [
        f"sustained-call-{k:012d}" for k in numbers
    ]
    assert [json.loads(_attr(s, semconv.GEN_AI_TOOL_CALL_ARGUMENTS)) for s in spans] == [
        {"path": f"/srv/data/sustained-{k:012d}.txt"} for k in numbers
    ]
    for span in spans:
        assert before <= span.start_time_unix_nano <= after
        assert span.end_time_unix_nano == span.start_time_unix_nano + 1_000_000
        assert len(span.trace_id) == 16
