"""The typed enforcer client: decisions, reports and its two kinds of failure."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from callward.enforcer.client import EnforcerClient, EnforcerRejected, EnforcerUnavailable
from callward.enforcer.engine import Decision, Request
from callward.enforcer.policy import compile_document
from callward.enforcer.server import SERVICE_NAME, EnforcerConfig, EnforcerServer, EnforcerService

pytestmark = pytest.mark.timeout(60)

POLICY = compile_document(
    {
        "version": "1",
        "default": "deny",
        "tools": {
            "search": {
                "deny_if": [
                    {"conditions": [{"path": "args.q", "op": "contains", "value": "secret"}]}
                ],
                "limits": [{"counter": "s", "window": "day", "max": 1, "scope": "agent"}],
            }
        },
    }
)


@pytest.fixture
def target() -> Iterator[str]:
    server = EnforcerServer(
        EnforcerService(POLICY, config=EnforcerConfig(listen="127.0.0.1:0", max_workers=2))
    )
    port = server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=0)


def test_check_and_report_round_trip(target: str) -> None:
    with EnforcerClient(target, timeout=5) as client:
        req = Request(tool="search", arguments={"q": "weather"}, agent_id="a", call_id="c1")
        got = client.check(req, traceparent="")
        assert got == Decision("allow", "/tools/search", "", POLICY.version)
        denied = client.check(req._replace(call_id="c2"))
        assert (denied.decision, denied.rule) == ("deny", "/tools/search/limits/0")
        assert client.report("c1", "error", 3.5, 0, "Boom") is True
        assert client.check(req._replace(call_id="c3")).allowed
        assert client.report("c1", "ok") is False  # already reported
        hostile = client.check(
            Request(tool="search", arguments={"q": "a secret"}, agent_id="b", call_id="c4")
        )
        assert hostile.rule == "/tools/search/deny_if/0"


def test_rejected_request_is_its_own_error(target: str) -> None:
    with EnforcerClient(target, timeout=5) as client:
        with pytest.raises(EnforcerRejected, match="tool must not be empty") as info:
            client.check(Request(tool="", arguments={}))
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(EnforcerRejected, match="outcome"):
            client.report("c1", "fine")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_nobody_listening_is_unavailable() -> None:
    with EnforcerClient(f"127.0.0.1:{free_port()}", timeout=2) as client:
        with pytest.raises(EnforcerUnavailable) as info:
            client.check(Request(tool="search", arguments={}))
        assert info.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        with pytest.raises(EnforcerUnavailable):
            client.report("c1", "ok")


@pytest.fixture
def stalled_target() -> Iterator[str]:
    """A real gRPC server that answers Check only after the test lets it go."""
    release = threading.Event()

    def stall(request: bytes, context: Any) -> bytes:
        release.wait(30)
        return b""

    handler = grpc.method_handlers_generic_handler(
        SERVICE_NAME, {"Check": grpc.unary_unary_rpc_method_handler(stall)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    release.set()
    server.stop(0).wait()


def test_deadline_is_unavailable(stalled_target: str) -> None:
    with EnforcerClient(stalled_target) as client:
        with pytest.raises(EnforcerUnavailable, match="DEADLINE_EXCEEDED") as info:
            client.check(Request(tool="search", arguments={}), timeout=0.1)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
