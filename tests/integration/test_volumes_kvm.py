"""The life of a disk on qemu:///system: a qcow2 volume, a snapshot layer on it, the tiny guest
booted with the chain as its virtio disk (reading what the base holds, writing into the layer),
then the image copied to a second domain and everything deleted, with nothing left behind.

The data center is under /var/lib/libvirt/images, where QEMU (as libvirt-qemu) may open files.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from tests.integration.clients import HttpRpcClient, JsonRpcError
from tests.integration.conftest import Pierd
from tests.integration.guest import DISK_DIR, new_guest, remove_vm, skip_reason, start_default_network
from tests.integration.test_volumes import BLANK, Site, make_domain, qemu_chain

pytestmark = pytest.mark.kvm
MiB = 1 << 20
WRITTEN = "70 69 65 72 2d 76 6f 6c 75 6d 65 73"  # "pier-volumes", as qemu-io dumps it


@pytest.fixture
def kvm_site(tmp_path: Path, system_libvirt: str) -> Iterator[Site]:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(f"no tiny guest: {reason}")
    conn = libvirt.open(system_libvirt)
    try:
        start_default_network(conn)
    finally:
        conn.close()
    dc = DISK_DIR / f"pier-volumes-{uuid.uuid4().hex[:8]}"
    pool, sd, sd2 = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    try:
        for domain in (sd, sd2):
            make_domain(dc, domain, pool)
        daemon = Pierd(tmp_path / "state", system_libvirt, "--data-center", str(dc))
        try:
            yield Site(daemon, HttpRpcClient(daemon.http), dc, pool, sd, sd2)
        finally:
            assert daemon.stop() == 0
    finally:
        shutil.rmtree(dc, ignore_errors=True)


def qemu_io(path: Path, command: str, fmt: str = "qcow2") -> str:
    return subprocess.run(["qemu-io", "-f", fmt, "-c", command, str(path)], capture_output=True, text=True,
                          check=True).stdout


def test_the_life_of_a_disk(kvm_site: Site, system_libvirt: str) -> None:
    site = kvm_site
    img, base, top = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    site.create(img, base, size=64 * MiB)
    images = site.domain_dir(site.sd) / "images" / img
    qemu_io(images / base, "write -P 0x5a 0 1M")  # what the guest must read through the layer
    site.create(img, top, size=64 * MiB, parent=base)
    assert qemu_chain(images / top) == [base, top]
    ids = dict(storagepoolID=site.pool, storagedomainID=site.sd, imageID=img)
    assert sorted(site.rpc.call("Image.getVolumes", **ids)) == sorted([base, top])

    conn = libvirt.open(system_libvirt)
    vm_id = str(uuid.uuid4())
    disk = {"deviceType": "disk", "device": "disk", "iface": "virtio", "poolID": site.pool,
            "domainID": site.sd, "imageID": img, "volumeID": top}  # no path: Pier gives the chain's
    console = {"deviceType": "console", "device": "console", "specParams": {"consoleType": "serial"}}
    guest = None
    try:
        guest = new_guest(site.daemon, conn, vm_id=vm_id, devices=[console, disk], nic=False)
        xml = guest.dom.XMLDesc(0)
        assert str(images / top) in xml and str(images / base) in xml, xml
        assert guest.shell.run("dd if=/dev/vda bs=4 count=1 2>/dev/null | od -An -tx1").split() == ["5a"] * 4
        guest.shell.run("printf pier-volumes | dd of=/dev/vda bs=512 seek=4096 conv=fsync 2>/dev/null; sync")
        with pytest.raises(JsonRpcError) as caught:  # a running VM's volume is not deleted
            site.rpc.call("Volume.delete", volumeID=top, postZero=False, force=False, **ids)
        assert caught.value.code == 203
        top_info = {"sd_id": site.sd, "img_id": img, "vol_id": top}
        subchain = {"sd_id": site.sd, "img_id": img, "base_id": base, "top_id": top, "base_generation": 0}
        for verb, params in (("SDM.amend_volume", {"vol_info": top_info, "qcow2_attr": {"compat": "1.1"}}),
                             ("SDM.sparsify_volume", {"vol_info": top_info}),
                             ("SDM.add_bitmap", {"vol_info": top_info, "bitmap": "b1"}),
                             ("SDM.merge", {"subchain_info": subchain})):
            with pytest.raises(JsonRpcError) as caught:  # jobs that need the volume idle
                site.rpc.call(verb, job_id=str(uuid.uuid4()), **params)
            assert caught.value.code == 203 and vm_id in caught.value.message, (verb, caught.value.message)
        assert qemu_chain(images / top) == [base, top]

        extra_img, extra = str(uuid.uuid4()), str(uuid.uuid4())
        site.create(extra_img, extra, size=16 * MiB, fmt="RAW")
        extra_ids = dict(storagepoolID=site.pool, storagedomainID=site.sd, imageID=extra_img)
        plugged = site.rpc.call("VM.hotplugDisk", vmID=vm_id, params={"drive": {
            "poolID": site.pool, "domainID": site.sd, "imageID": extra_img, "volumeID": extra}})
        extra_path = str(site.domain_dir(site.sd) / "images" / extra_img / extra)
        assert extra_path in [d.get("path") for d in plugged["devices"]]
        seen = "for i in $(seq 100); do [ -e /sys/block/vdb ] && break; sleep 0.2; done; cat /sys/block/vdb/size"
        assert guest.shell.run(seen).strip() == str(16 * MiB // 512)  # the guest found the new disk
        with pytest.raises(JsonRpcError) as caught:
            site.rpc.call("Image.delete", **extra_ids)
        assert caught.value.code == 203
        site.rpc.call("VM.hotunplugDisk", vmID=vm_id, params={"drive": {"path": extra_path}})
        site.done("Image.delete", **extra_ids)  # no longer the VM's: deleted
    finally:
        if guest is not None:
            guest.close()
        remove_vm(site.daemon, conn, vm_id)
        conn.close()
    assert WRITTEN in qemu_io(images / top, "read -v 2M 12")
    assert WRITTEN not in qemu_io(images / base, "read -v 2M 12")
    assert json.loads(subprocess.run(["qemu-img", "check", "--output", "json", str(images / top)],
                                     capture_output=True, text=True).stdout)["check-errors"] == 0

    site.done("Image.move", dstSdUUID=site.sd2, operation=1, **ids)
    copied = site.domain_dir(site.sd2) / "images" / img
    assert qemu_chain(copied / top) == [base, top]
    assert WRITTEN in qemu_io(copied / top, "read -v 2M 12")
    for sd in (site.sd, site.sd2):
        site.done("Image.delete", imageID=img, storagepoolID=site.pool, storagedomainID=sd)
    assert site.tree() == []
    assert site.rpc.call("StorageDomain.getVolumes", storagedomainID=site.sd, storagepoolID=site.pool,
                         imageID=BLANK) == []
