"""Calls to another pierd (pier.host.peer): a bounded connect, errors naming the peer, and which
addresses are this host's own."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from pier.host.peer import PeerClient, PeerCredentials, is_this_host
from pier.rpc.errors import NoConPeer


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """HOST:PORT of a socket that takes connections into its backlog and never answers a byte."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def test_a_peer_that_never_answers_the_handshake_fails_within_the_connect_timeout(silent_listener: str) -> None:
    peer = PeerClient(silent_listener, PeerCredentials(), timeout=600, connect_timeout=0.3)
    with pytest.raises(NoConPeer) as failed:
        peer.call("Host.getAgentInfo")
    assert f"at {silent_listener}: no answer within 0.3 s" in failed.value.message
    assert failed.value.data == {"dst": silent_listener}


def test_a_closed_port_fails_naming_the_peer() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"  # bound, not listening: refused
        with pytest.raises(NoConPeer) as failed:
            PeerClient(closed, PeerCredentials()).call("Host.getAgentInfo")
    assert f"Could not connect to peer VDS at {closed}" in failed.value.message


@pytest.mark.parametrize("address", ["peer", "peer:", ":54321", "[::1"])
def test_an_address_that_is_not_host_port_is_refused(address: str) -> None:
    with pytest.raises(NoConPeer, match="is not HOST:PORT"):
        PeerClient(address, PeerCredentials())


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.4.5", "localhost", "0.0.0.0"])
def test_this_hosts_own_addresses_are_this_host(host: str) -> None:
    assert is_this_host(host)


@pytest.mark.parametrize("host", ["192.0.2.7", "203.0.113.9", "no-such-host.invalid"])
def test_other_addresses_are_not(host: str) -> None:
    assert not is_this_host(host)
