"""The stdio way in: bounded line reading, and the real ``callward proxy`` process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.types import TextContent
from typer.testing import CliRunner

from callward.enforcer.proxy.cli import register
from callward.enforcer.proxy.relay import MESSAGE_TOO_LARGE, OVERSIZE_METHOD, PARSE_ERROR
from callward.enforcer.proxy.stdio import BoundedLines, oversize_stand_in
from tests.proxy.conftest import MISBEHAVING, REPO

pytestmark = pytest.mark.timeout(120, func_only=True)  # a first install from PyPI is setup


class ChunkedBytes:
    """A byte source that hands out data in the given chunk sizes (like a pipe would)."""

    def __init__(self, data: bytes, sizes: list[int]):
        self.data = data
        self.sizes = sizes or [len(data) or 1]
        self.i = 0

    async def read1(self, n: int) -> bytes:
        size = min(n, self.sizes[self.i % len(self.sizes)])
        self.i += 1
        out, self.data = self.data[:size], self.data[size:]
        return out


async def _collect(lines: BoundedLines) -> list[str]:
    return [line async for line in lines]


def read_all(data: bytes, limit: int, sizes: list[int]) -> list[str]:
    return anyio.run(
        _collect, BoundedLines(ChunkedBytes(data, sizes), limit, chunk=4096, screen=None)
    )


line_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\n\r"),
    min_size=1,
    max_size=60,
).filter(lambda s: s.strip() != "")


@given(st.lists(line_text, max_size=15), st.lists(st.integers(1, 97), min_size=1, max_size=5))
def test_lines_within_the_limit_come_through_whatever_the_chunking(
    lines: list[str], sizes: list[int]
) -> None:
    data = "".join(f"{line}\n" for line in lines).encode()
    assert read_all(data, 1024, sizes) == [f"{line}\n" for line in lines]


@given(
    st.lists(st.tuples(st.booleans(), st.integers(1, 300)), max_size=10),
    st.lists(st.integers(1, 50), min_size=1, max_size=4),
)
def test_oversize_lines_are_replaced_and_the_rest_survives(
    shape: list[tuple[bool, int]], sizes: list[int]
) -> None:
    limit = 100
    lines = [("x" * n) if big else f"ok{i}" for i, (big, n) in enumerate(shape)]
    data = "".join(f"{line}\n" for line in lines).encode()
    got = read_all(data, limit, sizes)
    assert len(got) == len(lines)
    for line, out in zip(lines, got, strict=True):
        if len(line) + 1 > limit + 1:
            stand_in = json.loads(out)
            assert stand_in["method"] == OVERSIZE_METHOD
            assert stand_in["params"] == {"bytes": len(line) + 1, "limit": limit}
        else:
            assert out == f"{line}\n"


def test_oversize_stand_in_keeps_the_request_id_when_it_can() -> None:
    with_id = json.loads(
        oversize_stand_in(b'{"jsonrpc":"2.0","id":42,"method":"x","params":{"a":"', 9, 5)
    )
    assert with_id["id"] == 42
    string_id = json.loads(oversize_stand_in(b'{"id": "abc\\"d", "method":', 9, 5))
    assert string_id["id"] == 'abc"d'
    hostile = json.loads(oversize_stand_in(b'{"params":{"x":"' + b"\\" * 300, 9, 5))
    assert "id" not in hostile
    assert json.loads(oversize_stand_in(b"\xff\xfe garbage", 9, 5))["method"] == OVERSIZE_METHOD


def test_trailing_line_without_newline_and_blank_lines() -> None:
    assert read_all(b"\n\n  \nlast", 100, [3]) == ["last"]
    assert read_all(b"", 100, [3]) == []


# --------------------------------------------------------------------------- the real CLI


def cli(*args: str) -> list[str]:
    """The whole ``callward proxy`` command, as an MCP client would launch it."""
    return [sys.executable, "-m", "callward", "proxy", *args]


def proxy_only(*args: str) -> list[str]:
    """The proxy without the other components (quicker to start)."""
    return [sys.executable, "-m", "callward.enforcer.proxy", *args]


@pytest.fixture
def time_policy(tmp_path: Path) -> Path:
    path = tmp_path / "time.yaml"
    path.write_text(
        "version: '1'\ndefault: deny\nhide: [convert_time]\ntools:\n  get_current_time: {}\n"
    )
    return path


@pytest.mark.anyio
async def test_callward_proxy_over_stdio_with_a_real_client(
    time_server: Path, time_policy: Path
) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=cli("--policy", str(time_policy), "--grant", "desk", "--", str(time_server))[1:],
        cwd=str(REPO),
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        names = [t.name for t in (await session.list_tools()).tools]
        now = await session.call_tool("get_current_time", {"timezone": "Europe/Paris"})
        hidden = await session.call_tool(
            "convert_time",
            {"source_timezone": "UTC", "time": "10:00", "target_timezone": "Europe/Paris"},
        )
    assert names == ["get_current_time"]
    assert now.structuredContent is not None
    assert now.structuredContent["timezone"] == "Europe/Paris"
    block = hidden.content[0]
    assert hidden.isError and isinstance(block, TextContent)
    assert block.text.startswith("[POLICY DENIED]")


class LineReader:
    def __init__(self, stream: Any):
        self.stream = stream
        self.buf = b""

    async def json(self) -> dict[str, Any]:
        with anyio.fail_after(30):
            while b"\n" not in self.buf:
                chunk = await self.stream.receive()
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        doc: dict[str, Any] = json.loads(line)
        return doc


@pytest.mark.anyio
async def test_hostile_bytes_on_stdin_get_clear_errors(tmp_path: Path) -> None:
    policy = tmp_path / "p.json"
    policy.write_text('{"version": "1", "default": "allow"}')
    args = proxy_only(
        "--policy",
        str(policy),
        "--max-message-bytes",
        "2048",
        "--",
        sys.executable,
        str(MISBEHAVING),
    )
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"},
        },
    }
    async with await anyio.open_process(args, cwd=str(REPO), stderr=subprocess.DEVNULL) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        out = LineReader(proc.stdout)

        async def send(raw: bytes) -> None:
            assert proc.stdin is not None
            await proc.stdin.send(raw)

        await send(json.dumps(init).encode() + b"\n")
        assert (await out.json())["result"]["serverInfo"]["name"] == "misbehaving"
        await send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        await send(b"this is not json at all\n")
        parse = await out.json()
        await send(
            b'{"jsonrpc": "2.0", "id": "big", "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "'
            + b"A" * 10_000
            + b'"}}}\n'
        )
        big = await out.json()
        await send(
            b'{"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"arguments": {}}}\n'
        )
        nameless = await out.json()
        await send(
            b'{"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "alive"}}}\n'
        )
        alive = await out.json()
        await proc.stdin.aclose()
        with anyio.fail_after(30):
            code = await proc.wait()
    assert parse["error"]["code"] == PARSE_ERROR and "id" not in parse
    assert big["id"] == "big" and big["error"]["code"] == MESSAGE_TOO_LARGE
    assert "2048" in big["error"]["message"]
    assert nameless["id"] == 3 and nameless["error"]["code"] == -32602
    assert alive["id"] == 4 and alive["result"]["content"][0]["text"] == "alive"
    assert code == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--policy", "P"], "give the server to front"),
        (["--grant", "x", "--", "true"], "give --policy FILE"),
        (["--policy", "P", "--upstream", "ftp://x", "--", "true"], "not both"),
        (["--policy", "P", "--listen", "nonsense", "--upstream", "http://h/mcp"], "HOST:PORT"),
        (["--policy", "P", "--tokens", "T", "--", "true"], "--tokens only applies"),
        (["--policy", "P", "--enforcer-timeout", "0", "--", "true"], "must be positive"),
        (
            [
                "--policy",
                "P",
                "--allow-origin",
                "evil",
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                "http://h/mcp",
            ],
            "scheme://",
        ),
        (["--policy", "MISSING", "--", "true"], "unreadable"),
        (["--policy", "BROKEN", "--", "true"], ":1:"),
    ],
)
def test_bad_command_lines_exit_2_and_say_why(args: list[str], needle: str, tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text('{"version": "1", "default": "allow"}')
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": "9", "default": "maybe"}')
    subst = {
        "P": str(good),
        "MISSING": str(tmp_path / "nope.json"),
        "BROKEN": str(broken),
        "T": str(good),
    }
    app = typer.Typer()
    register(app)
    app.command("other")(lambda: None)  # a second command keeps "proxy" a subcommand
    done = CliRunner().invoke(app, ["proxy", *[subst.get(a, a) for a in args]])
    assert done.exit_code == 2, done.output
    assert needle in done.stderr
    assert done.stdout == ""  # stdout is the MCP channel: never any prose there
