"""The HTTPS listener under attack: a good client is still served while hostile connections are open.

Each test holds one kind of hostile connection open against a real pierd with TLS and measures a
good client's calls meanwhile: none may fail, and none may take long. The bounds here are loose (a
second where the target is 100 ms, because CI machines are noisy); bench/attack.py gives the figures.
Before pier served HTTP itself, each of these calls waited 30 s or failed.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.integration.attacks import PATH, Dribble, GoodClient, Idle, Silent, Target, many_clients
from tests.integration.conftest import Pierd

SLOW = 1.0  # seconds: no good call may take longer while an attack runs (the target is 0.1)


@pytest.fixture(scope="module", autouse=True)
def descriptors() -> None:
    """This process holds a thousand connections at once: take what the hard limit allows."""
    from pier.daemon import raise_descriptor_limit

    raise_descriptor_limit()


@pytest.fixture(scope="module")
def tls_daemon(tmp_path_factory: pytest.TempPathFactory) -> Pierd:
    from pier.host.testdriver import make_test_uri

    state = tmp_path_factory.mktemp("attacked")
    daemon = Pierd(state / "state", make_test_uri(state / "testnode.xml"), secure=True)
    yield daemon
    assert daemon.stop() == 0


@pytest.fixture
def target(tls_daemon: Pierd) -> Target:
    host, port = tls_daemon.http.removeprefix("https://").rsplit(":", 1)
    return Target(host, int(port), str(tls_daemon.state_dir / "tls" / "ca.pem"), tls_daemon.token)


def served_meanwhile(target: Target, seconds: float = 3.0) -> list[GoodClient]:
    """A keep-alive client and one that connects for each call, for `seconds`."""
    clients = [GoodClient(target, keepalive=True), GoodClient(target, keepalive=False)]
    for client in clients:
        client.__enter__()
    time.sleep(seconds)
    for client in clients:
        client.__exit__()
    return clients


def assert_served(clients: list[GoodClient]) -> None:
    for client in clients:
        assert not client.failures, client.failures[:3]
        assert len(client.samples) > 20 and client.p99() < SLOW, (len(client.samples), client.p99())


@pytest.mark.parametrize("attack", [Silent, Dribble], ids=["silent TCP", "dribbled heads"])
def test_two_hundred_hostile_connections_hold_up_nobody(target: Target, attack: type) -> None:
    with attack(target, 200) as held:
        time.sleep(0.5)
        clients = served_meanwhile(target)
        assert held.opened == 200 and held.refused == 0
    assert_served(clients)


def test_a_thousand_idle_connections_hold_up_nobody(target: Target) -> None:
    with Idle(target, 1000) as held:
        assert held.opened == 1000 and held.refused == 0
        clients = served_meanwhile(target)
    assert_served(clients)


def test_fifty_keepalive_clients_are_all_served(target: Target) -> None:
    crowd = many_clients(target, 50, 4.0)
    assert crowd.failures == 0
    assert crowd.fairness >= 0.5, crowd.describe()


def test_a_tls_handshake_has_a_deadline(target: Target) -> None:
    with socket.create_connection((target.host, target.port)) as silent:
        started = time.monotonic()
        silent.settimeout(15)
        assert silent.recv(1) == b""  # closed by pierd
    assert 4.0 <= time.monotonic() - started <= 8.0


def test_a_request_head_has_a_deadline_that_bytes_do_not_extend(target: Target) -> None:
    head = f"GET {PATH} HTTP/1.1\r\nHost: x\r\n".encode() + b"X-Slow: " + b"a" * 100
    with target.context().wrap_socket(socket.create_connection((target.host, target.port)),
                                      server_hostname=target.host) as sock:
        started = time.monotonic()
        sock.settimeout(0.5)
        answer = b""
        for byte in head:
            sock.sendall(bytes([byte]))
            try:
                answer = sock.recv(4096)
                break
            except TimeoutError:
                continue
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert 9.0 <= time.monotonic() - started <= 13.0


def test_plain_http_to_the_tls_port_is_told_to_use_https(target: Target) -> None:
    with socket.create_connection((target.host, target.port)) as sock:
        sock.sendall(f"GET {PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        sock.settimeout(10)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ") and b"speaks HTTPS" in answer


def test_a_client_that_fails_the_handshake_does_not_hold_up_others(target: Target, tmp_path: Path) -> None:
    wrong = ssl.create_default_context()  # does not trust pierd's CA: every handshake fails
    for _ in range(20):
        with pytest.raises(ssl.SSLError), socket.create_connection((target.host, target.port)) as raw:
            wrong.wrap_socket(raw, server_hostname=target.host)
    assert_served(served_meanwhile(target, 1.0))
