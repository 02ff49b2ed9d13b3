"""Listen addresses, for every server callward runs (enforcer, collector): how one is
read, and a check that it can be bound before gRPC is asked to.

gRPC reports a failed bind by logging its own error line from the C core and then
returning port 0, so a user saw a raw ``add_port.cc`` line before callward's message.
Binding a plain socket first, with the same options gRPC uses (``SO_REUSEADDR`` on,
``SO_REUSEPORT`` off), answers the common cases (address in use, no such address, no
permission) with one clear message and nothing from the C core. The address is free
again when gRPC binds it a moment later; a race lost in between still fails, with
gRPC's message.
"""

from __future__ import annotations

import errno
import socket

_REASONS = {
    errno.EADDRINUSE: "the address is already in use (another server on this port?)",
    errno.EADDRNOTAVAIL: "no interface of this machine has that address",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
}


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` into its host and port; ValueError if malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{listen!r} is not HOST:PORT (for example 127.0.0.1:4317)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def check_bindable(listen: str) -> None:
    """Raise OSError with a readable reason if ``listen`` cannot be bound now."""
    host, port = split_listen(listen)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise OSError(f"cannot listen on {listen}: unknown host {host!r} ({e.strerror})") from None
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(address)
            except OSError as e:
                reason = _REASONS.get(e.errno or 0, e.strerror or str(e))
                raise OSError(f"cannot listen on {listen}: {reason}") from None


__all__ = ["check_bindable", "split_listen"]
