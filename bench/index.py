"""The REST index and reads over each daemon's local socket, beside LXD's `GET /1.0` when LXD runs.

  GET /api/v1                 the index (Host.getAgentInfo), served from memory
  GET /api/v1/vms/{id}        one VM
  GET /api/v1/vms             a list of 50 VMs
  GET /api/v1/host/ping       the least a call costs

each against LXD's `GET /1.0` on /var/lib/lxd/unix.socket (Debian's lxd package, started with
`lxd --group root`), in alternating rounds so that both see the same machine; without LXD, each
against pier's own ping. Target (issue 9): the index costs no more than one VM's GET.

Run: .venv/bin/python bench/index.py [--count N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket

from common import PierdProcess, interleaved, report
from scale import node_with_vms

LXD_SOCKET = "/var/lib/lxd/unix.socket"


def unix_caller(path: str, target: str):
    connection = http.client.HTTPConnection("localhost")
    connection.sock = socket.socket(socket.AF_UNIX)
    connection.sock.connect(path)

    def call() -> bytes:
        connection.request("GET", target)
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200, (target, response.status, body[:200])
        return body

    return call


def lxd_running() -> bool:
    if not os.path.exists(LXD_SOCKET):
        return False
    try:
        unix_caller(LXD_SOCKET, "/1.0")()
    except OSError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=3000)
    args = parser.parse_args()
    pierd = PierdProcess(None, node_with_vms(50))
    try:
        vm_id = json.loads(unix_caller(pierd.socket, "/api/v1/vms")())[0]["vmId"]
        if lxd_running():
            floor_name, floor = "LXD GET /1.0", unix_caller(LXD_SOCKET, "/1.0")
        else:
            print(f"LXD is not running ({LXD_SOCKET}): the floor is pier's own GET /api/v1/host/ping")
            floor_name, floor = "pier ping", unix_caller(pierd.socket, "/api/v1/host/ping")
        for target in ("/api/v1", f"/api/v1/vms/{vm_id}", "/api/v1/vms", "/api/v1/host/ping"):
            subject, base = interleaved(unix_caller(pierd.socket, target), floor, args.count)
            name = target.replace(vm_id, "{id}")
            report(f"{name} (floor: {floor_name})", subject, base)
    finally:
        pierd.stop()


if __name__ == "__main__":
    main()
