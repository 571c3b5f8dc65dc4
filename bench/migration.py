"""Live migration through Pier beside libvirt's own, on the tiny guest between the two-host lab's libvirtds.

The lab (tests/integration/twohosts.py): host A is this machine's libvirtd and a pierd, host B a
libvirtd and a pierd in namespaces; the guest's disk is in /var/lib/libvirt/images, which both see.
Each round boots two tiny guests on A (through A's pierd, a 16 MiB disk, a NIC on `default`, the
counter loop of tests/integration/test_migration.py running) and migrates one each way, in turns
(which goes first alternates, to cancel drift):

  VM.migrate (pierd)       VM.migrate over JSON-RPC to A's pierd, until Task.getInfo (long poll)
                           says succeeded: what a client waits for, with Pier's own steps (asking
                           B's pierd who it is, VM.migrationCreate there, progress polling, waiting
                           until A's pierd reports the VM Down)
  migrateToURI3 (floor)    libvirt-python in this process on A's libvirtd, the same flags Pier uses
                           (LIVE, PEER2PEER, PERSIST_DEST, UNDEFINE_SOURCE, UNSAFE), the same
                           destination libvirtd URI and QEMU migration URI

Downtime of both is libvirt's: the completed job statistics of the incoming migration on B
(`jobStats(VIR_DOMAIN_JOB_STATS_COMPLETED)`'s `downtime`, which B's libvirtd computes from the
source's figures). Guests are removed from B after each round. Targets: total time <= 1.1x the
floor; downtime the same within noise. p50 and p99 (the latter is the worst of few rounds).

Where the time goes: QEMU's own migration (the job's time_elapsed; it varies most from run to run
on a loaded machine), the rest (libvirt's peer-to-peer steps: starting the destination's QEMU,
Finish and Confirm; and Pier's), and Pier's steps alone, from A's events: before libvirt's call
(Host.getAgentInfo and VM.migrationCreate on B's pierd) and after it (until the task ends).

Run (as root, with libvirtd and the built tiny guest): .venv/bin/python bench/migration.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import ssl
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import libvirt
from common import report  # puts the repository on sys.path

from tests.integration.clients import http_request
from tests.integration.conftest import Pierd
from tests.integration.guest import (
    DISK_DIR,
    NAME_PREFIX,
    Guest,
    new_guest,
    remove_vm,
    skip_reason,
    start_default_network,
    use_kvm,
)
from tests.integration.twohosts import Lab, lab_unusable

FLAGS = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
         | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE | libvirt.VIR_MIGRATE_UNSAFE)
COUNTER_LOOP = "(i=0; while :; do i=$((i+1)); echo C$i; sleep 0.2; done) >/dev/ttyS0 2>&1 & true"


def rpc(daemon: Pierd, verb: str, context: ssl.SSLContext | None = None, **params: Any) -> Any:
    status, _, body = http_request("POST", daemon.http + "/jsonrpc",
                                   {"jsonrpc": "2.0", "method": verb, "params": params, "id": 1},
                                   headers={"Authorization": f"Bearer {daemon.token}"}, timeout=600,
                                   context=context)
    reply = json.loads(body)
    if "error" in reply:
        raise RuntimeError(f"{verb}: {reply['error']}")
    return reply["result"]


class Round:
    """One guest booted on A for one migration, and its clean-up on both hosts."""

    def __init__(self, lab: Lab, conn: libvirt.virConnect) -> None:
        assert lab.a is not None
        self.lab, self.conn = lab, conn
        self.vm_id = str(uuid.uuid4())
        self.disk = DISK_DIR / f"{NAME_PREFIX}{self.vm_id[:8]}.img"
        with open(self.disk, "wb") as made:
            made.truncate(16 * 2**20)
        self.guest: Guest | None = None
        try:
            self.guest = new_guest(lab.a, conn, str(self.disk), self.vm_id)
            self.guest.shell.run(COUNTER_LOOP)
        except BaseException:
            self.close()
            raise

    def completed(self) -> dict[str, Any]:
        """The completed incoming migration's job statistics, as B's libvirtd recorded them."""
        b_conn = self.lab.b.connect()
        try:
            dom = b_conn.lookupByUUIDString(self.vm_id)
            if dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
                raise RuntimeError(f"VM {self.vm_id} is not running on B after its migration")
            return dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        finally:
            b_conn.close()

    def close(self) -> None:
        assert self.lab.a is not None
        if self.guest is not None:
            self.guest.close()
        remove_vm(self.lab.a, self.conn, self.vm_id)
        # B's pierd counts a VM as incoming until it notices it running there (Host.getStats looks);
        # one destroyed before that would count for INCOMING_TIMEOUT and soon hit the incoming limit.
        context = ssl.create_default_context(cafile=str(self.lab.tls.ca))
        deadline = time.monotonic() + 30
        while rpc(self.lab.b_pierd, "Host.getStats", context)["incomingVmMigrations"] and time.monotonic() < deadline:
            time.sleep(0.2)
        b_conn = self.lab.b.connect()
        try:
            dom = b_conn.lookupByUUIDString(self.vm_id)
            if dom.isActive():
                dom.destroy()
            if dom.isPersistent():
                dom.undefine()
        except libvirt.libvirtError:
            pass
        finally:
            b_conn.close()
        self.disk.unlink(missing_ok=True)


def event_seconds(event: dict[str, Any]) -> float:
    """An event's notify_time as time.monotonic() seconds (pierd's clock is this machine's)."""
    return (event["params"]["notify_time"] - (2**31 - 1)) / 1e3


def through_pier(lab: Lab, one: Round) -> dict[str, float]:
    """Seconds of the whole VM.migrate, and of its phases from A's events: before libvirt's call
    (VM_status "Migration Source"), libvirt's call (until VM_migration_status says succeeded), after it."""
    assert lab.a is not None
    started = time.monotonic()
    task = rpc(lab.a, "VM.migrate", vmID=one.vm_id, params={"dst": lab.dst, "unsafe": True})
    while task.get("state") not in ("succeeded", "failed", "cancelled"):
        task = rpc(lab.a, "Task.getInfo", taskID=task["taskID"], wait=30)
    ended = time.monotonic()
    if task["state"] != "succeeded":
        raise RuntimeError(f"VM.migrate: {task}")
    statuses = rpc(lab.a, "Events.replay", after=0, types=[f"|virt|VM_status|{one.vm_id}"])["events"]
    source = next(event_seconds(e) for e in statuses if e["params"][one.vm_id]["status"] == "Migration Source")
    progress = rpc(lab.a, "Events.replay", after=0, types=[f"|virt|VM_migration_status|{one.vm_id}"])["events"]
    done = next(event_seconds(e) for e in progress if e["params"][one.vm_id]["state"] == "succeeded")
    return {"total": ended - started, "before": source - started, "libvirt": done - source, "after": ended - done}


def through_libvirt(lab: Lab, one: Round) -> dict[str, float]:
    assert one.guest is not None
    params = {libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{lab.b.address}"}
    started = time.monotonic()
    one.guest.dom.migrateToURI3(lab.b.libvirt_uri, params, FLAGS)
    took = time.monotonic() - started
    return {"total": took, "libvirt": took}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="migrations on each side")
    args = parser.parse_args()
    for reason in (lab_unusable(), skip_reason()):
        if reason is not None:
            raise SystemExit(f"cannot run: {reason}")
    libvirt.registerErrorHandler(lambda *_: None, None)
    conn = libvirt.open("qemu:///system")
    start_default_network(conn)
    workdir = Path(tempfile.mkdtemp(prefix="pier-bench-migration-"))
    lab = Lab(workdir / "lab")
    pier: dict[str, list[float]] = defaultdict(list)
    floor: dict[str, list[float]] = defaultdict(list)
    try:
        for n in range(args.rounds):
            order = [(through_pier, pier), (through_libvirt, floor)]
            for migrate, samples in order if n % 2 == 0 else order[::-1]:
                one = Round(lab, conn)
                try:
                    for name, seconds in migrate(lab, one).items():
                        samples[name].append(seconds)
                    stats = one.completed()
                    samples["downtime"].append(stats["downtime"] / 1e3)
                    samples["qemu"].append(stats["time_elapsed"] / 1e3)
                    samples["outside"].append(samples["total"][-1] - samples["qemu"][-1])
                finally:
                    one.close()
            print(f"round {n + 1}: pier {pier['total'][-1]:.3f} s (before libvirt {pier['before'][-1]:.3f} s, "
                  f"libvirt {pier['libvirt'][-1]:.3f} s, after {pier['after'][-1]:.3f} s; QEMU's "
                  f"{pier['qemu'][-1]:.3f} s, downtime {pier['downtime'][-1] * 1e3:.0f} ms), libvirt "
                  f"{floor['total'][-1]:.3f} s (QEMU's {floor['qemu'][-1]:.3f} s, downtime "
                  f"{floor['downtime'][-1] * 1e3:.0f} ms)", flush=True)
        print(f"live migration A->B of the tiny guest (256 MiB, under {'KVM' if use_kvm() else 'TCG'}), "
              f"{args.rounds} on each side, alternating")
        report("total: VM.migrate task as a client sees", pier["total"], floor["total"], "<= 1.1x")
        report("downtime (B's completed job stats)", pier["downtime"], floor["downtime"], "same within noise")
        report("libvirt's call (pierd: its events)", pier["libvirt"], floor["libvirt"])
        report("QEMU's migration (job time_elapsed)", pier["qemu"], floor["qemu"])
        report("total less QEMU's migration", pier["outside"], floor["outside"])
        report("pierd before libvirt's call", pier["before"], None)
        report("pierd after libvirt's call", pier["after"], None)
    finally:
        lab.close()
        conn.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
