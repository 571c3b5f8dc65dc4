"""pierd's VDSM-compatible STOMP endpoint, driven by a client that acts exactly as VDSM's does."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Pierd, new_vm_id
from tests.integration.test_verbs import vm_params
from tests.unit.vdsm_stomp_client import EVENTS, ServerError, VdsmLikeClient, address_of


@pytest.fixture
def vdsm_pierd(tmp_path: Path, test_uri: str) -> Iterator[Pierd]:
    daemon = Pierd(tmp_path / "state", test_uri, "--vdsm-stomp", "127.0.0.1:0", secure=True)
    yield daemon
    assert daemon.stop() == 0


def vdsm_tls(state_dir: Path) -> ssl.SSLContext:
    """What VDSM's client uses: the CA, and a client certificate (pierd trusts the one it made)."""
    context = ssl.create_default_context(cafile=str(state_dir / "tls" / "ca.pem"))
    context.load_cert_chain(str(state_dir / "tls" / "client.pem"), str(state_dir / "tls" / "client-key.pem"))
    return context


def test_vdsm_client_calls_verbs_and_receives_events(vdsm_pierd: Pierd) -> None:
    address = next(line.split(" on ")[-1].strip() for line in vdsm_pierd.log if "VDSM-compatible STOMP on" in line)
    assert address.startswith("stomp+ssl://")
    client = VdsmLikeClient(address_of(address), timeout=20, tls=vdsm_tls(vdsm_pierd.state_dir))
    try:
        client.subscribe(EVENTS)
        assert client.call("Host.ping2") is True
        caps = client.call("Host.getCapabilities")
        assert caps["uuid"] and "cpuCores" in caps
        assert client.call("Host.getVMList") == []
        vm_id = new_vm_id()
        created = client.call("VM.create", vmID=vm_id, vmParams=vm_params(vm_id))
        assert created["vmId"] == vm_id
        assert [vm["vmId"] for vm in client.call("Host.getVMList")] == [vm_id]
        assert client.call("VM.destroy", vmID=vm_id) is True
        down = client.wait_event(lambda e: e["method"] == f"|virt|VM_status|{vm_id}"
                                 and e["params"][vm_id]["status"] == "Down")
        assert down["params"]["seq"] > 0 and down["params"]["notify_time"] > 2**31 - 1
        with pytest.raises(ServerError) as gone:
            client.call("VM.getInfo", vmID=vm_id)
        assert gone.value.code == 1
        info = client.call("Host.getAgentInfo")
        assert info["transports"]["vdsm-stomp"] == address
    finally:
        client.close()


def test_without_a_trusted_certificate_the_endpoint_answers_nothing(vdsm_pierd: Pierd) -> None:
    address = next(line.split(" on ")[-1].strip() for line in vdsm_pierd.log if "VDSM-compatible STOMP on" in line)
    anonymous = ssl.create_default_context(cafile=str(vdsm_pierd.state_dir / "tls" / "ca.pem"))
    client = VdsmLikeClient(address_of(address), timeout=20, tls=anonymous, connect=False)
    try:
        client.connect()
        with pytest.raises(ServerError) as refused:
            client.call("Host.getVMList")
        assert refused.value.code == -32001
    finally:
        client.close()


def test_vdsm_client_in_a_tight_loop_is_never_refused(vdsm_pierd: Pierd) -> None:
    """VDSM's client and the engine do not retry: a monitoring loop must never meet a limit."""
    address = next(line.split(" on ")[-1].strip() for line in vdsm_pierd.log if "VDSM-compatible STOMP on" in line)
    client = VdsmLikeClient(address_of(address), timeout=20, tls=vdsm_tls(vdsm_pierd.state_dir))
    try:
        assert all(client.call("Host.ping2") is True for _ in range(500))
    finally:
        client.close()


def test_root_on_the_local_socket_in_a_tight_loop_is_never_refused(vdsm_pierd: Pierd) -> None:
    from tests.integration.clients import unix_request

    answers = [unix_request(vdsm_pierd.socket, "GET", "/api/v1/host/ping") for _ in range(500)]
    assert answers == [(200, True)] * 500
