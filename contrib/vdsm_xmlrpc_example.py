#!/usr/bin/env python3
"""A VDSM-era XML-RPC script, unchanged, against Pier's /RPC2: host facts, then a VM's life cycle.

Written the way VDSM's users wrote theirs: the standard library's ServerProxy with allow_none, the
legacy verb names with positional params, `res['status']['code'] == 0` checks, and the payload
read from its key (`info`, `vmList`, `statsList`). The VM needs no disk and no guest OS.

    python3 contrib/vdsm_xmlrpc_example.py http://vdsm:$PIER_TOKEN@127.0.0.1:8042/RPC2

Pier wants credentials where VDSM took any client: ServerProxy sends the URL's user and password as
HTTP Basic credentials, and Pier reads the password as a bearer token (`pier token create --role
operator`); with TLS, an https:// URL and a trusted client certificate work as they did with VDSM.

Exits 0 when every step did what VDSM would have done. The test suite runs it against a real pierd.
"""

import sys
import time
import uuid
from xmlrpc.client import ServerProxy

DEFAULT_URL = "http://127.0.0.1:8042/RPC2"


def check(res, what):
    """The response when its status code is 0; otherwise stop with VDSM's code and message."""
    if res["status"]["code"] != 0:
        sys.exit(f"{what} failed: {res['status']['message']} (code {res['status']['code']})")
    return res


def wait_for_status(server, vm_id, wanted, timeout=60):
    """Poll getVmStats until the VM reports `wanted`, as monitoring scripts did."""
    deadline = time.time() + timeout
    while True:
        status = check(server.getVmStats(vm_id), "getVmStats")["statsList"][0]["status"]
        if status == wanted:
            return
        if time.time() > deadline:
            sys.exit(f"VM {vm_id} is {status}, not {wanted}, after {timeout} s")
        time.sleep(0.5)


def main():
    url = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_URL
    server = ServerProxy(url, allow_none=True)

    caps = check(server.getVdsCapabilities(), "getVdsCapabilities")["info"]
    print(f"host {caps['uuid']}: {caps['cpuCores']} cores, {caps['memSize']} MiB, kvm {caps['kvmEnabled']}")
    stats = check(server.getVdsStats(), "getVdsStats")["info"]
    print(f"cpu idle {stats['cpuIdle']}%, {stats['vmCount']} VMs")

    vm_id = str(uuid.uuid4())
    params = {"vmId": vm_id, "vmName": "vdsm-example-" + vm_id[:8], "memSize": "64", "smp": "1",
              "kvmEnable": "true", "vmType": "kvm"}
    vm = check(server.create(params), "create")["vmList"]
    print(f"created {vm['vmId']} ({vm['status']})")
    try:
        wait_for_status(server, vm_id, "Up")
        listed = [entry["vmId"] for entry in check(server.list(), "list")["vmList"]]
        assert vm_id in listed, listed
        full = check(server.list(True, [vm_id]), "list")["vmList"][0]
        print(f"listed: {full['vmName']}, {full['memSize']} MiB")
        vm_stats = check(server.getVmStats(vm_id), "getVmStats")["statsList"][0]
        print(f"stats: {vm_stats['status']}, elapsed {vm_stats.get('elapsedTime', '?')} s")
        check(server.pause(vm_id), "pause")
        wait_for_status(server, vm_id, "Paused")
        print("paused")
        check(server.cont(vm_id), "cont")
        wait_for_status(server, vm_id, "Up")
        print("resumed")
    finally:
        check(server.destroy(vm_id), "destroy")
    gone = server.getVmStats(vm_id)
    assert gone["status"]["code"] == 1, gone  # noVM, as VDSM answered
    print("destroyed")


if __name__ == "__main__":
    main()
