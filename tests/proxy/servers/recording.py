"""A raw stdio MCP server that appends every line it receives to ``RECORD_LOG``.

It answers anything that has a ``method`` and an ``id`` as a request, whatever the id's
type, as a lenient server would: so a test sees exactly what the proxy let through.
``tools/call`` of ``hang`` is never answered, to keep a request in flight.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

TOOLS = [{"name": n, "inputSchema": {"type": "object"}} for n in ("echo", "hang", "secret_tool")]


def answer(doc: dict[str, Any]) -> dict[str, Any] | None:
    method = doc["method"]
    if method == "initialize":
        result: dict[str, Any] = {
            "protocolVersion": doc.get("params", {}).get("protocolVersion", "2025-06-18"),
            "capabilities": {"tools": {}, "resources": {}, "prompts": {}},
            "serverInfo": {"name": "recording", "version": "1"},
        }
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call":
        if doc.get("params", {}).get("name") == "hang":
            return None
        result = {"content": [{"type": "text", "text": "ran"}]}
    elif method == "resources/read":
        result = {"contents": [{"uri": "file:///x", "text": "server content"}]}
    else:
        result = {}
    return {"jsonrpc": "2.0", "id": doc["id"], "result": result}


def main() -> None:
    log = os.environ["RECORD_LOG"]
    for line in sys.stdin.buffer:
        with open(log, "ab") as f:
            f.write(line if line.endswith(b"\n") else line + b"\n")
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and "method" in doc and "id" in doc:
            out = answer(doc)
            if out is not None:
                sys.stdout.write(json.dumps(out) + "\n")
                sys.stdout.flush()


if __name__ == "__main__":
    main()
