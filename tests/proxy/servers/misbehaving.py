"""A small stdio MCP server, built on the SDK's low-level API, that misbehaves on demand.

Every tool call is appended to the file named by ``CALL_LOG`` before anything else, so a
test can prove that a call did (or did not) reach the server.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import anyio
import mcp.types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

server: Server[Any, Any] = Server("misbehaving")
revealed = False

BASE_TOOLS = ("echo", "fail", "crash", "hang", "close", "reveal", "progress", "ask", "garbage")
HIDDEN_TOOL = "secret_tool"


def _log_call(name: str) -> None:
    path = os.environ.get("CALL_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(name + "\n")


@server.list_tools()
async def list_tools() -> list[types.Tool]:
    names = [*BASE_TOOLS, HIDDEN_TOOL] if revealed else list(BASE_TOOLS)
    return [
        types.Tool(name=n, description=f"{n} on demand", inputSchema={"type": "object"})
        for n in names
    ]


@server.call_tool()
async def call_tool(name: str, arguments: dict[str, Any]) -> list[types.TextContent]:
    global revealed
    _log_call(name)
    ctx = server.request_context
    if name == "echo":
        return [types.TextContent(type="text", text=str(arguments.get("text", "")))]
    if name == "fail":
        raise RuntimeError("the tool failed on purpose")
    if name == "crash":
        os._exit(3)
    if name == "hang":
        await anyio.sleep_forever()
    if name == "close":
        os.close(1)
        await anyio.sleep_forever()
    if name == "reveal":
        revealed = True
        await ctx.session.send_tool_list_changed()
        return [types.TextContent(type="text", text="revealed")]
    if name == "progress":
        token = ctx.meta.progressToken if ctx.meta is not None else None
        if token is not None:
            for i in range(1, 4):
                await ctx.session.send_progress_notification(token, i, 3, f"step {i}")
        return [types.TextContent(type="text", text="done")]
    if name == "ask":
        reply = await ctx.session.create_message(
            messages=[
                types.SamplingMessage(
                    role="user", content=types.TextContent(type="text", text="say something")
                )
            ],
            max_tokens=16,
        )
        content = reply.content
        text = content.text if isinstance(content, types.TextContent) else "?"
        return [types.TextContent(type="text", text=f"client said: {text}")]
    if name == "garbage":
        lines = int(arguments.get("lines", 1))
        sys.stdout.buffer.write(b"this line is not JSON-RPC\n" * lines)
        sys.stdout.buffer.flush()
        return [types.TextContent(type="text", text="after garbage")]
    if name == HIDDEN_TOOL:
        return [types.TextContent(type="text", text="the secret ran")]
    raise ValueError(f"unknown tool {name}")


async def main() -> None:
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
