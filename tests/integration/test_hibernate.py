"""Hibernation, restore and memory snapshots of a running tiny guest (qemu:///system, real volumes).

The guest keeps a marker in RAM (a file in its initramfs root and a variable of its serial
shell). VM.hibernate saves it into a memory volume and the VM goes Down ("SaveState
succeeded"); VM.create with VDSM's restore params brings it back, marker and shell as they were.
A memory snapshot does the same beside a disk snapshot, restored onto a new layer over the
snapshot's volume. Bad input is refused before anything changes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pytest

from pier import cli
from pier.host.hibernation import file_disks
from tests.integration.clients import HttpRpcClient, JsonRpcError, http_request
from tests.integration.conftest import Pierd
from tests.integration.guest import DISK_DIR, Guest, new_guest, remove_vm, skip_reason, start_default_network
from tests.integration.test_volumes import Site, make_domain

pytestmark = pytest.mark.kvm
MiB = 1 << 20
GUEST_MIB = 128


@dataclass
class Lab:
    site: Site
    conn: libvirt.virConnect
    guest: Guest
    vm_id: str
    img: str
    chain: list[str]  # the disk's volumes, base first

    def path(self, img: str, vol: str) -> Path:
        return self.site.domain_dir(self.site.sd) / "images" / img / vol

    def disk(self, vol: str) -> dict[str, Any]:
        return {"deviceType": "disk", "device": "disk", "iface": "virtio", "poolID": self.site.pool,
                "domainID": self.site.sd, "imageID": self.img, "volumeID": vol}

    def memory_volumes(self) -> tuple[str, str, str, str]:
        """A new RAW memory volume and memory-config volume: (dump image, dump volume, conf image, conf volume)."""
        ids = tuple(str(uuid.uuid4()) for _ in range(4))
        self.site.create(ids[0], ids[1], size=4 * GUEST_MIB * MiB, fmt="RAW")
        self.site.create(ids[2], ids[3], size=1 * MiB, fmt="RAW")
        return ids  # type: ignore[return-value]

    def handle(self, ids: tuple[str, ...]) -> str:
        return ",".join([self.site.sd, self.site.pool, *ids])

    def statuses(self) -> list[dict[str, Any]]:
        kept = json.loads(http_request("GET", f"{self.guest.api}/events?after=0&types=virt.VM_status&limit=1000")[2])
        return [e["params"][self.vm_id] for e in kept["events"] if self.vm_id in e["params"]]

    def wait_status(self, status: str, after: int, timeout: float = 60) -> list[dict[str, Any]]:
        """The VM's status events since the `after`-th, once one says `status`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.statuses()[after:]
            if any(e["status"] == status for e in seen):
                return seen
            time.sleep(0.2)
        raise AssertionError(f"no {status} event within {timeout} s: {self.statuses()[after:]}")

    def reattach(self) -> None:
        """A new Guest (libvirt domain, serial console) for the VM as it runs now."""
        self.guest.close()
        self.guest = Guest(self.site.daemon, self.vm_id, self.conn)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, system_libvirt: str) -> Iterator[Lab]:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(f"no tiny guest: {reason}")
    conn = libvirt.open(system_libvirt)
    start_default_network(conn)
    dc = DISK_DIR / f"pier-hibernate-{uuid.uuid4().hex[:8]}"
    pool, sd, sd2 = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    vm_id = str(uuid.uuid4())
    daemon = None
    lab = None
    try:
        for domain in (sd, sd2):
            make_domain(dc, domain, pool)
        daemon = Pierd(tmp_path_factory.mktemp("hibernate") / "state", system_libvirt, "--data-center", str(dc))
        site = Site(daemon, HttpRpcClient(daemon.http), dc, pool, sd, sd2)
        img, base = str(uuid.uuid4()), str(uuid.uuid4())
        site.create(img, base, size=16 * MiB)
        console = {"deviceType": "console", "device": "console", "specParams": {"consoleType": "serial"}}
        disk = {"deviceType": "disk", "device": "disk", "iface": "virtio", "poolID": pool, "domainID": sd,
                "imageID": img, "volumeID": base}
        guest = new_guest(daemon, conn, vm_id=vm_id, devices=[console, disk], nic=False, mem_mib=GUEST_MIB)
        lab = Lab(site, conn, guest, vm_id, img, [base])
        yield lab
    finally:
        if lab is not None:  # a test may have restarted pierd, or opened a new libvirt connection
            lab.guest.close()
            daemon, conn = lab.site.daemon, lab.conn
        if daemon is not None:
            remove_vm(daemon, conn, vm_id)
            assert daemon.stop() == 0
        conn.close()
        shutil.rmtree(dc, ignore_errors=True)


def mark(lab: Lab, text: str) -> None:
    """Leave `text` in the guest's RAM: a file in its initramfs root and a variable of its shell."""
    lab.guest.shell.run(f"echo {text} > /pier-marker; PIER_MARKER={text}")


def marker(lab: Lab) -> str:
    return lab.guest.shell.run("cat /pier-marker; echo \"var=$PIER_MARKER\"").strip()


def hibernate(lab: Lab, handle: str) -> dict[str, Any]:
    return lab.site.wait(lab.site.rpc.call("VM.hibernate", vmID=lab.vm_id, hibernationVolHandle=handle), 300)


def refused(call: Any) -> JsonRpcError:
    with pytest.raises(JsonRpcError) as caught:
        call()
    return caught.value


def test_a_missing_memory_volume_or_an_unknown_vm_is_refused_and_the_vm_runs_on(lab: Lab) -> None:
    dump_img, dump_vol, conf_img, conf_vol = lab.memory_volumes()
    blocks = lab.path(dump_img, dump_vol).stat().st_blocks
    missing = str(uuid.uuid4())
    error = refused(lambda: lab.site.rpc.call("VM.hibernate", vmID=lab.vm_id,
                                              hibernationVolHandle=lab.handle((dump_img, missing, conf_img, conf_vol))))
    assert error.code == 201 and "hibernationVolHandle" in error.message, error  # VolumeDoesNotExist
    cow_img, cow_vol = str(uuid.uuid4()), str(uuid.uuid4())
    lab.site.create(cow_img, cow_vol, size=64 * MiB, fmt="COW")
    error = refused(lambda: lab.site.rpc.call("VM.hibernate", vmID=lab.vm_id,
                                              hibernationVolHandle=lab.handle((cow_img, cow_vol, conf_img, conf_vol))))
    assert "RAW" in error.message, error
    small_img, small_vol = str(uuid.uuid4()), str(uuid.uuid4())
    lab.site.create(small_img, small_vol, size=GUEST_MIB * MiB, fmt="RAW")  # the RAM, but no room for the rest
    error = refused(lambda: lab.site.rpc.call("VM.hibernate", vmID=lab.vm_id, hibernationVolHandle=lab.handle(
        (small_img, small_vol, conf_img, conf_vol))))
    assert "refused before saving" in error.message and error.data["needed"] > GUEST_MIB * MiB, error
    error = refused(lambda: lab.site.rpc.call("VM.hibernate", vmID=str(uuid.uuid4()),
                                              hibernationVolHandle=lab.handle((dump_img, dump_vol, conf_img, conf_vol))))
    assert error.code == 1, error  # noVM
    error = refused(lambda: lab.site.rpc.call("VM.hibernate", vmID=lab.vm_id, hibernationVolHandle="a,b,c"))
    assert error.code == -32602, error
    assert lab.site.rpc.call("VM.getStats", vmID=lab.vm_id)[0]["status"] == "Up"
    assert lab.path(dump_img, dump_vol).stat().st_blocks == blocks  # nothing written


def test_a_save_that_fails_leaves_the_vm_running_as_it_was(lab: Lab) -> None:
    mark(lab, "before-a-failed-save")
    ids = lab.memory_volumes()
    state = lab.path(ids[0], ids[1])
    subprocess.run(["chattr", "+i", str(state)], check=True)  # not even root (libvirtd) may write it now
    seen = len(lab.statuses())
    try:
        ended = hibernate(lab, lab.handle(ids))
    finally:
        subprocess.run(["chattr", "-i", str(state)], check=True)
    assert ended["state"] == "failed" and ended["error"]["code"] == 12, ended  # migrateErr, as VDSM's save
    assert lab.site.rpc.call("VM.getStats", vmID=lab.vm_id)[0]["status"] == "Up"
    assert marker(lab) == "before-a-failed-save\nvar=before-a-failed-save"
    statuses = [e["status"] for e in lab.statuses()[seen:]]
    assert "Down" not in statuses and statuses[-1:] in ([], ["Up"]), statuses


def test_hibernate_then_restore_brings_the_guest_back_where_it_was(lab: Lab) -> None:
    mark(lab, "before-hibernation")
    ids = lab.memory_volumes()
    seen = len(lab.statuses())
    ended = hibernate(lab, lab.handle(ids))
    assert ended["state"] == "succeeded" and ended["progress"] == 100, ended
    assert ended["result"]["stateBytes"] > MiB, ended
    events = lab.wait_status("Down", seen)
    assert [e["status"] for e in events] == ["Saving State", "Down"], events
    assert events[-1]["exitReason"] == 5 and events[-1]["exitMessage"] == "SaveState succeeded", events
    assert lab.site.rpc.call("VM.getStats", vmID=lab.vm_id)[0]["status"] == "Down"
    state = lab.path(ids[0], ids[1])
    assert state.stat().st_blocks * 512 > MiB  # the memory volume holds the saved state
    conf = json.loads(lab.path(ids[2], ids[3]).read_bytes().rstrip(b"\0"))
    assert conf["vmId"] == lab.vm_id and f"<uuid>{lab.vm_id}</uuid>" in conf["_srcDomXML"]

    error = refused(lambda: lab.site.rpc.call("VM.hibernate", vmID=lab.vm_id, hibernationVolHandle=lab.handle(ids)))
    assert error.code == 6, error  # down: only a running VM can be hibernated

    lab.site.rpc.call("VM.destroy", vmID=lab.vm_id)
    seen = len(lab.statuses())
    made = lab.site.rpc.call("VM.create", vmParams={"vmId": lab.vm_id, "hiberVolHandle": lab.handle(ids),
                                                    "devices": [lab.disk(lab.chain[-1])]})
    assert made["status"] == "Up", made
    events = lab.wait_status("Up", seen)
    assert [e["status"] for e in events][:2] == ["Restoring state", "Up"], events
    lab.reattach()
    assert marker(lab) == "before-hibernation\nvar=before-hibernation"


def test_a_memory_snapshot_restores_onto_a_new_layer(lab: Lab) -> None:
    mark(lab, "at-the-snapshot")
    base = lab.chain[-1]
    top = str(uuid.uuid4())
    lab.site.create(lab.img, top, size=16 * MiB, parent=base)
    ids = lab.memory_volumes()
    drives = [{"domainID": lab.site.sd, "imageID": lab.img, "baseVolumeID": base, "volumeID": top}]
    missing = (ids[0], str(uuid.uuid4()), ids[2], ids[3])
    error = refused(lambda: lab.site.rpc.call("VM.snapshot", vmID=lab.vm_id, snapMemory=lab.handle(missing),
                                              snapDrives=drives))
    assert error.code == 201 and "snapMemory" in error.message, error
    assert file_disks(lab.guest.dom.XMLDesc(0))["vda"] == str(lab.path(lab.img, base))  # the disk did not move
    result = lab.site.rpc.call("VM.snapshot", vmID=lab.vm_id, snapMemory=lab.handle(ids), snapDrives=drives)
    assert result["state"] == "succeeded", result
    lab.chain.append(top)
    assert lab.path(ids[0], ids[1]).stat().st_blocks * 512 > MiB
    mark(lab, "after-the-snapshot")  # the VM runs on, on the new layer

    lab.site.rpc.call("VM.destroy", vmID=lab.vm_id)
    dump = {"domainID": lab.site.sd, "poolID": lab.site.pool, "imageID": ids[0], "volumeID": ids[1]}
    error = refused(lambda: lab.site.rpc.call("VM.create", vmParams={
        "vmId": lab.vm_id, "restoreState": dump, "restoreFromSnapshot": True}))
    assert "vmParams.devices" in error.message, error  # its disk would run on a volume others stand on
    preview = str(uuid.uuid4())
    lab.site.create(lab.img, preview, size=16 * MiB, parent=base)
    made = lab.site.rpc.call("VM.create", vmParams={"vmId": lab.vm_id, "restoreState": dump,
                                                    "restoreFromSnapshot": True, "devices": [lab.disk(preview)]})
    assert made["status"] == "Up", made
    lab.reattach()
    assert marker(lab) == "at-the-snapshot\nvar=at-the-snapshot"
    disk = [d for d in lab.site.rpc.call("VM.getInfo", vmID=lab.vm_id)["devices"] if d.get("device") == "disk"]
    assert disk[0]["path"] == str(lab.path(lab.img, preview)), disk


def test_pier_vm_hibernate_then_a_restore_by_vdsm_42s_volume_specs(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    daemon = lab.site.daemon
    mark(lab, "before-the-cli")
    assert cli.main(["vm", "hibernate", lab.vm_id, "--url", daemon.http, "--token", daemon.token,
                     "--pool", lab.site.pool]) == 0
    out = capsys.readouterr().out
    handle = out.split("hibernationVolHandle: ")[1].split()[0]
    sd, pool, dump_img, dump_vol, conf_img, conf_vol = handle.split(",")
    assert (sd, pool) == (lab.site.sd, lab.site.pool)
    assert lab.site.rpc.call("VM.getStats", vmID=lab.vm_id)[0]["status"] == "Down"
    assert lab.path(dump_img, dump_vol).stat().st_blocks * 512 > MiB

    lab.site.rpc.call("VM.destroy", vmID=lab.vm_id)
    spec = {"domainID": sd, "poolID": pool, "device": "disk"}
    made = lab.site.rpc.call("VM.create", vmParams={  # no devices: the disks are where they were saved
        "vmId": lab.vm_id, "memoryDumpVolume": {**spec, "imageID": dump_img, "volumeID": dump_vol},
        "memoryConfVolume": {**spec, "imageID": conf_img, "volumeID": conf_vol}})
    assert made["status"] == "Up", made
    lab.reattach()
    assert marker(lab) == "before-the-cli\nvar=before-the-cli"
