"""Live migration between two real hosts on one machine (tests/integration/twohosts.py): host A (the
machine's libvirtd and a pierd) migrates Pier's tiny guest to host B (a libvirtd and a pierd in
namespaces of their own), over Pier's JSON-RPC with mutual TLS and libvirt peer to peer."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.integration.clients import http_request
from tests.integration.conftest import Pierd
from tests.integration.guest import DISK_DIR, NAME_PREFIX, Guest, SerialShell, new_guest, remove_vm, skip_reason
from tests.integration.twohosts import Lab, lab_unusable

pytest_plugins = ["tests.integration.guest"]
_ids = itertools.count(1)
COUNTER = re.compile(r"C(\d+)\n")


def rpc(daemon: Pierd, verb: str, context: ssl.SSLContext | None = None, **params: Any) -> Any:
    """`verb` over JSON-RPC on `daemon`'s HTTP listener; raises AssertionError with the error."""
    status, _, body = http_request("POST", daemon.http + "/jsonrpc",
                                   {"jsonrpc": "2.0", "method": verb, "params": params, "id": next(_ids)},
                                   headers={"Authorization": f"Bearer {daemon.token}"}, context=context)
    reply = json.loads(body)
    if "error" in reply:
        raise RpcError(reply["error"])
    return reply["result"]


class RpcError(AssertionError):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.code = error.get("code")
        self.error = error


@pytest.fixture
def lab(tmp_path: Path, system_libvirt: str) -> Iterator[Lab]:
    for reason in (lab_unusable(), skip_reason()):
        if reason is not None:
            pytest.skip(reason)
    made = Lab(tmp_path / "lab")
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def b_context(lab: Lab) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(lab.tls.ca))


@pytest.fixture
def guest(lab: Lab) -> Iterator[Guest]:
    """The tiny guest on host A, with a disk both hosts see and a NIC on `default`, printing a counter."""
    assert lab.a is not None
    conn = libvirt.open("qemu:///system")
    disk = DISK_DIR / f"{NAME_PREFIX}{uuid.uuid4().hex[:8]}.img"
    disk.write_bytes(b"")
    with open(disk, "wb") as made:
        made.truncate(16 * 2**20)
    vm_id = str(uuid.uuid4())
    started: Guest | None = None
    try:
        started = new_guest(lab.a, conn, str(disk), vm_id)
        started.shell.run("(i=0; while :; do i=$((i+1)); echo C$i; sleep 0.2; done) >/dev/ttyS0 2>&1 & true")
        yield started
    finally:
        if started is not None:
            started.close()
        remove_vm(lab.a, conn, vm_id)
        conn.close()
        disk.unlink(missing_ok=True)


def wait_task(daemon: Pierd, task_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        task = rpc(daemon, "Task.getInfo", taskID=task_id, wait=min(30.0, max(1.0, deadline - time.monotonic())))
        if task["state"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return task


def events(daemon: Pierd, prefix: str, context: ssl.SSLContext | None = None) -> list[dict[str, Any]]:
    return rpc(daemon, "Events.replay", context, after=0, types=[prefix])["events"]


def statuses(daemon: Pierd, vm_id: str, context: ssl.SSLContext | None = None) -> list[str]:
    return [e["params"][vm_id]["status"] for e in events(daemon, f"|virt|VM_status|{vm_id}", context)]


def counters(shell: SerialShell, timeout: float = 20, at_least: int = 2) -> list[int]:
    """The counter values the guest printed on `shell` (waiting for `at_least` of them)."""
    with shell._changed:
        shell._changed.wait_for(lambda: len(COUNTER.findall(shell.buffer)) >= at_least, timeout)
        return [int(n) for n in COUNTER.findall(shell.buffer)]


def start_slow_migration(lab: Lab, guest: Guest) -> dict[str, Any]:
    """VM.migrate of the guest from A to B at 1 MiB/s, once libvirt moves its memory (state
    running, progress above 0): the task."""
    assert lab.a is not None
    task: dict[str, Any] = rpc(lab.a, "VM.migrate", vmID=guest.vm_id,
                               params={"dst": lab.dst, "unsafe": True, "maxBandwidth": 1})
    deadline = time.monotonic() + 60
    while True:
        found = rpc(lab.a, "VM.getMigrationStatus", vmID=guest.vm_id)
        if found["state"] == "running" and found["progress"] > 0:
            return task
        assert time.monotonic() < deadline, found
        time.sleep(0.3)


def test_a_running_guest_moves_to_the_other_host_and_keeps_counting(lab: Lab, guest: Guest,
                                                                    b_context: ssl.SSLContext) -> None:
    assert lab.a is not None
    before = counters(guest.shell)
    assert before, "the guest's counter does not run"
    task = rpc(lab.a, "VM.migrate", vmID=guest.vm_id, params={"dst": lab.dst, "unsafe": True})
    ended = wait_task(lab.a, task["taskID"])
    assert ended["state"] == "succeeded", ended
    last_on_a = max(counters(guest.shell))

    b_conn = lab.b.connect()
    try:
        dom = b_conn.lookupByUUIDString(guest.vm_id)
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert dom.isPersistent()
        xml = dom.XMLDesc(0)
        assert "<interface type='network'>" in xml and guest.dom.name() in xml
        assert str(DISK_DIR) in xml
        shell = SerialShell(b_conn, dom)
        try:
            after = counters(shell, at_least=3)
            assert after and min(after) > last_on_a - 5 and after[-1] > after[0], (last_on_a, after)
            assert "still-here" in shell.run("echo still-here").split()
        finally:
            shell.close()
    finally:
        b_conn.close()

    with pytest.raises(libvirt.libvirtError):  # the source forgets it
        guest.conn.lookupByUUIDString(guest.vm_id)
    gone = rpc(lab.a, "VM.getInfo", vmID=guest.vm_id)  # VDSM's source: Down until destroyed there
    assert gone["status"] == "Down" and gone["exitReason"] == 4, gone
    assert rpc(lab.b_pierd, "VM.getInfo", b_context, vmID=guest.vm_id)["status"] == "Up"

    on_a = statuses(lab.a, guest.vm_id)
    assert on_a[-2:] == ["Migration Source", "Down"], on_a
    down = events(lab.a, f"|virt|VM_status|{guest.vm_id}")[-1]["params"][guest.vm_id]
    assert down["exitReason"] == 4 or "igration" in str(down), down
    assert statuses(lab.b_pierd, guest.vm_id, b_context)[:1] == ["Migration Destination"]
    assert statuses(lab.b_pierd, guest.vm_id, b_context)[-1] == "Up"
    progress = [e["params"][guest.vm_id]["progress"] for e in events(lab.a, "|virt|VM_migration_status|")]
    assert progress and progress[-1] == 100
    assert rpc(lab.a, "VM.getMigrationStatus", vmID=guest.vm_id)["state"] == "succeeded"


def test_a_slow_migration_cancelled_half_way_leaves_the_guest_running_on_the_source(
        lab: Lab, guest: Guest, b_context: ssl.SSLContext) -> None:
    assert lab.a is not None
    task = start_slow_migration(lab, guest)
    assert rpc(lab.a, "Host.getStats")["outgoingVmMigrations"] == 1
    assert rpc(lab.b_pierd, "Host.getStats", b_context)["incomingVmMigrations"] == 1
    rpc(lab.a, "VM.migrateChangeParams", vmID=guest.vm_id, params={"maxBandwidth": 2, "downtime": 300})
    assert rpc(lab.a, "VM.migrateCancel", vmID=guest.vm_id) is True
    ended = wait_task(lab.a, task["taskID"], 60)
    assert ended["state"] in ("cancelled", "failed"), ended
    assert guest.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert "alive" in guest.shell.run("echo alive").split()  # the counter may print between
    assert rpc(lab.a, "VM.getInfo", vmID=guest.vm_id)["status"] == "Up"
    assert rpc(lab.a, "VM.getMigrationStatus", vmID=guest.vm_id)["state"] == "cancelled"
    b_conn = lab.b.connect()
    try:
        assert guest.vm_id not in [d.UUIDString() for d in b_conn.listAllDomains()]
    finally:
        b_conn.close()
    assert rpc(lab.b_pierd, "Host.getStats", b_context)["incomingVmMigrations"] == 0
    assert rpc(lab.a, "Host.getStats")["outgoingVmMigrations"] == 0
    with pytest.raises(RpcError) as refused:  # nothing runs now
        rpc(lab.a, "VM.migrateChangeParams", vmID=guest.vm_id, params={"maxBandwidth": 5})
    assert refused.value.code == 81


def test_a_destination_whose_pierd_is_down_refuses_and_the_guest_stays(lab: Lab, guest: Guest) -> None:
    assert lab.a is not None
    lab.b.stop_pierd()
    task = rpc(lab.a, "VM.migrate", vmID=guest.vm_id, params={"dst": lab.dst, "unsafe": True})
    ended = wait_task(lab.a, task["taskID"], 60)
    assert ended["state"] == "failed" and ended["error"]["code"] == 10, ended
    assert lab.dst in ended["error"]["message"]
    assert guest.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert rpc(lab.a, "VM.getInfo", vmID=guest.vm_id)["status"] == "Up"
    assert "Migration Source" not in statuses(lab.a, guest.vm_id)


class PierCli:
    """`pier ARGS` run as a subprocess against A's pierd, its output collected line by line."""

    def __init__(self, lab: Lab, *args: str) -> None:
        assert lab.a is not None
        self.process = subprocess.Popen([sys.executable, "-m", "pier.cli", *args, "--url", lab.a.http],
                                        env={**os.environ, "PIER_TOKEN": lab.a.token}, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.process.stdout, self.out), (self.process.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    def wait_out(self, text: str, timeout: float = 120) -> bool:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.out):
            if time.monotonic() > deadline or self.process.poll() is not None:
                return False
            time.sleep(0.1)
        return True

    def finish(self, timeout: float = 240) -> tuple[int, str, str]:
        """(exit status, stdout, stderr) once it has ended."""
        try:
            self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        for reader in self._readers:
            reader.join(10)
        return self.process.returncode, "".join(self.out), "".join(self.err)


def test_the_cli_follows_a_migration_ctrl_c_cancels_it_and_a_second_run_moves_the_guest(
        lab: Lab, guest: Guest, b_context: ssl.SSLContext) -> None:
    assert lab.a is not None
    slow = PierCli(lab, "vm", "migrate", guest.vm_id, "--to", lab.dst, "--follow", "--max-bandwidth", "1", "--unsafe")
    try:
        assert slow.wait_out("% running"), slow.out  # a progress line from VM.getMigrationStatus
        assert rpc(lab.a, "VM.getMigrationStatus", vmID=guest.vm_id)["state"] == "running"
        interrupted = time.monotonic()
        slow.process.send_signal(signal.SIGINT)
    finally:
        code, out, err = slow.finish()
    print(f"Ctrl-C to the CLI's exit, the cancel confirmed: {time.monotonic() - interrupted:.1f} s")
    assert code == 130, (out, err)
    assert f"migrating VM {guest.vm_id} to {lab.dst}" in out
    assert f"cancelling the migration of VM {guest.vm_id} to {lab.dst}" in err
    assert f"migration cancelled; VM {guest.vm_id} stays on this host: Up" in err, err
    assert guest.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert "alive" in guest.shell.run("echo alive").split()  # the counter may print between
    assert rpc(lab.a, "VM.getMigrationStatus", vmID=guest.vm_id)["state"] == "cancelled"
    assert rpc(lab.b_pierd, "Host.getStats", b_context)["incomingVmMigrations"] == 0
    assert guest.vm_id not in rpc(lab.b_pierd, "Host.getVMList", b_context, fullStatus=False)  # no Down leftover

    code, out, err = PierCli(lab, "vm", "migrate", guest.vm_id, "--to", lab.dst, "--follow", "--unsafe").finish()
    assert code == 0, (out, err)
    assert f"VM {guest.vm_id} migrated to {lab.dst}" in out
    assert rpc(lab.b_pierd, "VM.getInfo", b_context, vmID=guest.vm_id)["status"] == "Up"
    assert rpc(lab.a, "VM.getInfo", vmID=guest.vm_id)["status"] == "Down"


def silent_listener(lab: Lab) -> tuple[subprocess.Popen[str], str]:
    """A socket on host B that takes connections and never answers (a pierd hung, or a firewall
    that lets the SYN through): (its process, HOST:PORT)."""
    script = ("import socket, sys, time\n"
              f"s = socket.socket(); s.bind(('{lab.b.address}', 0)); s.listen(16)\n"
              "print(s.getsockname()[1], flush=True); time.sleep(600)\n")
    process = subprocess.Popen([*lab.b.enter, sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, f"{lab.b.address}:{int(process.stdout.readline())}"


def test_bad_destinations_are_refused_clearly_and_the_guest_stays_up(lab: Lab, guest: Guest,
                                                                      b_context: ssl.SSLContext) -> None:
    assert lab.a is not None
    b_port = lab.dst.rsplit(":", 1)[1]
    # this host itself, by the address A's clients use and by A's end of the link to B: no task starts
    for itself in (lab.a.http.removeprefix("http://"), f"{lab.b.peer_address}:{b_port}"):
        with pytest.raises(RpcError) as refused:
            rpc(lab.a, "VM.migrate", vmID=guest.vm_id, params={"dst": itself, "unsafe": True})
        assert refused.value.code == 12 and "is this host itself" in str(refused.value), refused.value.error
    assert not [t for t in rpc(lab.a, "Host.getAllTasks").values() if t.get("verb") == "VM.migrate"]

    # a closed port on B, through the CLI: exit 1, the error names the destination
    closed = f"{lab.b.address}:1"
    started = time.monotonic()
    code, out, err = PierCli(lab, "vm", "migrate", guest.vm_id, "--to", closed, "--follow").finish()
    print(f"pier vm migrate to a closed port exited {code} after {time.monotonic() - started:.1f} s")
    assert code == 1, (out, err)
    assert f"Could not connect to peer VDS at {closed}" in err and f"VM {guest.vm_id} on this host: Up" in err

    # something at B that never answers: the connect timeout ends it
    listener, silent = silent_listener(lab)
    try:
        started = time.monotonic()
        task = rpc(lab.a, "VM.migrate", vmID=guest.vm_id, params={"dst": silent, "unsafe": True})
        ended = wait_task(lab.a, task["taskID"], 120)
        print(f"a destination that never answers failed after {time.monotonic() - started:.1f} s")
    finally:
        listener.kill()
        listener.wait()
    assert ended["state"] == "failed" and ended["error"]["code"] == 10, ended
    assert f"Could not connect to peer VDS at {silent}: no answer within" in ended["error"]["message"]

    # B lacks the network the guest's NIC is on: B's VM.migrationCreate refuses, A reports it
    b_conn = lab.b.connect()
    try:
        network = b_conn.networkLookupByName("default")
        network.destroy()
        network.undefine()
        task = rpc(lab.a, "VM.migrate", vmID=guest.vm_id, params={"dst": lab.dst, "unsafe": True})
        ended = wait_task(lab.a, task["taskID"], 120)
        assert ended["state"] == "failed", ended
        assert "VM.migrationCreate" in ended["error"]["message"] and lab.dst in ended["error"]["message"]
        assert "has no active network 'default'" in ended["error"]["message"], ended
        assert guest.vm_id not in [d.UUIDString() for d in b_conn.listAllDomains()]
    finally:
        b_conn.close()
    assert rpc(lab.b_pierd, "Host.getStats", b_context)["incomingVmMigrations"] == 0

    assert guest.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert rpc(lab.a, "VM.getInfo", vmID=guest.vm_id)["status"] == "Up"
    assert "Migration Source" not in statuses(lab.a, guest.vm_id)
    assert rpc(lab.a, "VM.getMigrationStatus", vmID=guest.vm_id)["state"] == "failed"
    assert "alive" in guest.shell.run("echo alive").split()  # the counter may print between


def test_a_convergence_schedule_that_aborts_a_stalling_migration_leaves_the_guest_up_here(
        lab: Lab, guest: Guest, b_context: ssl.SSLContext) -> None:
    """At 1 MiB/s a pause of 1 ms never suffices, so every pass over memory stalls: the schedule's
    abort ends the migration as failed, and the guest runs on here."""
    assert lab.a is not None
    schedule = {"init": [{"name": "setDowntime", "params": ["1"]}],
                "stalling": [{"limit": -1, "action": {"name": "abort", "params": []}}]}
    task = rpc(lab.a, "VM.migrate", vmID=guest.vm_id,
               params={"dst": lab.dst, "unsafe": True, "maxBandwidth": 1, "convergenceSchedule": schedule})
    ended = wait_task(lab.a, task["taskID"], 600)
    assert ended["state"] == "failed", ended
    assert "convergence schedule aborted it" in ended["error"]["message"], ended
    assert guest.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert "alive" in guest.shell.run("echo alive").split()
    assert rpc(lab.a, "VM.getInfo", vmID=guest.vm_id)["status"] == "Up"
    assert rpc(lab.a, "VM.getMigrationStatus", vmID=guest.vm_id)["state"] == "failed"
    b_conn = lab.b.connect()
    try:
        assert guest.vm_id not in [d.UUIDString() for d in b_conn.listAllDomains()]
    finally:
        b_conn.close()
    assert rpc(lab.b_pierd, "Host.getStats", b_context)["incomingVmMigrations"] == 0


def test_a_schedule_with_an_unknown_action_is_refused_before_any_task(lab: Lab, guest: Guest) -> None:
    assert lab.a is not None
    with pytest.raises(RpcError) as refused:
        rpc(lab.a, "VM.migrate", vmID=guest.vm_id, params={
            "dst": lab.dst, "unsafe": True,
            "convergenceSchedule": {"stalling": [{"limit": 1, "action": {"name": "setBandwidth", "params": ["5"]}}]}})
    assert refused.value.code == -32602 and "setBandwidth" in str(refused.value), refused.value.error
    assert rpc(lab.a, "VM.getMigrationStatus", vmID=guest.vm_id)["state"] == "none"
