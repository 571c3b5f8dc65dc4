"""A live migration whose source pierd is killed (SIGKILL) half way and restarted (the two-host lab of
tests/integration/twohosts.py, the fixtures of test_migration.py).

libvirt drives the migration peer to peer, so it goes on without the pierd that started it. After
the restart the task has ended saying so, VM.getMigrationStatus and VM.getInfo say the migration
still runs from here, and VM.migrateCancel stops it: the guest runs on the source, and nowhere else.
"""

from __future__ import annotations

import ssl
import time

import libvirt
import pytest

from tests.integration.conftest import Pierd
from tests.integration.guest import Guest
from tests.integration.test_migration import rpc, start_slow_migration, wait_task
from tests.integration.twohosts import Lab

pytest_plugins = ["tests.integration.test_migration"]  # the lab, guest and b_context fixtures


def restart_a(lab: Lab) -> Pierd:
    """Host A's pierd killed with SIGKILL and started again on the same state, as Lab started it."""
    assert lab.a is not None
    lab.a.kill()
    lab.a = Pierd(lab.workdir / "a-state", "qemu:///system", "--migration-cert", str(lab.tls.client),
                  "--migration-key", str(lab.tls.client_key), "--migration-ca", str(lab.tls.ca),
                  "--migration-libvirt-uri", "qemu+tcp://{host}/system")
    return lab.a


def b_domains(lab: Lab) -> dict[str, int]:
    conn = lab.b.connect()
    try:
        return {d.UUIDString(): d.state()[0] for d in conn.listAllDomains()}
    finally:
        conn.close()


def test_a_migration_whose_source_pierd_restarts_is_followed_and_can_be_cancelled(
        lab: Lab, guest: Guest, b_context: ssl.SSLContext) -> None:
    assert lab.a is not None
    task = start_slow_migration(lab, guest)

    a = restart_a(lab)
    assert guest.dom.jobStats(0).get("type") != libvirt.VIR_DOMAIN_JOB_NONE  # libvirt went on without pierd
    ended = wait_task(a, task["taskID"], 30)
    assert ended["state"] == "failed", ended
    assert "goes on" in ended["error"]["message"] and lab.dst in ended["error"]["message"], ended
    status = rpc(a, "VM.getMigrationStatus", vmID=guest.vm_id)
    assert status["state"] == "running" and status["dst"] == lab.dst, status
    assert rpc(a, "VM.getInfo", vmID=guest.vm_id)["status"] == "Migration Source"
    assert rpc(a, "Host.getStats")["outgoingVmMigrations"] == 1

    assert rpc(a, "VM.migrateCancel", vmID=guest.vm_id) is True
    deadline = time.monotonic() + 60
    while rpc(a, "VM.getMigrationStatus", vmID=guest.vm_id)["state"] == "running":
        assert time.monotonic() < deadline, "the cancelled migration did not end"
        time.sleep(0.3)
    assert rpc(a, "VM.getMigrationStatus", vmID=guest.vm_id)["state"] == "cancelled"
    assert guest.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert guest.shell.run("echo alive").strip() == "alive"
    assert rpc(a, "VM.getInfo", vmID=guest.vm_id)["status"] == "Up"
    assert rpc(a, "Host.getStats")["outgoingVmMigrations"] == 0
    deadline = time.monotonic() + 30
    while guest.vm_id in b_domains(lab):  # the destination's libvirt drops the incoming VM
        assert time.monotonic() < deadline, b_domains(lab)
        time.sleep(0.3)
    assert rpc(lab.b_pierd, "Host.getStats", b_context)["incomingVmMigrations"] == 0


def test_a_migration_whose_source_pierd_restarts_ends_with_the_guest_on_the_destination_only(
        lab: Lab, guest: Guest, b_context: ssl.SSLContext) -> None:
    assert lab.a is not None
    task = start_slow_migration(lab, guest)

    a = restart_a(lab)
    assert wait_task(a, task["taskID"], 30)["state"] == "failed"  # said to go on, as above
    rpc(a, "VM.migrateChangeParams", vmID=guest.vm_id, params={"maxBandwidth": 10000})  # the followed job
    deadline = time.monotonic() + 120
    while (status := rpc(a, "VM.getMigrationStatus", vmID=guest.vm_id))["state"] == "running":
        assert time.monotonic() < deadline, status
        time.sleep(0.3)
    assert status["state"] == "succeeded" and status["progress"] == 100, status
    assert b_domains(lab).get(guest.vm_id) == libvirt.VIR_DOMAIN_RUNNING
    with pytest.raises(libvirt.libvirtError):  # the source forgets it
        guest.conn.lookupByUUIDString(guest.vm_id)
    assert rpc(a, "VM.getInfo", vmID=guest.vm_id)["status"] == "Down"
    assert rpc(a, "Host.getStats")["outgoingVmMigrations"] == 0
    assert rpc(lab.b_pierd, "VM.getInfo", b_context, vmID=guest.vm_id)["status"] == "Up"
