"""End to end: the proxy process exports its spans over OTLP to a real collector, and every
call, allowed or denied, lands in the store with its decision."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from callward.collector.config import load_config
from callward.collector.schema import DUCKDB_FILE
from callward.collector.service import Collector
from tests.proxy.conftest import REPO

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180, func_only=True)]


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[tuple[Collector, int, Path]]:
    data = tmp_path / "store"
    config = load_config(
        environ={},
        data_dir=data,
        listen="127.0.0.1:0",
        decode_workers=0,
        flush_interval_s=60.0,
        idle_flush_s=0.0,
    )
    service = Collector(config)
    port = service.start()
    yield service, port, data
    service.stop()


def rows(data: Path, sql: str) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(data / DUCKDB_FILE), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


async def test_every_call_reaches_the_audit_trail(
    collector: tuple[Collector, int, Path], time_server: Path, tmp_path: Path
) -> None:
    service, port, data = collector
    policy = tmp_path / "time.json"
    policy.write_text('{"version": "1", "default": "deny", "tools": {"get_current_time": {}}}')
    params = StdioServerParameters(
        command=sys.executable,
        args=[
            "-m", "callward.enforcer.proxy",
            "--policy", str(policy),
            "--grant", "auditor",
            "--server", "time",
            "--otlp-endpoint", f"http://127.0.0.1:{port}",
            "--", str(time_server),
        ],
        cwd=str(REPO),
    )  # fmt: skip
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        ok = await session.call_tool("get_current_time", {"timezone": "Etc/UTC"})
        denied = await session.call_tool(
            "convert_time",
            {"source_timezone": "Etc/UTC", "time": "09:30", "target_timezone": "Asia/Tokyo"},
        )
    assert not ok.isError and denied.isError
    # The proxy flushes its spans on exit; the collector writes them on flush.
    deadline = time.monotonic() + 60
    got: list[tuple[object, ...]] = []
    while time.monotonic() < deadline:
        service.flush()
        if (data / DUCKDB_FILE).exists():
            got = rows(
                data,
                "select tool, decision, rule, outcome, grant, server, service_name "
                "from tool_calls order by tool",
            )
            if len(got) >= 2:
                break
        time.sleep(0.3)
    assert got == [
        ("convert_time", "deny", "/default", "", "auditor", "time", "callward-proxy"),
        ("get_current_time", "allow", "/tools/get_current_time", "ok", "auditor", "time", "callward-proxy"),
    ]  # fmt: skip
