"""A disk plugged into a running VM and unplugged again, through pierd, beside raw libvirt's attach
and detach of the same disk on the same guest, with the ratio (target: <= 1.2 at p50).

  VM.hotplugDisk + VM.hotunplugDisk (JSON-RPC over HTTP, one kept-alive connection, a virtio-scsi
  disk: QEMU lets go of a SCSI disk without the guest's help, so no guest OS is needed)
    vs  attachDeviceFlags + detachDeviceFlags (LIVE|CONFIG) of the same disk XML through
        libvirt-python

Both sides change the running guest and the persistent definition; Pier also checks the request
against both XMLs first, reads the definition again for its cache and emits an event.

Needs qemu:///system (root). The VM, `pier-bench-devices-<pid>`, and its image are removed at
the end, whatever happens.

Run: .venv/bin/python bench/devices.py [--count N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import libvirt
from common import PierdProcess, percentile, report

URI = "qemu:///system"
LIVE_CONFIG = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG


class Rpc:
    """JSON-RPC over one kept-alive HTTP connection to pierd."""

    def __init__(self, pierd: PierdProcess) -> None:
        url = urlsplit(pierd.http)
        self._connection = http.client.HTTPConnection(url.hostname, url.port)
        self._headers = {"Content-Type": "application/json", "Authorization": f"Bearer {pierd.token}"}
        self._id = 0

    def call(self, method: str, **params: Any) -> Any:
        self._id += 1
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": self._id})
        self._connection.request("POST", "/jsonrpc", body=body, headers=self._headers)
        reply = json.loads(self._connection.getresponse().read())
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]


def timed(call: Any, count: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=40, help="plug-unplug cycles on each side")
    args = parser.parse_args()

    pierd = PierdProcess(URI)
    rpc = Rpc(pierd)
    vm_id = str(uuid.uuid4())
    images = [f"/var/lib/libvirt/images/pier-bench-devices-{os.getpid()}-{side}.img" for side in ("pier", "raw")]
    for path in images:
        subprocess.run(["truncate", "-s", "8M", path], check=True)
    conn = libvirt.open(URI)
    try:
        rpc.call("VM.create", vmParams={"vmId": vm_id, "vmName": f"pier-bench-devices-{os.getpid()}",
                                        "memSize": 64, "smp": "1"})
        # The first SCSI disk brings the VM its virtio-scsi controller, where both sides then plug.
        drive = {"path": images[0], "iface": "scsi", "alias": "ua-bench-pier", "name": "sdb"}

        def pier() -> None:
            rpc.call("VM.hotplugDisk", params={"vmId": vm_id, "drive": drive})
            rpc.call("VM.hotunplugDisk", params={"vmId": vm_id, "drive": {"alias": "ua-bench-pier"}})

        pier()
        dom = conn.lookupByUUIDString(vm_id)
        raw_xml = (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{images[1]}'/>"
                   "<target dev='sdc' bus='scsi'/><alias name='ua-bench-raw'/>"
                   "<address type='drive' controller='0' bus='0' target='0' unit='2'/></disk>")

        def raw() -> None:
            dom.attachDeviceFlags(raw_xml, LIVE_CONFIG)
            dom.detachDeviceFlags(raw_xml, LIVE_CONFIG)

        rounds = 4
        pier_samples: list[float] = []
        raw_samples: list[float] = []
        for _ in range(rounds):
            raw_samples += timed(raw, args.count // rounds)
            pier_samples += timed(pier, args.count // rounds)
        print(f"hotplug + hotunplug of a virtio-scsi disk on a running KVM guest, {len(pier_samples)} cycles each "
              f"(p50 Pier {percentile(pier_samples, 0.5) * 1e3:.1f} ms, libvirt {percentile(raw_samples, 0.5) * 1e3:.1f} ms)")
        report("VM.hotplugDisk + VM.hotunplugDisk", pier_samples, raw_samples, target="ratio <= 1.2 at p50")
        print("  slowest 4 cycles (ms): Pier", [round(x * 1e3) for x in sorted(pier_samples)[-4:]], " libvirt", [round(x * 1e3) for x in sorted(raw_samples)[-4:]])
    finally:
        try:
            rpc.call("VM.destroy", vmID=vm_id)
        except Exception as exc:  # report and go on cleaning up
            print(f"cannot destroy the bench VM {vm_id}: {exc}")
            try:
                vm = conn.lookupByUUIDString(vm_id)
                if vm.isActive():
                    vm.destroy()
                vm.undefine()
            except libvirt.libvirtError:
                pass
        conn.close()
        pierd.stop()
        for path in images:
            os.unlink(path)


if __name__ == "__main__":
    main()
