"""Post-copy live migration in the two-host lab (tests/integration/twohosts.py): a migration started
with post-copy allowed and a bandwidth too low to finish soon is switched to post-copy by
VM.migrateChangeParams; the guest then runs on host B while its memory still comes from A.

Post-copy needs userfaultfd in the destination's QEMU, which runs unprivileged (qemu.conf's user,
without CAP_SYS_PTRACE). QEMU before 8.1 only has the userfaultfd system call, which the kernel
refuses such a process unless `vm.unprivileged_userfaultfd` is 1 (QEMU 8.1 and later can open
/dev/userfaultfd instead, Linux 6.1 and later, when libvirt lets it); `postcopy_unavailable` says
when the test cannot run for that. On Debian 12 (QEMU 7.2, libvirt 9.0) with the sysctl at its
default 0, VM.migrate with postcopy fails at once: "unable to execute QEMU command
'migrate-set-capabilities': Postcopy is not supported".
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from tests.integration.guest import Guest, SerialShell
from tests.integration.test_migration import b_context, counters, guest, lab, rpc, wait_task  # noqa: F401
from tests.integration.twohosts import Lab

UNPRIVILEGED_USERFAULTFD = Path("/proc/sys/vm/unprivileged_userfaultfd")
DEV_USERFAULTFD = Path("/dev/userfaultfd")
DEV_USERFAULTFD_QEMU = 8_001_000  # QEMU 8.1, in libvirt's getVersion() form


def postcopy_unavailable(qemu_version: int, sysctl: Path = UNPRIVILEGED_USERFAULTFD,
                         device: Path = DEV_USERFAULTFD) -> str | None:
    """Why QEMU `qemu_version` (libvirt's getVersion(): major * 10^6 + minor * 10^3 + micro) cannot
    take a post-copy migration in on this machine, or None."""
    try:
        allowed = sysctl.read_text().strip()
    except OSError:
        return None  # a kernel before 5.2: userfaultfd is open to everyone
    if allowed == "1" or (qemu_version >= DEV_USERFAULTFD_QEMU and device.exists()):
        return None
    major, minor = qemu_version // 1_000_000, qemu_version // 1000 % 1000
    return (f"post-copy needs userfaultfd in the destination's QEMU; QEMU {major}.{minor} only has the "
            f"userfaultfd system call here (QEMU 8.1 and later open /dev/userfaultfd, on Linux 6.1 and later), "
            f"and vm.unprivileged_userfaultfd={allowed} refuses it to QEMU running unprivileged (qemu.conf's "
            f"user, without CAP_SYS_PTRACE). `sysctl vm.unprivileged_userfaultfd=1` allows it")


@pytest.fixture
def postcopy_host(system_libvirt: str) -> Iterator[None]:
    """A host whose QEMU can take post-copy. Where only the sysctl stands in the way, the test
    allows it for its own run and puts it back: a machine-wide setting, so the test is disruptive
    (./dev test runs it last, on its own, with PIER_DISRUPTIVE=1)."""
    conn = libvirt.open(system_libvirt)
    try:
        reason = postcopy_unavailable(conn.getVersion())
    finally:
        conn.close()
    if reason is None:
        yield
        return
    if os.environ.get("PIER_DISRUPTIVE") != "1" or os.geteuid() != 0:
        pytest.skip(f"{reason}; as root with PIER_DISRUPTIVE=1 the test sets it for its own run")
    before = UNPRIVILEGED_USERFAULTFD.read_text().strip()
    UNPRIVILEGED_USERFAULTFD.write_text("1\n")
    try:
        yield
    finally:
        UNPRIVILEGED_USERFAULTFD.write_text(before + "\n")


def wait_state(conn: libvirt.virConnect, vm_id: str, wanted: tuple[int, int], timeout: float = 60) -> None:
    """Wait until the domain's (state, reason) on `conn` is `wanted`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = tuple(conn.lookupByUUIDString(vm_id).state())
        except libvirt.libvirtError as exc:
            found = (-1, exc.get_error_code())
        if found == wanted:
            return
        assert time.monotonic() < deadline, f"VM {vm_id}: (state, reason) {found}, not {wanted}"
        time.sleep(0.1)


@pytest.mark.disruptive
def test_a_slow_migration_switched_to_postcopy_runs_the_guest_on_the_other_host_at_once(
        postcopy_host: None, lab: Lab, guest: Guest, b_context: ssl.SSLContext) -> None:  # noqa: F811
    assert lab.a is not None
    task = rpc(lab.a, "VM.migrate", vmID=guest.vm_id,
               params={"dst": lab.dst, "unsafe": True, "postcopy": True, "maxBandwidth": 1})
    deadline = time.monotonic() + 60
    while True:
        found = rpc(lab.a, "VM.getMigrationStatus", vmID=guest.vm_id)
        if found["state"] == "running" and found["progress"] > 0:
            break
        assert found["state"] in ("starting", "running") and time.monotonic() < deadline, found
        time.sleep(0.3)
    # Post-copy runs unlimited unless told: a limit of its own (which Pier does not set) keeps it
    # going for some seconds, long enough to see the guest run on B while its memory comes from A.
    guest.dom.migrateSetMaxSpeed(4, libvirt.VIR_DOMAIN_MIGRATE_MAX_SPEED_POSTCOPY)  # MiB/s

    assert rpc(lab.a, "VM.migrateChangeParams", vmID=guest.vm_id, params={"postcopy": True}) is True
    assert rpc(lab.a, "VM.getMigrationStatus", vmID=guest.vm_id)["state"] == "postcopy"
    b_conn = lab.b.connect()
    try:
        wait_state(b_conn, guest.vm_id, (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_POSTCOPY))
        assert guest.dom.state() == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY]
        last_on_a = max(counters(guest.shell))
        shell = SerialShell(b_conn, b_conn.lookupByUUIDString(guest.vm_id))
        try:
            during = counters(shell, at_least=3)
            assert min(during) > last_on_a - 5 and during[-1] > during[0], (last_on_a, during)
            assert rpc(lab.a, "VM.getMigrationStatus", vmID=guest.vm_id)["state"] == "postcopy"

            ended = wait_task(lab.a, task["taskID"])
            assert ended["state"] == "succeeded", ended
            dom = b_conn.lookupByUUIDString(guest.vm_id)
            assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING and dom.isPersistent()
            after = counters(shell, at_least=len(during) + 3)
            assert after[-1] > during[-1], (during, after)
            assert shell.run("echo still-here").strip() == "still-here"
        finally:
            shell.close()
    finally:
        b_conn.close()

    assert rpc(lab.a, "VM.getMigrationStatus", vmID=guest.vm_id)["state"] == "succeeded"
    states = [e["params"][guest.vm_id]["state"] for e in
              rpc(lab.a, "Events.replay", after=0, types=[f"|virt|VM_migration_status|{guest.vm_id}"])["events"]]
    assert "postcopy" in states and states[-1] == "succeeded", states
    with pytest.raises(libvirt.libvirtError):  # the source forgets it
        guest.conn.lookupByUUIDString(guest.vm_id)
    assert rpc(lab.a, "VM.getInfo", vmID=guest.vm_id)["status"] == "Down"
    assert rpc(lab.b_pierd, "VM.getInfo", b_context, vmID=guest.vm_id)["status"] == "Up"


@pytest.mark.parametrize(("version", "sysctl", "device", "runs"), [
    (7_002_022, "0", True, False), (7_002_022, "1", True, True), (8_001_000, "0", True, True),
    (8_001_000, "0", False, False), (9_000_000, "1", False, True)])
def test_postcopy_is_refused_only_where_qemu_cannot_have_userfaultfd(
        tmp_path: Path, version: int, sysctl: str, device: bool, runs: bool) -> None:
    setting = tmp_path / "unprivileged_userfaultfd"
    setting.write_text(sysctl + "\n")
    dev = tmp_path / "userfaultfd"
    if device:
        dev.touch()
    reason = postcopy_unavailable(version, setting, dev)
    assert (reason is None) == runs
    if reason is not None:
        assert f"QEMU {version // 1_000_000}.{version // 1000 % 1000} " in reason
        assert "vm.unprivileged_userfaultfd=0" in reason
    assert postcopy_unavailable(7_002_022, tmp_path / "absent", dev) is None
