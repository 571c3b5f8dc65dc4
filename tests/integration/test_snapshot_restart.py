"""VM.snapshot interrupted by a SIGKILL of pierd, then a restart (qemu:///system, the tiny guest).

The guest's agent runs a freeze hook that holds the quiesce of a snapshot for as long as the test
wants (while /run/hold-freeze exists) and then lets it go on or fail: so pierd is killed at a known
point, once the new volumes are made and libvirt's snapshot job is under way, the guest being
frozen, and before libvirt has moved any drive. libvirtd finishes the job without the pierd that
asked for it; the test restarts pierd (a) after the job failed: no snapshot was taken, (b) after
it took: the drives stand on the new volumes that pierd never saw them on, (c) while it still runs.
Every time the VM runs, not paused and thawed; the task has ended saying what happened; each image
holds exactly the volumes of its drive's chain (a snapshot that did not take leaves none of its
volumes); and pierd's volumes and devices agree with libvirt's XML and qemu-img's chains.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from typing import Any

import libvirt
import pytest

from tests.integration.clients import HttpRpcClient
from tests.integration.conftest import Pierd
from tests.integration.test_snapshots import Lab, MiB
from tests.integration.test_volumes import qemu_chain

pytest_plugins = ["tests.integration.test_snapshots"]  # the `lab` fixture: this module's own guest
pytestmark = pytest.mark.kvm

HOOK = """#!/bin/sh
[ "$1" = freeze ] || exit 0
touch /run/freezing
while [ -e /run/hold-freeze ]; do sleep 0.1; done
rm -f /run/freezing
exit "$(cat /run/freeze-exit 2>/dev/null || echo 0)"
"""
WRAPPER = '#!/bin/sh\nexec /usr/sbin/qemu-ga.real -F/etc/freeze-hook "$@"\n'


@pytest.fixture(scope="module")
def held(lab: Lab) -> Lab:
    """The lab, its guest agent restarted with HOOK as its fsfreeze hook."""
    shell = lab.guest.shell
    for path, text in (("/etc/freeze-hook", HOOK), ("/run/qemu-ga-wrapper", WRAPPER)):
        shell.run(f"echo {base64.b64encode(text.encode()).decode()} | base64 -d > {path}; chmod +x {path}")
    shell.run("mv /usr/sbin/qemu-ga /usr/sbin/qemu-ga.real; mv /run/qemu-ga-wrapper /usr/sbin/qemu-ga; "
              "kill $(pidof qemu-ga)")
    deadline = time.monotonic() + 60
    while not shell.run("pidof qemu-ga.real || true").strip():  # the init's loop starts it again, through the wrapper
        assert time.monotonic() < deadline, "qemu-ga did not start again with the freeze hook"
        time.sleep(0.5)
    lab.guest.wait_agent(60)
    return lab


def restart(lab: Lab) -> None:
    again = Pierd(lab.site.daemon.state_dir, lab.site.daemon.uri, "--data-center", str(lab.site.dc))
    lab.site.daemon, lab.site.rpc, lab.guest.pierd = again, HttpRpcClient(again.http), again


def kill_mid_snapshot(lab: Lab, exit_status: int) -> tuple[str, str, str]:
    """New volumes over both drives' leaves, a VM.snapshot onto them held in the guest's freeze
    hook (to end with `exit_status` once released), and pierd killed there. The job's id, the new
    volumes of image A and image B."""
    new_a, new_b, job = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    lab.site.create(lab.img_a, new_a, size=64 * MiB, parent=lab.chain_a[-1])
    lab.site.create(lab.img_b, new_b, size=16 * MiB, parent=lab.chain_b[-1])
    lab.guest.shell.run(f"echo {exit_status} > /run/freeze-exit; touch /run/hold-freeze")
    drives = [{"domainID": lab.site.sd, "imageID": img, "baseVolumeID": chain[-1], "volumeID": vol}
              for img, chain, vol in ((lab.img_a, lab.chain_a, new_a), (lab.img_b, lab.chain_b, new_b))]
    rpc = lab.site.rpc

    def call() -> None:
        try:
            rpc.call("VM.snapshot", vmID=lab.vm_id, snapDrives=drives, jobUUID=job)
        except Exception:  # noqa: BLE001 (pierd is killed under this call)
            pass

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    deadline = time.monotonic() + 60
    while lab.guest.shell.run("[ -e /run/freezing ] && echo held || true").strip() != "held":
        assert time.monotonic() < deadline, "libvirt never ran the guest's freeze hook"
        time.sleep(0.2)
    assert lab.leaves()["vda"] == str(lab.path(lab.img_a, lab.chain_a[-1]))  # libvirt has not moved the drives
    lab.site.daemon.kill()
    caller.join(30)
    return job, new_a, new_b


def release(lab: Lab) -> None:
    lab.guest.shell.run("rm -f /run/hold-freeze")


def wait_snapshot_job_gone(lab: Lab) -> None:
    deadline = time.monotonic() + 60
    while lab.guest.dom.jobStats(0).get("type", libvirt.VIR_DOMAIN_JOB_NONE) != libvirt.VIR_DOMAIN_JOB_NONE:
        assert time.monotonic() < deadline, "libvirt's snapshot job did not end"
        time.sleep(0.2)


def job_state(lab: Lab, job: str) -> dict[str, Any]:
    found: dict[str, Any] = lab.site.rpc.call("Host.getJobs", job_ids=[job])[job]
    return found


def assert_consistent(lab: Lab) -> None:
    """The VM runs thawed; each image holds exactly its drive's chain (lab.chain_a/b), and pierd,
    libvirt and qemu-img say the same chain."""
    state, reason = lab.guest.dom.state()
    assert state == libvirt.VIR_DOMAIN_RUNNING, (state, reason)
    assert lab.site.rpc.call("VM.getStats", vmID=lab.vm_id)[0]["status"] == "Up"
    assert lab.guest.agent("guest-fsfreeze-status") == "thawed"
    devices = {d.get("name"): d for d in lab.site.rpc.call("VM.getDevices", vmID=lab.vm_id)}
    for name, img, chain in (("vda", lab.img_a, lab.chain_a), ("vdb", lab.img_b, lab.chain_b)):
        leaf = lab.path(img, chain[-1])
        assert lab.leaves()[name] == str(leaf)
        assert qemu_chain(leaf) == chain
        listed = lab.site.rpc.call("StorageDomain.getVolumes", storagedomainID=lab.site.sd,
                                   storagepoolID=lab.site.pool, imageID=img)
        assert sorted(listed) == sorted(chain), (name, listed, chain)  # no volume outside the chain
        on_disk = {p.name.split(".")[0] for p in lab.path(img, chain[0]).parent.iterdir()}
        assert on_disk == set(chain), (name, on_disk, chain)
        assert [lab.info(img, vol)["voltype"] for vol in chain] == ["INTERNAL"] * (len(chain) - 1) + ["LEAF"]
        assert devices[name]["volumeID"] == chain[-1]
        assert [entry["volumeID"] for entry in devices[name]["volumeChain"]] == chain


def test_killed_before_libvirts_snapshot_which_then_fails_leaves_no_volume_of_it(held: Lab) -> None:
    job, _, _ = kill_mid_snapshot(held, exit_status=1)
    release(held)  # the freeze fails: libvirt takes no snapshot
    restart(held)
    ended = job_state(held, job)
    assert ended["status"] == "failed", ended
    assert "libvirt did not take it" in ended["error"]["message"], ended  # settled at start, not followed
    assert_consistent(held)


def test_killed_before_libvirt_took_the_snapshot_pierd_never_saw_it_is_adopted(held: Lab) -> None:
    job, new_a, new_b = kill_mid_snapshot(held, exit_status=0)
    release(held)  # libvirt freezes, snapshots both drives and thaws, pierd being dead
    deadline = time.monotonic() + 60
    while held.leaves()["vda"] != str(held.path(held.img_a, new_a)):
        assert time.monotonic() < deadline, "libvirt did not take the snapshot once the freeze went on"
        time.sleep(0.2)
    wait_snapshot_job_gone(held)
    restart(held)
    ended = job_state(held, job)
    assert ended["status"] == "done", ended
    held.chain_a.append(new_a)
    held.chain_b.append(new_b)
    assert_consistent(held)


def test_a_restart_while_the_guest_is_still_frozen_follows_the_snapshot_to_its_end(held: Lab) -> None:
    job, _, _ = kill_mid_snapshot(held, exit_status=1)
    restart(held)  # libvirt's job still runs: pierd waits a while, then follows it
    ended = job_state(held, job)
    assert ended["status"] == "failed", ended
    assert "libvirt is still taking it" in ended["error"]["message"], ended
    release(held)
    deadline = time.monotonic() + 60
    while len(held.site.rpc.call("StorageDomain.getVolumes", storagedomainID=held.site.sd,
                                 storagepoolID=held.site.pool, imageID=held.img_a)) > len(held.chain_a):
        assert time.monotonic() < deadline, "the snapshot's volumes were not deleted once libvirt's job failed"
        time.sleep(0.2)
    assert_consistent(held)
