"""A session learns at once that the credential it opened with was revoked: `Credentials.watch`,
the long-poll that uses it (`Events.poll` with `wait`), and a VDSM STOMP connection."""

from __future__ import annotations

import ssl
import threading
import time
from pathlib import Path

import pytest

from pier.rpc.auth import Authenticator, Credentials
from pier.rpc.errors import Unauthenticated
from pier.rpc.registry import CallContext
from pier.tlsfiles import init_tls
from pier.transports.vdsm_stomp import VdsmStompListener
from tests.unit.conftest import Stack
from tests.unit.vdsm_stomp_client import EVENTS, Closed, VdsmLikeClient, address_of


@pytest.fixture
def credentials(tmp_path: Path):
    store = Credentials(str(tmp_path / "c.db"))
    yield store
    store.close()


def test_revoking_a_token_tells_its_watchers_once(credentials: Credentials) -> None:
    authenticator = Authenticator(credentials)
    made, other = credentials.create_token("viewer"), credentials.create_token("viewer")
    identity = authenticator.identify(authorization=f"Bearer {made['token']}")
    told: list[str] = []
    authenticator.watch(identity, told.append)
    authenticator.watch(identity, told.append)  # a second session with the same token
    authenticator.watch(authenticator.identify(authorization=f"Bearer {other['token']}"), told.append)
    credentials.revoke_token(made["tokenID"])
    assert told == [f"token {made['tokenID']} was revoked"] * 2
    credentials.create_token("viewer")  # other changes tell no one
    assert len(told) == 2


def test_a_session_that_ended_is_not_told(credentials: Credentials) -> None:
    made = credentials.create_token("viewer")
    identity = credentials.token_identity(made["token"])
    told: list[str] = []
    unwatch = credentials.watch(identity, told.append)
    assert unwatch() is True and unwatch() is False
    credentials.revoke_token(made["tokenID"])
    assert told == []


def test_watching_a_credential_already_revoked_tells_at_once(credentials: Credentials) -> None:
    made = credentials.create_token("viewer")
    identity = credentials.token_identity(made["token"])
    credentials.revoke_token(made["tokenID"])  # between the session's authentication and its watch
    told: list[str] = []
    credentials.watch(identity, told.append)
    assert told == [f"token {made['tokenID']} was revoked"]


def test_removing_a_trusted_certificate_tells_its_watchers(credentials: Credentials, tmp_path: Path) -> None:
    pem = init_tls(tmp_path / "tls").client.read_text()
    record = credentials.trust(pem, "viewer")
    identity = credentials.certificate_identity(ssl.PEM_cert_to_DER_cert(pem))
    told: list[str] = []
    credentials.watch(identity, told.append)
    credentials.distrust(record["fingerprint"].lower())
    assert told == [f"the client certificate {record['fingerprint'][:23]}... is no longer trusted"]


def test_a_failing_watcher_does_not_keep_others_open(credentials: Credentials) -> None:
    made = credentials.create_token("viewer")
    identity = credentials.token_identity(made["token"])
    told: list[str] = []

    def broken(reason: str) -> None:
        raise RuntimeError("gone")

    credentials.watch(identity, broken)
    credentials.watch(identity, told.append)
    credentials.revoke_token(made["tokenID"])
    assert len(told) == 1


def test_local_peers_are_never_revoked(credentials: Credentials) -> None:
    root = Authenticator(credentials).peer_identity(0)
    assert credentials.watch(root, lambda reason: pytest.fail(reason))() is False


def test_a_waiting_poll_is_refused_when_its_token_is_revoked(stack: Stack) -> None:
    revoked, kept = stack.credentials.create_token("viewer"), stack.credentials.create_token("viewer")
    outcomes: dict[str, object] = {}

    def poll(made: dict[str, str]) -> None:
        context = CallContext("test", identity=stack.credentials.token_identity(made["token"]))
        params = {"wait": 30, "after": stack.events.last_seq}
        try:
            outcomes[made["tokenID"]] = stack.registry.call("Events.poll", params, context)
        except Unauthenticated as exc:
            outcomes[made["tokenID"]] = exc

    polls = [threading.Thread(target=poll, args=(made,)) for made in (revoked, kept)]
    for waiting in polls:
        waiting.start()
    time.sleep(0.3)  # both polls wait for events
    assert not outcomes
    stack.credentials.revoke_token(revoked["tokenID"])
    polls[0].join(10)  # at once, not after its 30 s
    assert not polls[0].is_alive()
    refused = outcomes[revoked["tokenID"]]
    assert isinstance(refused, Unauthenticated) and refused.message == f"token {revoked['tokenID']} was revoked"
    assert polls[1].is_alive()  # the other caller's poll goes on waiting
    event = stack.events.publish("|pier|test|1", {})
    polls[1].join(10)
    assert [e["seq"] for e in outcomes[kept["tokenID"]]["events"]] == [event.seq]


def test_a_vdsm_stomp_connection_ends_when_its_token_is_revoked(stack: Stack) -> None:
    made = stack.credentials.create_token("viewer")
    server = VdsmStompListener(stack.jsonrpc, stack.events, "127.0.0.1", 0,
                               authenticator=Authenticator(stack.credentials))
    server.start()
    client = VdsmLikeClient(address_of(server.address), passcode=made["token"])
    try:
        client.subscribe(EVENTS)
        assert client.call("Host.ping2") is True
        stack.credentials.revoke_token(made["tokenID"])
        error = client.read_frame()
        assert error.command == "ERROR" and error.body == f"Not authenticated: token {made['tokenID']} was revoked".encode()
        with pytest.raises((Closed, ConnectionResetError)):
            client.read_frame()
        # The server lets go of the connection though this client keeps its end open and sends nothing.
        deadline = time.monotonic() + 5
        while server.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.connections == 0
    finally:
        client.sock.close()
        server.stop()
