"""Pier with 1000 VMs: Host.getAllVmStats and GET /api/v1/vms, beside raw libvirt on the same node.

The VMs are defined (and running) in a libvirt test-driver file. The floor is what libvirt alone
costs in this process: `getAllDomainStats()` for the stats, and `listAllDomains()` with each
domain's UUID, name and state for the list. Target: Host.getAllVmStats under 50 ms at p50.

Run: .venv/bin/python bench/scale.py [--vms N] [--count N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import time
import uuid
from pathlib import Path

import libvirt
from common import PierdProcess, interleaved, report
from websockets.sync.client import connect

from pier.host.testdriver import NODE_XML


def node_with_vms(count: int) -> str:
    domains = "".join(
        f"<domain type='test'><name>bench-{i}</name><uuid>{uuid.UUID(int=i + 1)}</uuid>"
        "<memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type>hvm</type></os>"
        "<devices><interface type='network'><source network='default'/></interface></devices></domain>"
        for i in range(count)
    )
    return NODE_XML.replace("</node>", domains + "</node>")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()

    node_xml = node_with_vms(args.vms)
    node_file = Path(tempfile.mkdtemp(prefix="pier-scale-")) / "node.xml"
    node_file.write_text(node_xml)
    uri = f"test://{node_file}"
    libvirt.registerErrorHandler(lambda *a: None, None)
    raw = libvirt.open(uri)

    pierd = PierdProcess(uri)
    try:
        print(f"pierd with {args.vms} VMs ready after {pierd.ready_after:.2f} s; RSS {pierd.rss_mib():.1f} MiB")
        ws = connect(pierd.ws, compression=None, max_size=64 << 20,  # closed when the process ends
                     additional_headers={"Authorization": f"Bearer {pierd.token}"}).__enter__()
        request = json.dumps({"jsonrpc": "2.0", "method": "Host.getAllVmStats", "id": 1})
        deadline = time.monotonic() + 60
        while True:
            ws.send(request)
            stats = json.loads(ws.recv())["result"]
            if len(stats) >= args.vms or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        print(f"Host.getAllVmStats returns {len(stats)} VMs")

        def all_vm_stats() -> None:
            ws.send(request)
            ws.recv()

        def raw_stats() -> None:
            raw.getAllDomainStats()

        subject, floor = interleaved(all_vm_stats, raw_stats, args.count)
        report(f"Host.getAllVmStats ({args.vms} VMs, ws)", subject, floor, "p50 < 50 ms")

        port = int(pierd.http.rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port)

        def rest_vms() -> None:
            connection.request("GET", "/api/v1/vms", headers={"Authorization": f"Bearer {pierd.token}"})
            response = connection.getresponse()
            response.read()

        def raw_list() -> None:
            [(d.UUIDString(), d.name(), d.state()) for d in raw.listAllDomains()]

        subject, floor = interleaved(rest_vms, raw_list, args.count)
        report(f"GET /api/v1/vms ({args.vms} VMs)", subject, floor)
        print(f"pierd RSS after the runs {pierd.rss_mib():.1f} MiB")
    finally:
        pierd.stop()


if __name__ == "__main__":
    main()
