"""Calls to another host's pierd: JSON-RPC 2.0 over HTTPS, authenticated by a client certificate.

A migration's source asks the destination's pierd to expect the VM (`VM.migrationCreate`) and, if
the migration fails, to forget it. `PeerClient.call` answers the verb's result, raises NoConPeer
(VDSM's "Could not connect to peer VDS") when the peer cannot be reached or does not speak TLS
with a certificate the CA vouches for, and raises the peer's own error (same VDSM code and name)
when the peer refused. Reaching the peer (TCP and the TLS handshake) is bounded by
`CONNECT_TIMEOUT`, so an address where nothing answers fails in seconds; the answer to a call that
did connect may take up to `timeout`.

`is_this_host` tells whether an address is one of this host's own (a migration to it is refused).
"""

from __future__ import annotations

import http.client
import itertools
import json
import socket
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Any

from pier.rpc.errors import NoConPeer, PierError, Unexpected, error_by_name

_ids = itertools.count(1)
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class PeerCredentials:
    """The client certificate and key this pierd shows other pierds, and the CA it checks theirs with."""

    cert: str = ""
    key: str = ""
    ca: str = ""

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca or None)
        if self.cert:
            context.load_cert_chain(self.cert, self.key or None)
        return context


class PeerClient:
    """One other pierd at `address` ("host:port" of its HTTPS listener)."""

    def __init__(self, address: str, credentials: PeerCredentials, timeout: float = 30.0,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        try:
            parts = urllib.parse.urlsplit("//" + address)
            host, port = parts.hostname, parts.port
        except ValueError:
            host = port = None
        if not host or port is None:
            raise NoConPeer(f"Could not connect to peer VDS: {address!r} is not HOST:PORT",
                            data={"dst": address}) from None
        self.host, self.port = host, port
        self.address = address
        self._credentials = credentials
        self._timeout = timeout
        self._connect_timeout = min(connect_timeout, timeout)

    def call(self, method: str, **params: Any) -> Any:
        """The result of `method` on the peer; see the module docstring for errors."""
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": next(_ids)})
        try:
            connection = http.client.HTTPSConnection(self.host, self.port, timeout=self._connect_timeout,
                                                     context=self._credentials.context())
            try:
                try:
                    connection.connect()
                except TimeoutError:
                    raise NoConPeer(f"Could not connect to peer VDS at {self.address}: no answer within "
                                    f"{self._connect_timeout:g} s", data={"dst": self.address}) from None
                assert connection.sock is not None
                connection.sock.settimeout(self._timeout)
                connection.request("POST", "/jsonrpc", body=body, headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                payload = response.read()
            finally:
                connection.close()
        except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
            raise NoConPeer(f"Could not connect to peer VDS at {self.address}: {exc}",
                            data={"dst": self.address}) from None
        try:
            reply = json.loads(payload)
        except ValueError:
            raise NoConPeer(f"peer {self.address} answered HTTP {response.status} without JSON-RPC",
                            data={"dst": self.address}) from None
        if isinstance(reply, dict) and "error" in reply:
            raise _peer_error(self.address, method, reply["error"])
        if not isinstance(reply, dict) or "result" not in reply:
            raise NoConPeer(f"peer {self.address} answered no JSON-RPC result", data={"dst": self.address})
        return reply["result"]


def _peer_error(address: str, method: str, error: dict[str, Any]) -> PierError:
    found = error.get("data")
    data: dict[str, Any] = found if isinstance(found, dict) else {}
    try:
        kind: type[PierError] = error_by_name(str(data.get("name", "")))
    except KeyError:
        kind = Unexpected
    raised = kind(f"{method} on {address}: {error.get('message')}", data={**data, "dst": address})
    raised.code = error.get("code", raised.code)
    return raised


def is_this_host(host: str) -> bool:
    """Whether `host` (a name or an address) is one of this host's own addresses: one a socket can
    be bound to here (loopback, the wildcard, any address of an interface in this network
    namespace). A name that does not resolve is not."""
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return False
    for family, kind, _, _, address in found:
        try:
            with socket.socket(family, kind) as probe:
                probe.bind((address[0], 0))
            return True
        except OSError:
            continue
    return False
