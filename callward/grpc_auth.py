"""Who is calling a callward gRPC server (the enforcer, the collector), and how it listens.

Two credentials, either or both:

- **Bearer tokens** (``--tokens FILE``, the tokens file of :mod:`callward.auth`): each
  call carries ``authorization: Bearer <token>`` metadata; the token's grant is the
  caller's grant.
- **Client certificates** (``--tls-cert``/``--tls-key`` with ``--tls-client-ca``): the TLS
  handshake refuses a client without a certificate signed by that CA; the certificate's
  subject CN (else its first subject alternative name) is the caller's grant, so the CA
  that issues the certificates decides the grants.

When a call carries a token, the token decides (an unknown one is refused even over a
verified TLS connection); without one, the client certificate does. With neither
credential configured, authentication is off, every call is anonymous, and a server bound
to an address other than loopback says so in one WARNING line.

Only the component's own service is checked (in its handler, before anything is decoded):
gRPC health and reflection stay open, as they carry no data.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from callward.auth import Principal, TokensInvalid, TokenTable, load_tokens, tls_problems
from callward.listen import split_listen

AUTHORIZATION = "authorization"
"""The metadata key of the bearer token (gRPC keys are lower case)."""
TOKENS_FLAG = "--tokens FILE"
CLIENT_CA_FLAG = "--tls-client-ca FILE"
MAX_TLS_FILE_BYTES = 1024 * 1024
MAX_CERT_NAME_CHARS = 256
"""A longer name in a client certificate is cut: it becomes a grant, a counter key."""
# auth_context() keys of a verified client certificate, in the order they name the caller.
_CERT_NAME_KEYS = ("x509_common_name", "x509_subject_alternative_name")


class Unauthenticated(Exception):
    """The call carries no usable credential; the caller gets UNAUTHENTICATED."""


class AuthInvalid(ValueError):
    """Authentication settings that cannot be used; ``problems`` lists every reason."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class ServerTLS:
    """The PEM bytes of a server's TLS setup; ``client_ca`` turns on client certificates."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )


class ServerAuth:
    """How one gRPC server authenticates its callers; ``ServerAuth()`` is authentication off."""

    def __init__(self, tokens: TokenTable | None = None, tls: ServerTLS | None = None):
        self.tokens = tokens
        self.tls = tls
        self.client_certs = tls is not None and tls.client_ca is not None

    @property
    def enabled(self) -> bool:
        """Whether every call must carry a credential."""
        return self.tokens is not None or self.client_certs

    def authenticate(self, context: grpc.ServicerContext) -> Principal | None:
        """The caller of ``context``; None when authentication is off.

        Raises :class:`Unauthenticated` when it is on and the call has no valid credential.
        """
        if not self.enabled:
            return None
        headers = [
            value
            for key, value in (context.invocation_metadata() or ())
            if key == AUTHORIZATION and isinstance(value, str)
        ]
        if headers:
            if self.tokens is None:
                raise Unauthenticated("this server takes no bearer tokens")
            if len(headers) > 1:
                raise Unauthenticated("more than one authorization header")
            bearer = self.tokens.from_authorization(headers[0])
            if bearer is None:
                raise Unauthenticated("the bearer token is not valid")
            return Principal(bearer.grant, f"token:{bearer.fingerprint}")
        if self.client_certs:
            name = certificate_name(context)
            if name:
                return Principal(name, f"cert:{name}")
            raise Unauthenticated("the client certificate names no one (no CN, no SAN)")
        raise Unauthenticated("a bearer token is required (authorization: Bearer <token>)")

    def add_port(self, server: grpc.Server, listen: str) -> int:
        """Bind ``listen`` on ``server`` (TLS when configured); returns the port, 0 on failure."""
        if self.tls is None:
            return server.add_insecure_port(listen)
        return server.add_secure_port(listen, self.tls.credentials())

    def warn_if_exposed(self, listen: str, component: str, log: logging.Logger) -> None:
        """One WARNING line when ``listen`` is reachable from other hosts and auth is off."""
        if self.enabled or is_loopback(listen):
            return
        log.warning(
            "callward %s listens on %s without authentication: anyone who reaches the port "
            "can call it; turn it on with %s (or %s)",
            component,
            listen,
            TOKENS_FLAG,
            CLIENT_CA_FLAG,
        )


OFF = ServerAuth()


def certificate_name(context: grpc.ServicerContext) -> str:
    """The verified client certificate's CN, else its first SAN; "" if there is none."""
    auth = context.auth_context()
    for key in _CERT_NAME_KEYS:
        for value in auth.get(key, ()):
            name = value.decode("utf-8", "replace").strip()
            if name:
                return name[:MAX_CERT_NAME_CHARS]
    return ""


def is_loopback(listen: str) -> bool:
    """Whether ``listen`` binds only this machine's loopback interface."""
    host, _port = split_listen(listen)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def load_server_auth(
    tokens: str | Path = "",
    tls_cert: str | Path = "",
    tls_key: str | Path = "",
    tls_client_ca: str | Path = "",
) -> ServerAuth:
    """Read the tokens file and TLS files named ("" = not given); raises :class:`AuthInvalid`
    listing every problem (unreadable file, bad tokens, a half TLS setup)."""
    problems = tls_problems(str(tls_cert), str(tls_key), str(tls_client_ca))
    table = None
    if tokens:
        try:
            table = load_tokens(tokens)
        except TokensInvalid as e:
            problems.extend(str(e).splitlines())
    pem = {}
    for what, path in (
        ("tls-cert", tls_cert),
        ("tls-key", tls_key),
        ("tls-client-ca", tls_client_ca),
    ):
        if path:
            try:
                pem[what] = _read_pem(Path(path))
            except ValueError as e:
                problems.append(f"--{what} {path}: {e}")
    if not problems and tls_cert:
        problems.extend(_tls_unusable(tls_cert, tls_key, tls_client_ca))
    if problems:
        raise AuthInvalid(problems)
    tls = None
    if "tls-cert" in pem:
        tls = ServerTLS(pem["tls-cert"], pem["tls-key"], pem.get("tls-client-ca"))
    return ServerAuth(table, tls)


def _tls_unusable(cert: str | Path, key: str | Path, client_ca: str | Path) -> list[str]:
    """Load the files the way a TLS server would, so that a key that does not match its
    certificate is one clear line now (gRPC only says "failed to bind" later)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    problems = []
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as e:
        problems.append(
            f"--tls-cert {cert} / --tls-key {key}: not a certificate and its key ({e.strerror or e})"
        )
    if client_ca:
        try:
            context.load_verify_locations(cafile=str(client_ca))
        except (ssl.SSLError, OSError) as e:
            problems.append(
                f"--tls-client-ca {client_ca}: not a CA certificate ({e.strerror or e})"
            )
    return problems


def _read_pem(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"unreadable: {e.strerror or e}") from None
    if len(data) > MAX_TLS_FILE_BYTES:
        raise ValueError(f"over {MAX_TLS_FILE_BYTES} bytes")
    if b"-----BEGIN " not in data:
        raise ValueError("not a PEM file")
    return data


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that presents ``token`` ("" = no token, no metadata)."""
    return ((AUTHORIZATION, f"Bearer {token}"),) if token else ()


__all__ = [
    "AUTHORIZATION",
    "OFF",
    "AuthInvalid",
    "Principal",
    "ServerAuth",
    "ServerTLS",
    "Unauthenticated",
    "bearer_metadata",
    "certificate_name",
    "is_loopback",
    "load_server_auth",
]
