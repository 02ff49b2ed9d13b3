"""The gRPC enforcer with authentication on, against real servers on loopback ports:
bearer tokens, client certificates, the grant taken from the credential, Reports bound
to the caller that made the Check, and the warning on an exposed address."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import typer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from callward.auth import Principal, token_digest
from callward.enforcer.client import (
    EnforcerClient,
    EnforcerRejected,
    EnforcerUnavailable,
    channel_credentials,
)
from callward.enforcer.engine import Request
from callward.enforcer.server import (
    SERVICE_NAME,
    EnforcerConfig,
    EnforcerServer,
    EnforcerService,
    NotYourCall,
)
from callward.enforcer.server_cli import register
from callward.enforcer.server_config import ENV_OF
from callward.proto.callward.v1 import enforcer_pb2 as pb
from callward.proto.callward.v1 import enforcer_pb2_grpc as pb_grpc
from tests.certs import TestCA
from tests.enforcer.test_server import LIMITED, SEED, FakeClock, rpc_error, run_cli

pytestmark = pytest.mark.timeout(60)

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef0"
ALICE_TOO = "alice-second-token-0123456789"


def write_tokens(folder: Path) -> Path:
    path = folder / "tokens.yaml"
    entries = [
        {"token": ALICE, "grant": "alice"},
        {"token": BOB, "grant": "bob"},
        {"sha256": token_digest(ALICE_TOO), "grant": "alice"},
    ]
    path.write_text(json.dumps({"tokens": entries}))
    return path


def charge(call_id: str, grant: str = "", amount: int = 5) -> pb.CheckRequest:
    return pb.CheckRequest(
        tool="charge", call_id=call_id, grant=grant, arguments_json=json.dumps({"amount": amount})
    )


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


class Running:
    def __init__(self, server: EnforcerServer) -> None:
        self.server = server
        self.service = server.service
        self.target = f"127.0.0.1:{server.port}"
        self.channel = grpc.insecure_channel(self.target)
        self.stub = pb_grpc.EnforcerStub(self.channel)

    def check(self, msg: pb.CheckRequest, token: str = "") -> pb.CheckResponse:
        return self.stub.Check(msg, timeout=10, metadata=bearer(token) if token else None)

    def report(self, call_id: str, outcome: str, token: str = "") -> pb.ReportResponse:
        msg = pb.ReportRequest(call_id=call_id, outcome=outcome)
        return self.stub.Report(msg, timeout=10, metadata=bearer(token) if token else None)

    def grants_counted(self) -> set[str]:
        """The grants whose counters hold something (LIMITED's only limit is per grant)."""
        return {scope for _counter, scope, _window in self.service.state.counts}


@pytest.fixture
def serve() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(**config: Any) -> Running:
        cfg = EnforcerConfig(listen=config.pop("listen", "127.0.0.1:0"), max_workers=4, **config)
        server = EnforcerServer(EnforcerService(LIMITED, config=cfg, clock=FakeClock()))
        server.start()
        started.append(Running(server))
        return started[-1]

    yield start
    for running in started:
        running.channel.close()
        running.server.stop(grace=0)


@pytest.fixture
def with_tokens(serve: Callable[..., Running], tmp_path: Path) -> Running:
    return serve(tokens=str(write_tokens(tmp_path)))


# --------------------------------------------------------------------------- bearer tokens


def test_a_call_without_a_token_is_unauthenticated_and_never_reaches_the_service(
    with_tokens: Running,
) -> None:
    h = with_tokens
    for call in (
        lambda: h.check(charge("c1", "alice")),
        lambda: h.report("c1", "error"),
        # Bytes that do not parse: still UNAUTHENTICATED, not a parse error.
        lambda: h.channel.unary_unary(f"/{SERVICE_NAME}/Check")(b"\xff\xff", timeout=10),
    ):
        assert rpc_error(call).code() == grpc.StatusCode.UNAUTHENTICATED
    assert h.service.pending_count() == 0
    assert h.grants_counted() == set()


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {ALICE[:-1]}",  # one character short
        f"Basic {ALICE}",  # another scheme
        "Bearer",
        f"Bearer {token_digest(ALICE)}",  # the digest is not the token
    ],
)
def test_a_wrong_token_is_unauthenticated(with_tokens: Running, header: str) -> None:
    h = with_tokens
    err = rpc_error(
        lambda: h.stub.Check(charge("c1"), timeout=10, metadata=(("authorization", header),))
    )
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert h.service.pending_count() == 0


def test_two_authorization_headers_are_refused(with_tokens: Running) -> None:
    h = with_tokens
    two = (("authorization", f"Bearer {ALICE}"), ("authorization", f"Bearer {BOB}"))
    err = rpc_error(lambda: h.stub.Check(charge("c1"), timeout=10, metadata=two))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_right_token_works_through_the_client(with_tokens: Running) -> None:
    h = with_tokens
    with EnforcerClient(h.target, timeout=10, token=ALICE) as client:
        decision = client.check(Request("charge", {"amount": 5}, call_id="c1"))
        assert decision.allowed
        assert client.report("c1", "ok")
    with EnforcerClient(h.target, timeout=10) as anonymous:
        with pytest.raises(EnforcerRejected) as refused:
            anonymous.check(Request("charge", {"amount": 5}, call_id="c2"))
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_health_and_reflection_stay_open(with_tokens: Running) -> None:
    health = health_pb2_grpc.HealthStub(with_tokens.channel)
    got = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10)
    assert got.status == health_pb2.HealthCheckResponse.SERVING


# --------------------------------------------------------------------------- the grant


def test_a_claimed_grant_cannot_spend_that_grants_quota(with_tokens: Running) -> None:
    h = with_tokens  # charge: 3 per minute per grant
    # Bob claims to be alice, three times: bob's credential is charged, not alice's.
    got = [h.check(charge(f"b{i}", grant="alice"), BOB).decision for i in range(4)]
    assert got == [pb.DECISION_ALLOW] * 3 + [pb.DECISION_DENY]
    assert h.grants_counted() == {"bob"}
    # Alice's quota is whole.
    got = [h.check(charge(f"a{i}", grant="alice"), ALICE).decision for i in range(4)]
    assert got == [pb.DECISION_ALLOW] * 3 + [pb.DECISION_DENY]
    # No claim at all: the credential's grant, which alice has used up.
    assert h.check(charge("a9"), ALICE).decision == pb.DECISION_DENY


def test_the_first_differing_claim_is_logged_once(
    with_tokens: Running, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="callward.enforcer"):
        with_tokens.check(charge("b1", grant="mallory"), BOB)
        with_tokens.check(charge("b2", grant="mallory"), BOB)
    said = [r.getMessage() for r in caplog.records if "credential's grant" in r.getMessage()]
    assert len(said) == 1 and "'mallory'" in said[0] and "'bob'" in said[0]


@given(claimed=st.text(max_size=40), amount=st.integers(-5, 200))
def test_the_decision_is_the_one_for_the_credentials_grant(claimed: str, amount: int) -> None:
    # Property, on the service behind the handlers: whatever grant a Check claims, it is
    # decided (limits included) exactly as a Check naming the credential's grant.
    principal = Principal("alice", "token:0123456789abcdef")
    claiming = EnforcerService(LIMITED, clock=FakeClock())
    honest = EnforcerService(LIMITED, clock=FakeClock())
    for i in range(5):
        a = claiming.check(charge(f"c{i}", grant=claimed, amount=amount), principal)
        b = honest.check(charge(f"c{i}", grant="alice", amount=amount), principal)
        assert (a.decision, a.rule, a.message) == (b.decision, b.rule, b.message)
    assert claiming.state.counts == honest.state.counts


# --------------------------------------------------------------------------- Report


def test_a_report_from_another_caller_is_refused_and_gives_nothing_back(
    with_tokens: Running,
) -> None:
    h = with_tokens
    for i in range(3):
        assert h.check(charge(f"a{i}"), ALICE).decision == pb.DECISION_ALLOW
    for stranger in (BOB, ALICE_TOO):  # another grant; the same grant, another token
        err = rpc_error(lambda t=stranger: h.report("a0", "error", t))  # type: ignore[misc]
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    # Nothing was given back: alice is still at her limit, and the call is still hers.
    assert h.check(charge("a3"), ALICE).decision == pb.DECISION_DENY
    assert h.service.pending_count() == 3
    assert h.report("a0", "error", ALICE).released == 1
    assert h.check(charge("a4"), ALICE).decision == pb.DECISION_ALLOW


def test_a_retried_check_from_another_caller_is_refused(with_tokens: Running) -> None:
    h = with_tokens
    assert h.check(charge("same"), ALICE).decision == pb.DECISION_ALLOW
    err = rpc_error(lambda: h.check(charge("same"), ALICE_TOO))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert h.check(charge("same"), ALICE).decision == pb.DECISION_ALLOW  # her own retry


def test_the_core_keeps_a_refused_report_pending() -> None:
    service = EnforcerService(LIMITED, clock=FakeClock())
    mine = Principal("alice", "token:aaaa")
    service.check(charge("c1"), mine)
    with pytest.raises(NotYourCall):
        service.report(pb.ReportRequest(call_id="c1", outcome="error"), None)
    assert service.pending_count() == 1


# --------------------------------------------------------------------------- client certificates


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    ca = TestCA(tmp_path / "ca")
    stranger = TestCA(tmp_path / "other", "some other CA")
    return {
        "ca": ca,
        "server": ca.issue("enforcer", server=True),
        "alice": ca.issue("alice"),
        "san-only": ca.issue("", sans=("bob",)),
        "forged": stranger.issue("alice"),
    }


def tls_client(h: Running, pki: dict[str, Any], who: str = "", token: str = "") -> EnforcerClient:
    cert = pki[who] if who else None
    return EnforcerClient(
        h.target,
        timeout=10,
        token=token,
        tls_ca=pki["ca"].cert,
        tls_cert=cert.cert if cert else "",
        tls_key=cert.key if cert else "",
    )


def mtls(serve: Callable[..., Running], pki: dict[str, Any], **config: Any) -> Running:
    return serve(
        tls_cert=str(pki["server"].cert),
        tls_key=str(pki["server"].key),
        tls_client_ca=str(pki["ca"].cert),
        **config,
    )


def test_a_client_certificate_names_the_grant(
    serve: Callable[..., Running], pki: dict[str, Any]
) -> None:
    h = mtls(serve, pki)
    with tls_client(h, pki, "alice") as alice:
        got = [
            alice.check(Request("charge", {"amount": 5}, grant="bob", call_id=f"a{i}"))
            for i in range(4)
        ]
        assert [d.allowed for d in got] == [True, True, True, False]
        assert alice.report("a0", "ok")
    assert h.grants_counted() == {"alice"}
    with tls_client(h, pki, "san-only") as bob:  # no CN: the first SAN
        assert bob.check(Request("charge", {"amount": 5}, call_id="b1")).allowed
        with pytest.raises(EnforcerRejected) as refused:
            bob.report("a1", "error")  # alice's call
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert h.grants_counted() == {"alice", "bob"}


@pytest.mark.parametrize("who", ["", "forged"])
def test_without_a_trusted_client_certificate_the_handshake_fails(
    serve: Callable[..., Running], pki: dict[str, Any], who: str
) -> None:
    h = mtls(serve, pki)
    with tls_client(h, pki, who) as client, pytest.raises(EnforcerUnavailable):
        client.check(Request("charge", {"amount": 5}, call_id="x"))
    assert h.service.pending_count() == 0


def test_with_tokens_and_certificates_a_token_decides(
    serve: Callable[..., Running], pki: dict[str, Any], tmp_path: Path
) -> None:
    h = mtls(serve, pki, tokens=str(write_tokens(tmp_path)))
    with tls_client(h, pki, "alice", token=BOB) as client:
        assert client.check(Request("charge", {"amount": 5}, call_id="x")).allowed
    assert h.grants_counted() == {"bob"}
    with tls_client(h, pki, "alice", token="not-a-token-0123456789") as client:
        with pytest.raises(EnforcerRejected) as refused:
            client.check(Request("charge", {"amount": 5}, call_id="y"))
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_tls_without_client_certificates_still_takes_tokens(
    serve: Callable[..., Running], pki: dict[str, Any], tmp_path: Path
) -> None:
    h = serve(
        tls_cert=str(pki["server"].cert),
        tls_key=str(pki["server"].key),
        tokens=str(write_tokens(tmp_path)),
    )
    with tls_client(h, pki, token=ALICE) as client:
        assert client.check(Request("charge", {"amount": 5}, call_id="x")).allowed
    with tls_client(h, pki) as client, pytest.raises(EnforcerRejected):
        client.check(Request("charge", {"amount": 5}, call_id="y"))
    # Plain text to a TLS port gets nowhere.
    with (
        EnforcerClient(h.target, timeout=2, token=ALICE) as plain,
        pytest.raises(EnforcerUnavailable),
    ):
        plain.check(Request("charge", {"amount": 5}, call_id="z"))
    channel = grpc.secure_channel(h.target, channel_credentials(pki["ca"].cert))
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1
    channel.close()


# --------------------------------------------------------------------------- exposure warning


def exposure_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "without authentication" in r.getMessage()]


def test_a_non_loopback_address_without_auth_is_one_loud_line(
    serve: Callable[..., Running], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="callward.enforcer"):
        serve(listen="0.0.0.0:0")
    (line,) = exposure_warnings(caplog)
    assert line.levelno == logging.WARNING
    assert "--tokens FILE" in line.getMessage() and "\n" not in line.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="callward.enforcer"):
        serve(listen="0.0.0.0:0", tokens=str(write_tokens(tmp_path)))
        serve(listen="127.0.0.1:0")
        serve(listen="localhost:0")
    assert exposure_warnings(caplog) == []


# --------------------------------------------------------------------------- the CLI


def test_cli_refuses_unusable_auth_settings(tmp_path: Path, pki: dict[str, Any]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tokens:\n  - token: short\n    grant: a\n")
    cases = [
        (("--tokens", str(bad)), "16+ chars"),
        (("--tokens", str(tmp_path / "missing.yaml")), "unreadable"),
        (("--tls-client-ca", str(pki["ca"].cert)), "--tls-client-ca needs --tls-cert"),
        (("--tls-cert", str(pki["server"].cert)), "--tls-cert and --tls-key go together"),
        (
            ("--tls-cert", str(bad), "--tls-key", str(pki["server"].key)),
            "not a PEM file",
        ),
        (
            ("--tls-cert", str(pki["server"].cert), "--tls-key", str(pki["alice"].key)),
            "not a certificate and its key",
        ),
        (
            (
                "--tls-cert",
                str(pki["server"].cert),
                "--tls-key",
                str(pki["server"].key),
                "--tls-client-ca",
                str(pki["alice"].key),
            ),
            "not a CA certificate",
        ),
    ]
    for args, says in cases:
        got = run_cli("--policy", str(SEED), "--listen", "127.0.0.1:0", *args)
        assert got.exit_code == 2, (args, got.output)
        assert says in got.stderr, (args, got.stderr)


def test_cli_takes_the_tokens_file_from_the_environment(tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)
    app.command("unused")(lambda: None)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "", ENV_OF["tokens"]: str(tmp_path / "from-env.yaml")}
    args = ["enforcer", "--policy", str(SEED), "--listen", "127.0.0.1:0"]
    got = CliRunner().invoke(app, args, env=env)
    assert got.exit_code == 2 and "from-env.yaml" in got.stderr and "unreadable" in got.stderr
