"""Host and peer addresses as text, written one way everywhere.

Beside a port an IPv6 host is written in brackets (`[::1]:8042`), so that the port can be told
from it. `host_of` takes a peer address back to its host, without port or brackets: that is the
source failed logins are counted by and the audit log records, whatever wire the peer used.
"""

from __future__ import annotations


def bracketed(host: str) -> str:
    """`host` as it is written before `:port`: an IPv6 address in brackets ('::1' -> '[::1]')."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def with_port(host: str, port: int | str) -> str:
    """'host:port', an IPv6 host in brackets."""
    return f"{bracketed(host)}:{port}"


def host_of(peer: str) -> str:
    """A peer address without its port: '127.0.0.1:5555' -> '127.0.0.1', '[::1]:80' -> '::1'.

    Text with no port (a bare '::1', 'local', a reply-to queue) comes back as it is.
    """
    if peer.startswith("["):
        host, closed, rest = peer[1:].partition("]")
        return host if closed and (not rest or rest[0] == ":") else peer
    host, sep, port = peer.rpartition(":")
    return host if sep and host and port.isdigit() and ":" not in host else peer
