"""A hibernation stopped mid-save, by Task.stop or by a SIGKILL of pierd (qemu:///system, the tiny
guest of test_hibernate).

So that the stop lands mid-save whatever the disk's speed, the memory volume's file is replaced by
a FIFO that the test drains at a few MiB/s: QEMU writes the state into it as into slow storage
(libvirt opens it as it opens a volume's file). A cancel leaves the guest running as it was and
the memory-config volume without a config (so no restore takes the volume for a hibernation); a
restart finds the save's verdict once libvirt's job has ended: the VM Up (the save never finished),
never Paused.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import libvirt
import pytest

from pier.host.hibernation import read_conf
from tests.integration.clients import HttpRpcClient, http_request
from tests.integration.conftest import Pierd
from tests.integration.guest import Guest
from tests.integration.test_hibernate import Lab, MiB, mark, marker, refused

pytest_plugins = ["tests.integration.test_hibernate"]  # the `lab` fixture: its module's own guest
pytestmark = pytest.mark.kvm
RATE = 4 * MiB  # bytes a second the slow storage takes
PARTIAL_MAGIC, COMPLETE_MAGIC = b"LibvirtQemudPart", b"LibvirtQemudSave"  # a save image's first bytes


class SlowStorage:
    """The memory volume's file as a FIFO drained at `rate` bytes a second (or at once, `drain`),
    what is written kept as a file keeps it: each open writes from offset 0 of `kept`, which
    becomes the volume's file again at `close`.

    The reader opens the FIFO again after each writer closes it, until `close`: libvirt opens the
    file a second time at the end of a save (to write its header), and an open of a FIFO waits
    for a reader, holding libvirtd's job. So `close` first waits for the domain's job to end."""

    def __init__(self, path: Path, lab: Lab, rate: int = RATE) -> None:
        self.path = path
        self.conn = libvirt.open(lab.conn.getURI())  # its own: a call here never waits behind the console's
        self.dom = self.conn.lookupByUUIDString(lab.vm_id)
        self.size = path.stat().st_size
        self.rate = rate
        self.taken = 0
        self.fast = threading.Event()
        self.closing = threading.Event()
        self.kept = path.with_name(path.name + ".kept")
        self.kept.write_bytes(b"")
        path.unlink()
        os.mkfifo(path, 0o660)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while not self.closing.is_set():
            with open(self.path, "rb", buffering=0) as fifo, open(self.kept, "r+b") as kept:  # waits for a writer
                while chunk := fifo.read(64 << 10):
                    kept.write(chunk)
                    self.taken += len(chunk)
                    if not self.fast.is_set():
                        time.sleep(len(chunk) / self.rate)

    @staticmethod
    def _header_first(kept: Any) -> None:
        """libvirt ends a save by writing its header, now marked complete, over the partial one at
        offset 0 of a second open; when that open came before the first writer's close, a FIFO
        passed it on after the state instead: put it where a file would have it."""
        data = kept.read()
        if data.startswith(PARTIAL_MAGIC) and (at := data.rfind(COMPLETE_MAGIC)) > 0:
            kept.seek(0)
            kept.write(data[at:])
            kept.truncate(at)

    def drain(self) -> None:
        self.fast.set()

    def close(self) -> None:
        """Once libvirt's job on the domain has ended, stop reading and put a regular file of the
        volume's size back."""
        self.fast.set()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if self.dom.jobStats(0).get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
                    break
            except libvirt.libvirtError:  # the domain stopped
                break
            time.sleep(0.2)
        self.closing.set()
        while self._reader.is_alive():
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))  # a reader in open gets EOF, and ends
            except OSError:  # no reader at this instant (ENXIO): it is between two opens
                pass
            self._reader.join(1)
        self.path.unlink()
        with open(self.kept, "r+b") as f:
            self._header_first(f)
            f.truncate(max(self.size, self.kept.stat().st_size))
        self.kept.rename(self.path)
        self.conn.close()


def fresh_guest(lab: Lab) -> None:
    """A new libvirt connection and console for the guest. The test's connection, whose console
    stream was open across the save, was seen to stop answering after a cancelled save (its calls
    never got a reply while virsh's did): it is left as it is."""
    lab.conn = libvirt.open(lab.conn.getURI())
    lab.guest = Guest(lab.site.daemon, lab.vm_id, lab.conn)


def task_info(lab: Lab, task_id: str) -> dict[str, Any]:
    status, _, body = http_request("GET", f"{lab.site.daemon.http}/api/v1/tasks/{task_id}")
    assert status == 200, body
    found: dict[str, Any] = json.loads(body)
    return found


def wait_saving(lab: Lab, task_id: str, storage: SlowStorage) -> dict[str, Any]:
    """The task once it reports bytes saved (libvirt's save job runs), the state partly written."""
    deadline = time.monotonic() + 120
    while True:
        info = task_info(lab, task_id)
        assert info["state"] == "running", info
        if "saved" in str(info.get("message")) and storage.taken > 0:
            return info
        assert time.monotonic() < deadline, f"the save never reported progress: {info}"
        time.sleep(0.2)


def test_task_stop_mid_save_leaves_the_vm_running_and_no_hibernation_in_the_volumes(lab: Lab) -> None:
    mark(lab, "before-a-cancelled-save")
    ids = lab.memory_volumes()
    storage = SlowStorage(lab.path(ids[0], ids[1]), lab)
    seen = len(lab.statuses())
    try:
        task = lab.site.rpc.call("VM.hibernate", vmID=lab.vm_id, hibernationVolHandle=lab.handle(ids))
        saving = wait_saving(lab, task["taskID"], storage)
        assert 5 <= saving["progress"] < 99, saving
        assert storage.dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED  # libvirt holds the guest while it saves
        lab.site.rpc.call("Task.stop", taskID=task["taskID"])
        ended = lab.site.wait(task, 120)
    finally:
        storage.close()
    assert ended["state"] == "cancelled", ended
    assert storage.taken < 128 * MiB, storage.taken  # stopped before the whole memory was written
    assert lab.site.rpc.call("VM.getStats", vmID=lab.vm_id)[0]["status"] == "Up"
    fresh_guest(lab)
    assert lab.guest.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    lab.guest.wait_agent(60)
    assert marker(lab) == "before-a-cancelled-save\nvar=before-a-cancelled-save"
    statuses = [e["status"] for e in lab.statuses()[seen:]]
    assert "Down" not in statuses and statuses[-1:] == ["Up"], statuses
    assert read_conf(str(lab.path(ids[2], ids[3]))) is None  # the config volume claims no hibernation
    deleted = lab.site.wait(lab.site.rpc.call(  # and the volumes are free again
        "Volume.delete", volumeID=ids[1], storagepoolID=lab.site.pool, storagedomainID=lab.site.sd,
        imageID=ids[0], postZero=False, force=False))
    assert deleted["state"] == "succeeded", deleted


def test_deleting_the_memory_volume_mid_save_is_refused(lab: Lab) -> None:
    ids = lab.memory_volumes()
    storage = SlowStorage(lab.path(ids[0], ids[1]), lab)
    try:
        task = lab.site.rpc.call("VM.hibernate", vmID=lab.vm_id, hibernationVolHandle=lab.handle(ids))
        wait_saving(lab, task["taskID"], storage)
        error = refused(lambda: lab.site.rpc.call("Image.delete", imageID=ids[0], storagepoolID=lab.site.pool,
                                                  storagedomainID=lab.site.sd))
        lab.site.rpc.call("Task.stop", taskID=task["taskID"])
        assert lab.site.wait(task, 120)["state"] == "cancelled"
    finally:
        storage.close()
    assert error.code == 203 and "hibernation" in error.message, error  # VolumeIsBusy
    assert lab.path(ids[0], ids[1]).exists()
    assert lab.site.rpc.call("VM.getStats", vmID=lab.vm_id)[0]["status"] == "Up"
    fresh_guest(lab)


def test_a_sigkill_of_pierd_mid_save_then_a_restart_states_the_verdict(lab: Lab) -> None:
    """libvirt finishes the save without pierd: after the restart the task says it took effect,
    the VM is Down (never Paused), and its state in the memory volume brings it back."""
    mark(lab, "before-a-killed-save")
    ids = lab.memory_volumes()
    storage = SlowStorage(lab.path(ids[0], ids[1]), lab)
    daemon = lab.site.daemon
    try:
        task = lab.site.rpc.call("VM.hibernate", vmID=lab.vm_id, hibernationVolHandle=lab.handle(ids))
        wait_saving(lab, task["taskID"], storage)
        daemon.kill()
        storage.drain()  # libvirt goes on with the save without pierd
        again = Pierd(daemon.state_dir, daemon.uri, "--data-center", str(lab.site.dc))
        lab.site.daemon, lab.site.rpc, lab.guest.pierd = again, HttpRpcClient(again.http), again
        ended = lab.site.wait(task, 120)
    finally:
        storage.close()
    assert ended["state"] == "succeeded", ended  # the reconciler's verdict: the VM was saved
    assert lab.site.rpc.call("VM.getStats", vmID=lab.vm_id)[0]["status"] == "Down"
    fresh_guest(lab)
    assert lab.guest.dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    lab.site.rpc.call("VM.destroy", vmID=lab.vm_id)
    made = lab.site.rpc.call("VM.create", vmParams={"vmId": lab.vm_id, "hiberVolHandle": lab.handle(ids)})
    assert made["status"] == "Up", made  # the image is valid (no config was written: its XML is the image's)
    fresh_guest(lab)
    assert marker(lab) == "before-a-killed-save\nvar=before-a-killed-save"
