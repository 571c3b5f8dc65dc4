"""STOMP to the broker over TLS: pierd checks the broker's certificate against --stomp-ca.

The broker is the real RabbitMQ; TLS is terminated in front of its plain STOMP port by a small
relay in this module (as stunnel would), so the test needs no change to the broker's configuration.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pier.tlsfiles import init_tls
from tests.integration.conftest import Pierd, stomp_flags


class TlsRelay:
    """Accepts TLS on 127.0.0.1 with `cert`/`key` and relays the plain bytes to `upstream`."""

    def __init__(self, cert: Path, key: Path, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.handshakes = 0
        self.failures: list[str] = []
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._accepting = threading.Thread(target=self._accept, name="tls-relay", daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            try:
                client = self.context.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                self.failures.append(str(exc))
                raw.close()
                continue
            self.handshakes += 1
            upstream = socket.create_connection(self.upstream)
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pump, args=(source, sink), daemon=True)
                thread.start()
                self._threads.append(thread)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()
        for sock in self._sockets:
            sock.close()
        self._accepting.join(5)
        for thread in self._threads:
            thread.join(5)


@pytest.fixture
def relay(stomp_broker: tuple[str, int], tmp_path: Path) -> Iterator[tuple[TlsRelay, Path]]:
    files = init_tls(tmp_path / "broker-tls", "localhost")
    made = TlsRelay(files.server, files.server_key, stomp_broker)
    yield made, files.ca
    made.close()


def relay_flags(relay: TlsRelay, *tls: str) -> list[str]:
    flags = stomp_flags()
    flags[1] = f"127.0.0.1:{relay.address[1]}"  # --stomp-broker
    return [*flags, *tls]


def test_pierd_serves_stomp_through_a_tls_broker_connection(relay, tmp_path: Path, test_uri: str) -> None:
    tls_relay, ca = relay
    daemon = Pierd(tmp_path / "state", test_uri, *relay_flags(tls_relay, "--stomp-tls", "--stomp-ca", str(ca)))
    try:
        assert daemon.wait_logged("STOMP: requests on", 15), "".join(daemon.log)
        assert tls_relay.handshakes >= 1 and daemon.logged(f"(broker 127.0.0.1:{tls_relay.address[1]}, TLS)")
        client = daemon.client("stomp")  # an engine on the broker's plain port reaches pierd over the TLS link
        try:
            assert client.call("Host.ping2") is True
        finally:
            client.close()
    finally:
        assert daemon.stop() == 0


def test_a_broker_certificate_from_another_ca_is_refused(relay, tmp_path: Path, test_uri: str) -> None:
    tls_relay, _ = relay
    stranger = init_tls(tmp_path / "other-ca", "localhost").ca
    daemon = Pierd(tmp_path / "state", test_uri, *relay_flags(tls_relay, "--stomp-tls", "--stomp-ca", str(stranger)))
    try:
        assert daemon.wait_logged("certificate verify failed", 15), "".join(daemon.log)
        assert not daemon.logged("STOMP: requests on")
        assert daemon.client("http").call("Host.ping2") is True  # everything else keeps serving
    finally:
        assert daemon.stop() == 0
