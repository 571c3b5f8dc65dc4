"""The REST facade, driven in-process as a WSGI app over the real registry and fake host services."""

from __future__ import annotations

import http.client
import io
import json
import threading
import time
import wsgiref.util
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import bottle
import pytest

from pier.facade import make_app
from pier.facade.routes import endpoints
from pier.rpc.auth import WSGI_IDENTITY
from pier.rpc.events import EventLog
from pier.rpc.schema import Schema
from pier.transports.httpserver import HttpServer
from tests.unit.conftest import ADMIN, VM_ID, Stack

OTHER_ID = "6f1e3e4c-1111-4222-8333-777777777777"
TASK_ID = "0a0a0a0a-1111-4222-8333-444455556666"
VM_PARAMS = {"vmId": VM_ID, "vmName": "a", "memSize": 32}
ROUTES = endpoints(Schema.load().verbs)
# Routes that answer JSON from their verb's result (the others: tests/unit/test_vm_console.py).
JSON_ROUTES = [e for e in ROUTES if e.route.stream not in ("websocket", "data") and e.route.content is None]
# The routes that answer a Location, and where it points for a result with this taskID and vmId.
LOCATIONS = {"POST /api/v1/vms": f"/api/v1/vms/{VM_ID}",
             "POST /api/v1/vms/{vmID}/shutdown": f"/api/v1/tasks/{TASK_ID}",
             "POST /api/v1/host/network/setup": f"/api/v1/tasks/{TASK_ID}",
             "POST /api/v1/pools/{storagepoolID}/spm/start": f"/api/v1/tasks/{TASK_ID}",
             "POST /api/v1/storage-domains": f"/api/v1/tasks/{TASK_ID}",
             "DELETE /api/v1/storage-domains/{storagedomainID}": f"/api/v1/tasks/{TASK_ID}"}
# The task verbs of pier/rpc/schema/volume.yml.
LOCATIONS["POST /api/v1/vms/{vmID}/migrate"] = f"/api/v1/tasks/{TASK_ID}"
LOCATIONS["POST /api/v1/storage-domains/{storagedomainID}/images/{imageID}/volumes"] = f"/api/v1/tasks/{TASK_ID}"
LOCATIONS["POST /api/v1/storage-domains/{storagedomainID}/images/{imageID}/volumes/{volumeID}/copy"] = f"/api/v1/tasks/{TASK_ID}"
LOCATIONS["DELETE /api/v1/storage-domains/{storagedomainID}/images/{imageID}/volumes/{volumeID}"] = f"/api/v1/tasks/{TASK_ID}"
LOCATIONS["POST /api/v1/storage-domains/{storagedomainID}/images/{imageID}/volumes/{volumeID}/extend"] = f"/api/v1/tasks/{TASK_ID}"
LOCATIONS["DELETE /api/v1/storage-domains/{storagedomainID}/images/{imageID}"] = f"/api/v1/tasks/{TASK_ID}"
LOCATIONS["POST /api/v1/storage-domains/{storagedomainID}/images/{imageID}/delete-volumes"] = f"/api/v1/tasks/{TASK_ID}"
LOCATIONS["POST /api/v1/storage-domains/{storagedomainID}/images/{imageID}/move"] = f"/api/v1/tasks/{TASK_ID}"
LOCATIONS["POST /api/v1/storage-domains/{storagedomainID}/images/{imageID}/clone-structure"] = f"/api/v1/tasks/{TASK_ID}"
LOCATIONS["POST /api/v1/storage-domains/{storagedomainID}/images/{imageID}/sync"] = f"/api/v1/tasks/{TASK_ID}"
LOCATIONS["POST /api/v1/pools/{storagepoolID}/merge/prepare"] = f"/api/v1/tasks/{TASK_ID}"
LOCATIONS["POST /api/v1/pools/{storagepoolID}/merge/finalize"] = f"/api/v1/tasks/{TASK_ID}"
LOCATIONS["POST /api/v1/pools/{storagepoolID}/domains/{storagedomainID}/images/{imageID}/volumes/{volumeID}/reduce"] = f"/api/v1/tasks/{TASK_ID}"
LOCATIONS["POST /api/v1/vms/{vmID}/snapshots"] = f"/api/v1/tasks/{TASK_ID}"  # pier/rpc/schema/vmsnapshot.yml
LOCATIONS["POST /api/v1/vms/{vmID}/merges"] = f"/api/v1/tasks/{TASK_ID}"
LOCATIONS["POST /api/v1/vms/{vmID}/hibernate"] = f"/api/v1/tasks/{TASK_ID}"  # pier/rpc/schema/vmhibernate.yml
LOCATIONS["POST /api/v1/storage-jobs/copy-data"] = f"/api/v1/tasks/{TASK_ID}"
LOCATIONS["POST /api/v1/storage-domains/{storagedomainID}/images/{imageID}/upload-to-url"] = f"/api/v1/tasks/{TASK_ID}"
LOCATIONS["POST /api/v1/storage-domains/{storagedomainID}/images/{imageID}/download-from-url"] = f"/api/v1/tasks/{TASK_ID}"
LOCATIONS["POST /api/v1/storage-jobs/merge"] = f"/api/v1/tasks/{TASK_ID}"
LOCATIONS["POST /api/v1/storage-jobs/update-volume"] = f"/api/v1/tasks/{TASK_ID}"
LOCATIONS["POST /api/v1/storage-jobs/amend-volume"] = f"/api/v1/tasks/{TASK_ID}"
LOCATIONS["POST /api/v1/storage-jobs/sparsify-volume"] = f"/api/v1/tasks/{TASK_ID}"
LOCATIONS["POST /api/v1/storage-jobs/add-bitmap"] = f"/api/v1/tasks/{TASK_ID}"
LOCATIONS["POST /api/v1/storage-jobs/remove-bitmap"] = f"/api/v1/tasks/{TASK_ID}"
LOCATIONS["POST /api/v1/storage-jobs/clear-bitmaps"] = f"/api/v1/tasks/{TASK_ID}"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    chunks: Iterator[bytes] | None = field(default=None, repr=False)
    iterable: Any = field(default=None, repr=False)

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)

    def close(self) -> None:
        """What a WSGI server does when it is done with a response."""
        if hasattr(self.iterable, "close"):
            self.iterable.close()


def request(app: bottle.Bottle, method: str, target: str, body: Any = None, *,
            content_type: str = "application/json", headers: dict[str, str] | None = None,
            stream: bool = False) -> Reply:
    """Call `app` as a WSGI app; with `stream` the body is left to read from `Reply.chunks`."""
    environ: dict[str, Any] = {}
    wsgiref.util.setup_testing_defaults(environ)
    path, _, query = target.partition("?")
    environ.update(REQUEST_METHOD=method, PATH_INFO=path, QUERY_STRING=query,
                   REMOTE_ADDR="127.0.0.1", REMOTE_PORT="40000")
    environ.setdefault(WSGI_IDENTITY, ADMIN)  # what the HTTP listener leaves for an authenticated caller
    if body is not None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        environ.update({"wsgi.input": io.BytesIO(raw), "CONTENT_LENGTH": str(len(raw)),
                        "CONTENT_TYPE": content_type})
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    started: dict[str, Any] = {}

    def start_response(status: str, headerlist: list[tuple[str, str]], exc_info: Any = None) -> None:
        started.update(status=int(status.split()[0]), headers=dict(headerlist))

    chunks = app(environ, start_response)
    if stream:
        return Reply(started["status"], started["headers"], chunks=iter(chunks), iterable=chunks)
    try:
        return Reply(started["status"], started["headers"], b"".join(chunks))
    finally:
        if hasattr(chunks, "close"):
            chunks.close()


def frames(reply: Reply, count: int, timeout: float = 5.0) -> list[dict[str, str]]:
    """The next `count` event frames of a stream (comments skipped), as field dicts."""
    found: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    buffer = ""
    while len(found) < count:
        assert time.monotonic() < deadline, f"only {len(found)} of {count} frames arrived"
        buffer += next(reply.chunks).decode()
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.split("\n") if line and not line.startswith(":")
                          and ": " in line)
            if "data" in fields:
                found.append(fields)
    return found


def assert_problem(reply: Reply, status: int, name: str | None = None) -> dict[str, Any]:
    assert reply.status == status, reply.body
    assert reply.header("Content-Type") == "application/problem+json"
    problem = reply.json()
    assert problem["status"] == status
    assert problem["type"] == "https://pier.invalid/errors/" + problem["name"]
    assert problem["title"] == problem["name"]
    assert isinstance(problem["code"], int) and problem["detail"]
    if name is not None:
        assert problem["name"] == name
    return problem


@pytest.fixture
def app(stack: Stack) -> bottle.Bottle:
    return make_app(stack.registry, stack.events, stream_keepalive=0.2)


# -- the route table --------------------------------------------------------------------------


# Every REST route, as bottle serves it, and the verb it calls: written out, so that a route that
# appears, moves or vanishes with a schema change fails here until it is meant.
ROUTE_TABLE = {
    ("GET", "/api/v1", "Host.getAgentInfo"),
    ("GET", "/api/v1/host/ping", "Host.ping2"),
    ("GET", "/api/v1/host", "Host.getCapabilities"),
    ("GET", "/api/v1/host/hardware", "Host.getHardwareInfo"),
    ("GET", "/api/v1/host/stats", "Host.getStats"),
    ("GET", "/api/v1/vms", "Host.getVMList"),
    ("GET", "/api/v1/host/vms", "Host.getVMFullList"),
    ("GET", "/api/v1/host/vm-stats", "Host.getAllVmStats"),
    ("GET", "/api/v1/host/jobs", "Host.getJobs"),
    ("GET", "/api/v1/tasks", "Host.getAllTasks"),
    ("GET", "/api/v1/host/network", "Host.getNetworkCapabilities"),
    ("GET", "/api/v1/host/network/stats", "Host.getNetworkStatistics"),
    ("GET", "/api/v1/networks", "Host.getNetworks"),
    ("POST", "/api/v1/host/network/setup", "Host.setupNetworks"),
    ("POST", "/api/v1/host/network/confirm", "Host.confirmConnectivity"),
    ("POST", "/api/v1/host/network/save", "Host.setSafeNetworkConfig"),
    ("POST", "/api/v1/vms", "VM.create"),
    ("DELETE", "/api/v1/vms/<vmID>", "VM.destroy"),
    ("POST", "/api/v1/vms/<vmID>/destroy", "VM.destroy"),
    ("POST", "/api/v1/vms/<vmID>/shutdown", "VM.shutdown"),
    ("POST", "/api/v1/vms/<vmID>/reboot", "VM.reboot"),
    ("POST", "/api/v1/vms/<vmID>/reset", "VM.reset"),
    ("POST", "/api/v1/vms/<vmID>/pause", "VM.pause"),
    ("POST", "/api/v1/vms/<vmID>/cont", "VM.cont"),
    ("GET", "/api/v1/vms/<vmID>", "VM.getInfo"),
    ("GET", "/api/v1/vms/<vmID>/stats", "VM.getStats"),
    ("GET", "/api/v1/tasks/<taskID>", "Task.getInfo"),
    ("GET", "/api/v1/tasks/<taskID>/status", "Task.getStatus"),
    ("POST", "/api/v1/tasks/<taskID>/stop", "Task.stop"),
    ("DELETE", "/api/v1/tasks/<taskID>", "Task.clear"),
    ("GET", "/api/v1/events", "Events.poll"),
    ("GET", "/api/v1/audit", "Host.getAuditLog"),
    ("POST", "/api/v1/tokens", "Token.create"),
    ("GET", "/api/v1/tokens", "Token.list"),
    ("DELETE", "/api/v1/tokens/<tokenID>", "Token.revoke"),
    ("POST", "/api/v1/trust", "Trust.add"),
    ("GET", "/api/v1/trust", "Trust.list"),
    ("DELETE", "/api/v1/trust/<fingerprint>", "Trust.remove"),
    ("PUT", "/api/v1/host/ksm", "Host.setKsmTune"),
    ("PUT", "/api/v1/host/log-level", "Host.setLogLevel"),
    ("POST", "/api/v1/host/echo", "Host.echo"),
    ("POST", "/api/v1/host/lldp", "Host.getLldp"),
    ("GET", "/api/v1/host/domain-xmls", "Host.dumpxmls"),
    ("GET", "/api/v1/host/devices", "Host.hostdevListByCaps"),
    ("PUT", "/api/v1/host/devices/<deviceName>/numvfs", "Host.hostdevChangeNumvfs"),
    ("POST", "/api/v1/host/devices/<deviceName>/reattach", "Host.hostdevReattach"),
    ("POST", "/api/v1/vms/<vmID>/hostdevs", "VM.hotplugHostdev"),
    ("POST", "/api/v1/vms/<vmID>/hostdevs/unplug", "VM.hotunplugHostdev"),
    ("POST", "/api/v1/host/secrets", "Host.registerSecrets"),
    ("DELETE", "/api/v1/host/secrets", "Host.unregisterSecrets"),
    ("POST", "/api/v1/vms/<vmID>/freeze", "VM.freeze"),
    ("POST", "/api/v1/vms/<vmID>/thaw", "VM.thaw"),
    ("POST", "/api/v1/vms/<vmID>/snapshots", "VM.snapshot"),
    ("POST", "/api/v1/vms/<vmID>/merges", "VM.merge"),
    ("POST", "/api/v1/vms/<vmID>/hibernate", "VM.hibernate"),
    ("POST", "/api/v1/vms/<vmID>/disk-size", "VM.diskSizeExtend"),
    ("POST", "/api/v1/vms/<vmID>/disk-refresh", "VM.refresh_disk"),
    ("POST", "/api/v1/vms/<vmID>/disk-alignment", "VM.getDiskAlignment"),
    ("POST", "/api/v1/vms/<vmID>/desktop/lock", "VM.desktopLock"),
    ("POST", "/api/v1/vms/<vmID>/desktop/login", "VM.desktopLogin"),
    ("POST", "/api/v1/vms/<vmID>/desktop/logoff", "VM.desktopLogoff"),
    ("POST", "/api/v1/vms/<vmID>/desktop/hc", "VM.desktopSendHcCommand"),
    ("POST", "/api/v1/vms/<vmID>/ticket", "VM.setTicket"),
    ("GET", "/api/v1/vms/<vmID>/screenshot", "VM.screenshot"),
    ("GET", "/api/v1/vms/<vmID>/console", "VM.serialConsole"),
    ("GET", "/api/v1/vms/<vmID>/vnc", "VM.vncDisplay"),
    ("GET", "/api/v1/vms/<vmID>/devices", "VM.getDevices"),
    ("POST", "/api/v1/vms/<vmID>/devices", "VM.addDevice"),
    ("DELETE", "/api/v1/vms/<vmID>/devices/<alias>", "VM.removeDevice"),
    ("PUT", "/api/v1/vms/<vmID>/devices/<alias>", "VM.updateDevice"),
    ("POST", "/api/v1/vms/<vmID>/disks", "VM.hotplugDisk"),
    ("POST", "/api/v1/vms/<vmID>/disks/unplug", "VM.hotunplugDisk"),
    ("PUT", "/api/v1/vms/<vmID>/cdrom", "VM.changeCD"),
    ("PUT", "/api/v1/vms/<vmID>/floppy", "VM.changeFloppy"),
    ("POST", "/api/v1/vms/<vmID>/nics", "VM.hotplugNic"),
    ("POST", "/api/v1/vms/<vmID>/nics/unplug", "VM.hotunplugNic"),
    ("POST", "/api/v1/vms/<vmID>/memory", "VM.hotplugMemory"),
    ("POST", "/api/v1/vms/<vmID>/memory/unplug", "VM.hotunplugMemory"),
    ("PUT", "/api/v1/vms/<vmID>/cpus", "VM.setNumberOfCpus"),
    ("PUT", "/api/v1/vms/<vmID>/balloon", "VM.setBalloonTarget"),
    ("PUT", "/api/v1/vms/<vmID>/iotune", "VM.setIoTune"),
    ("GET", "/api/v1/vms/<vmID>/iotune", "VM.getIoTune"),
    ("GET", "/api/v1/vms/<vmID>/iotune/policy", "VM.getIoTunePolicy"),
    ("GET", "/api/v1/host/iotune-policies", "Host.getAllVmIoTunePolicies"),
    ("PUT", "/api/v1/vms/<vmID>/cputune/period", "VM.setCpuTunePeriod"),
    ("PUT", "/api/v1/vms/<vmID>/cputune/quota", "VM.setCpuTuneQuota"),
    ("PUT", "/api/v1/vms/<vmID>/policy", "VM.updateVmPolicy"),
    ("POST", "/api/v1/vms/<vmID>/destroy-on-reboot", "VM.setDestroyOnReboot"),
    ("GET", "/api/v1/vms/<vmID>/external-data/<kind>", "VM.getExternalData"),
    # storage.yml
    ("GET", "/api/v1/host/storage-domains", "Host.getStorageDomains"),
    ("GET", "/api/v1/storage-domains", "Host.listStorageDomains"),
    ("GET", "/api/v1/pools", "Host.getConnectedStoragePools"),
    ("GET", "/api/v1/host/storage-repo-stats", "Host.getStorageRepoStats"),
    ("POST", "/api/v1/storage-domains/<sdUUID>/monitor", "Host.startMonitoringDomain"),
    ("DELETE", "/api/v1/storage-domains/<sdUUID>/monitor", "Host.stopMonitoringDomain"),
    ("POST", "/api/v1/storage-connections", "StoragePool.connectStorageServer"),
    ("POST", "/api/v1/storage-connections/disconnect", "StoragePool.disconnectStorageServer"),
    ("POST", "/api/v1/pools", "StoragePool.create"),
    ("POST", "/api/v1/pools/<storagepoolID>/connect", "StoragePool.connect"),
    ("POST", "/api/v1/pools/<storagepoolID>/disconnect", "StoragePool.disconnect"),
    ("DELETE", "/api/v1/pools/<storagepoolID>", "StoragePool.destroy"),
    ("GET", "/api/v1/pools/<storagepoolID>", "StoragePool.getInfo"),
    ("POST", "/api/v1/pools/<storagepoolID>/refresh", "StoragePool.refresh"),
    ("POST", "/api/v1/pools/<storagepoolID>/description", "StoragePool.setDescription"),
    ("POST", "/api/v1/pools/<storagepoolID>/spm/start", "StoragePool.spmStart"),
    ("POST", "/api/v1/pools/<storagepoolID>/spm/stop", "StoragePool.spmStop"),
    ("GET", "/api/v1/pools/<storagepoolID>/spm", "StoragePool.getSpmStatus"),
    ("POST", "/api/v1/storage-domains", "StorageDomain.create"),
    ("GET", "/api/v1/storage-domains/<storagedomainID>", "StorageDomain.getInfo"),
    ("GET", "/api/v1/storage-domains/<storagedomainID>/stats", "StorageDomain.getStats"),
    ("GET", "/api/v1/storage-domains/<storagedomainID>/images", "StorageDomain.getImages"),
    ("POST", "/api/v1/storage-domains/<storagedomainID>/validate", "StorageDomain.validate"),
    ("POST", "/api/v1/storage-domains/<storagedomainID>/description", "StorageDomain.setDescription"),
    ("DELETE", "/api/v1/storage-domains/<storagedomainID>", "StorageDomain.format"),
    ("POST", "/api/v1/storage-domains/<storagedomainID>/attach", "StorageDomain.attach"),
    ("POST", "/api/v1/storage-domains/<storagedomainID>/detach", "StorageDomain.detach"),
    ("POST", "/api/v1/storage-domains/<storagedomainID>/activate", "StorageDomain.activate"),
    ("POST", "/api/v1/storage-domains/<storagedomainID>/deactivate", "StorageDomain.deactivate"),
    ("GET", "/api/v1/storage-domains/<sd_id>/dump", "StorageDomain.dump"),
    ("GET", "/api/v1/storage-domains/<storagedomainID>/files", "StorageDomain.getFileStats"),
}


# The volumes and images of pier/rpc/schema/volume.yml.
VOLUME_ROUTES = {
    ("POST", "/api/v1/storage-domains/<storagedomainID>/images/<imageID>/volumes", "Volume.create"),
    ("POST", "/api/v1/storage-domains/<storagedomainID>/images/<imageID>/volumes/<volumeID>/copy", "Volume.copy"),
    ("DELETE", "/api/v1/storage-domains/<storagedomainID>/images/<imageID>/volumes/<volumeID>", "Volume.delete"),
    ("POST", "/api/v1/storage-domains/<storagedomainID>/images/<imageID>/volumes/<volumeID>/extend", "Volume.extendSize"),
    ("GET", "/api/v1/storage-domains/<storagedomainID>/images/<imageID>/volumes/<volumeID>", "Volume.getInfo"),
    ("GET", "/api/v1/storage-domains/<storagedomainID>/images/<imageID>/volumes/<volumeID>/qemu-info", "Volume.getQemuImageInfo"),
    ("GET", "/api/v1/storage-domains/<storagedomainID>/images/<imageID>/volumes/<volumeID>/size", "Volume.getSize"),
    ("GET", "/api/v1/storage-domains/<storagedomainID>/images/<imageID>/volumes/<volumeID>/measure", "Volume.measure"),
    ("POST", "/api/v1/storage-domains/<storagedomainID>/images/<imageID>/volumes/<volumeID>/refresh", "Volume.refresh"),
    ("PUT", "/api/v1/storage-domains/<storagedomainID>/images/<imageID>/volumes/<volumeID>/description", "Volume.setDescription"),
    ("PUT", "/api/v1/storage-domains/<storagedomainID>/images/<imageID>/volumes/<volumeID>/legality", "Volume.setLegality"),
    ("POST", "/api/v1/storage-domains/<storagedomainID>/images/<imageID>/volumes/<volumeID>/teardown", "Volume.teardown"),
    ("POST", "/api/v1/storage-domains/<storagedomainID>/images/<imageID>/volumes/<volumeID>/verify", "Volume.verify_untrusted"),
    ("GET", "/api/v1/storage-domains/<storagedomainID>/images/<imageID>/volumes", "Image.getVolumes"),
    ("GET", "/api/v1/storage-domains/<storagedomainID>/volumes", "StorageDomain.getVolumes"),
    ("POST", "/api/v1/storage-domains/<storagedomainID>/images/<imageID>/prepare", "Image.prepare"),
    ("POST", "/api/v1/storage-domains/<storagedomainID>/images/<imageID>/teardown", "Image.teardown"),
    ("DELETE", "/api/v1/storage-domains/<storagedomainID>/images/<imageID>", "Image.delete"),
    ("POST", "/api/v1/storage-domains/<storagedomainID>/images/<imageID>/delete-volumes", "Image.deleteVolumes"),
    ("POST", "/api/v1/storage-domains/<storagedomainID>/images/<imageID>/move", "Image.move"),
    ("POST", "/api/v1/storage-domains/<storagedomainID>/images/<imageID>/clone-structure", "Image.cloneStructure"),
    ("POST", "/api/v1/storage-domains/<storagedomainID>/images/<imageID>/sync", "Image.syncData"),
    ("POST", "/api/v1/storage-domains/<storagedomainID>/images/<imageID>/reconcile", "Image.reconcileVolumeChain"),
    ("POST", "/api/v1/storage-domains/<storagedomainID>/images/<imageID>/upload-to-url", "Image.upload"),
    ("POST", "/api/v1/storage-domains/<storagedomainID>/images/<imageID>/download-from-url", "Image.download"),
    ("GET", "/api/v1/pools/<storagepoolID>/images/<imageID>/domains", "StoragePool.getDomainsContainingImage"),
    ("POST", "/api/v1/pools/<storagepoolID>/merge/prepare", "StoragePool.prepareMerge"),
    ("POST", "/api/v1/pools/<storagepoolID>/merge/finalize", "StoragePool.finalizeMerge"),
    ("POST", "/api/v1/pools/<storagepoolID>/domains/<storagedomainID>/images/<imageID>/volumes/<volumeID>/reduce", "StoragePool.reduceVolume"),
    ("POST", "/api/v1/pools/<storagepoolID>/vms", "StoragePool.updateVMs"),
    ("DELETE", "/api/v1/pools/<storagepoolID>/vms/<vmUUID>", "StoragePool.removeVM"),
    ("GET", "/api/v1/pools/<storagepoolID>/domains/<storagedomainID>/vms", "StoragePool.getBackedUpVmsList"),
    ("POST", "/api/v1/pools/<storagepoolID>/domains/<storagedomainID>/vms/info", "StoragePool.getBackedUpVmsInfo"),
}
ROUTE_TABLE |= VOLUME_ROUTES
SDM_ROUTES = {
    ("POST", "/api/v1/storage-jobs/copy-data", "SDM.copy_data"),
    ("POST", "/api/v1/storage-jobs/merge", "SDM.merge"),
    ("POST", "/api/v1/storage-jobs/update-volume", "SDM.update_volume"),
    ("POST", "/api/v1/storage-jobs/amend-volume", "SDM.amend_volume"),
    ("POST", "/api/v1/storage-jobs/sparsify-volume", "SDM.sparsify_volume"),
    ("POST", "/api/v1/storage-jobs/add-bitmap", "SDM.add_bitmap"),
    ("POST", "/api/v1/storage-jobs/remove-bitmap", "SDM.remove_bitmap"),
    ("POST", "/api/v1/storage-jobs/clear-bitmaps", "SDM.clear_bitmaps"),
    ("PUT", "/api/v1/nbd-servers/<server_id>", "NBD.start_server"),
    ("DELETE", "/api/v1/nbd-servers/<server_id>", "NBD.stop_server"),
}
ROUTE_TABLE |= SDM_ROUTES

# Block devices, LVM, block domains and leases (pier/rpc/schema/blockdev.yml, lease.yml).
BLOCK_ROUTES = {
    ("POST", "/api/v1/storage-jobs/move-domain-device", "SDM.move_domain_device"),
    ("POST", "/api/v1/storage-jobs/reduce-domain", "SDM.reduce_domain"),
    ("GET", "/api/v1/host/block-devices", "Host.getDeviceList"),
    ("POST", "/api/v1/host/block-devices/visibility", "Host.getDevicesVisibility"),
    ("GET", "/api/v1/volume-groups", "Host.getLVMVolumeGroups"),
    ("GET", "/api/v1/volume-groups/<lvmvolumegroupID>", "LVMVolumeGroup.getInfo"),
    ("POST", "/api/v1/volume-groups", "LVMVolumeGroup.create"),
    ("DELETE", "/api/v1/volume-groups/<lvmvolumegroupID>", "LVMVolumeGroup.remove"),
    ("POST", "/api/v1/storage-domains/<storagedomainID>/extend", "StorageDomain.extend"),
    ("POST", "/api/v1/storage-domains/<storagedomainID>/resize-pv", "StorageDomain.resizePV"),
    ("POST", "/api/v1/iscsi/discover", "ISCSIConnection.discoverSendTargets"),
    ("POST", "/api/v1/leases", "Lease.create"),
    ("POST", "/api/v1/leases/delete", "Lease.delete"),
    ("POST", "/api/v1/leases/info", "Lease.info"),
    ("POST", "/api/v1/leases/status", "Lease.status"),
    ("POST", "/api/v1/leases/fence", "Lease.fence"),
    ("POST", "/api/v1/storage-domains/<sd_id>/leases/rebuild", "Lease.rebuild_leases"),
}
ROUTE_TABLE |= BLOCK_ROUTES
TRANSFER_ROUTES = {
    ("POST", "/api/v1/image-tickets", "Host.add_image_ticket"),
    ("GET", "/api/v1/image-tickets/<uuid>", "Host.get_image_ticket"),
    ("PATCH", "/api/v1/image-tickets/<uuid>", "Host.extend_image_ticket"),
    ("DELETE", "/api/v1/image-tickets/<uuid>", "Host.remove_image_ticket"),
    ("POST", "/api/v1/vms/<vmID>/backups", "VM.start_backup"),
    ("DELETE", "/api/v1/vms/<vmID>/backups/<backup_id>", "VM.stop_backup"),
    ("GET", "/api/v1/vms/<vmID>/backups/<backup_id>", "VM.backup_info"),
    ("GET", "/api/v1/vms/<vmID>/checkpoints", "VM.list_checkpoints"),
    ("GET", "/api/v1/vms/<vmID>/checkpoints/<checkpoint_id>", "VM.dump_checkpoint"),
    ("POST", "/api/v1/vms/<vmID>/checkpoints", "VM.redefine_checkpoints"),
    ("POST", "/api/v1/vms/<vmID>/checkpoint-deletions", "VM.delete_checkpoints"),
    ("GET", "/api/v1/storage-domains/<storagedomainID>/images/<imageID>/volumes/<volumeID>/data", "Volume.readData"),
    ("PUT", "/api/v1/storage-domains/<storagedomainID>/images/<imageID>/volumes/<volumeID>/data", "Volume.writeData"),
}
ROUTE_TABLE |= TRANSFER_ROUTES
MIGRATION_ROUTES = {
    ("POST", "/api/v1/vms/<vmID>/migrate", "VM.migrate"),
    ("POST", "/api/v1/vms/<vmID>/migrate/cancel", "VM.migrateCancel"),
    ("GET", "/api/v1/vms/<vmID>/migration", "VM.getMigrationStatus"),
    ("POST", "/api/v1/vms/<vmID>/migration/params", "VM.migrateChangeParams"),
}
ROUTE_TABLE |= MIGRATION_ROUTES


def test_route_table_is_the_schema(app: bottle.Bottle) -> None:
    served = {(route.method, route.rule, route.name.split()[0]) for route in app.routes
              if route.rule != "/api/v1/openapi.json"}
    assert served == ROUTE_TABLE
    assert [route.method for route in app.routes if route.rule == "/api/v1/openapi.json"] == ["GET"]


def test_every_verb_is_routed_or_says_why_not(schema: Schema) -> None:
    routed = {name for _, _, name in ROUTE_TABLE}
    unexplained = [name for name, verb in schema.verbs.items() if not verb.rest and not verb.rpc_only]
    assert unexplained == []
    assert {name for name, verb in schema.verbs.items() if verb.rest} == routed
    assert not [name for name, verb in schema.verbs.items() if verb.rest and verb.rpc_only]


@pytest.mark.parametrize("endpoint", JSON_ROUTES, ids=[f"{e.route.method} {e.path}" for e in JSON_ROUTES])
def test_every_route_reaches_its_verb(stack: Stack, endpoint: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, dict[str, Any], Any]] = []

    def spy(name: str, params: Any, context: Any) -> Any:
        seen.append((name, params, context))
        return {"taskID": TASK_ID, "vmId": VM_ID}

    monkeypatch.setattr(stack.registry, "call", spy)
    app = make_app(stack.registry, stack.events)
    values = {name: VM_ID for name in endpoint.route.path_params}
    path = endpoint.path
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    body = {} if endpoint.route.method in ("POST", "PUT") else None
    reply = request(app, endpoint.route.method, path, body)
    assert reply.status == endpoint.status
    assert reply.header("Location") == LOCATIONS.get(f"{endpoint.route.method} {endpoint.path}")
    assert [(name, params) for name, params, _ in seen] == [
        (endpoint.verb.name, {**values, **({endpoint.route.body: {}} if endpoint.route.body else {})})]
    assert seen[0][2].transport == "rest" and seen[0][2].peer == "127.0.0.1:40000"


# -- resources and verbs ----------------------------------------------------------------------


def test_agent_info_at_the_root(app: bottle.Bottle) -> None:
    for path in ("/api/v1", "/api/v1/"):
        reply = request(app, "GET", path)
        assert (reply.status, reply.json()) == (200, {"name": "pier"})
        assert reply.header("Content-Type") == "application/json"


def test_vm_lifecycle(app: bottle.Bottle) -> None:
    created = request(app, "POST", "/api/v1/vms", VM_PARAMS)
    assert created.status == 201
    assert created.json()["vmId"] == VM_ID
    assert created.header("Location") == f"/api/v1/vms/{VM_ID}"
    assert request(app, "GET", created.header("Location")).json()["status"] == "Up"
    assert request(app, "GET", "/api/v1/vms").json() == [{"vmId": VM_ID, "status": "Up"}]
    assert request(app, "GET", "/api/v1/vms?onlyUUID=true").json() == [VM_ID]
    assert request(app, "GET", f"/api/v1/vms?vmList={OTHER_ID},{VM_ID}&onlyUUID=1").json() == [VM_ID]
    assert request(app, "GET", f"/api/v1/vms?vmList={OTHER_ID}&vmList={VM_ID}&onlyUUID=1").json() == [VM_ID]
    assert request(app, "GET", f"/api/v1/vms?vmList={OTHER_ID}").json() == []
    assert request(app, "POST", f"/api/v1/vms/{VM_ID}/pause").json()["status"] == "Paused"
    assert request(app, "POST", f"/api/v1/vms/{VM_ID}/cont", {}).json()["status"] == "Up"
    assert assert_problem(request(app, "POST", "/api/v1/vms", VM_PARAMS), 409, "exist")["code"] == 4
    deleted = request(app, "DELETE", f"/api/v1/vms/{VM_ID}?gracefulAttempts=2")
    assert (deleted.status, deleted.json()) == (200, True)
    assert_problem(request(app, "GET", f"/api/v1/vms/{VM_ID}"), 404, "noVM")


def test_create_takes_other_params_from_the_query(app: bottle.Bottle) -> None:
    params = {"vmName": "b", "memSize": 32}
    assert request(app, "POST", f"/api/v1/vms?vmID={VM_ID}", params).status == 201
    assert request(app, "POST", f"/api/v1/vms/{VM_ID}/destroy").json() is True


def test_unknown_vm_is_a_vdsm_problem(app: bottle.Bottle) -> None:
    problem = assert_problem(request(app, "POST", f"/api/v1/vms/{OTHER_ID}/reset"), 404, "noVM")
    assert problem["code"] == 1
    assert problem["data"] == {"vmId": OTHER_ID}


@pytest.mark.parametrize("method, target, body, content_type, field", [
    ("GET", "/api/v1/vms?fullStatus=maybe", None, "", "params.fullStatus"),
    ("GET", "/api/v1/events?after=x", None, "", "params.after"),
    ("GET", "/api/v1/events?wait=1&wait=2", None, "", "params.wait"),
    ("GET", "/api/v1/vms/not-a-uuid", None, "", "params.vmID"),
    ("GET", "/api/v1/vms?color=red", None, "", "params"),
    ("POST", "/api/v1/vms", None, "", "params"),
    ("POST", "/api/v1/vms", {"vmName": "a", "memSize": "lots"}, "application/json", "params.vmParams.memSize"),
    ("POST", "/api/v1/vms", {"vmName": "a"}, "application/json", "params.vmParams"),
    ("POST", f"/api/v1/vms/{VM_ID}/shutdown", {"timeout": "soon"}, "application/json", "params.timeout"),
    ("POST", f"/api/v1/vms/{VM_ID}/shutdown", b'{"force": tru', "application/json", "params"),
    ("POST", f"/api/v1/vms/{VM_ID}/shutdown", b'{"force": true}', "text/plain", "params"),
    ("POST", "/api/v1/vms", b'{"vmName": "a"}', "application/x-www-form-urlencoded", "params.vmParams"),
    ("POST", f"/api/v1/vms/{VM_ID}/shutdown", [1, 2], "application/json", "params"),
    ("POST", f"/api/v1/vms/{VM_ID}/shutdown", {"vmID": OTHER_ID}, "application/json", "params.vmID"),
    ("POST", f"/api/v1/vms/{VM_ID}/shutdown?force=true", {"force": False}, "application/json", "params.force"),
])
def test_invalid_params_name_the_field(app: bottle.Bottle, method: str, target: str, body: Any,
                                       content_type: str, field: str) -> None:
    problem = assert_problem(request(app, method, target, body, content_type=content_type), 400)
    assert problem["data"]["field"] == field
    assert problem["name"] in ("InvalidParams", "ParseError")


def test_unknown_route_and_wrong_method(app: bottle.Bottle) -> None:
    assert_problem(request(app, "GET", "/api/v1/nowhere"), 404)
    assert_problem(request(app, "GET", "/elsewhere"), 404)
    reply = request(app, "PUT", "/api/v1/vms", {})
    assert_problem(reply, 405)
    assert set(reply.header("Allow").split(",")) == {"GET", "POST"}
    assert reply.json()["data"]["allow"] == reply.header("Allow").split(",")


def test_body_over_the_limit_is_413(app: bottle.Bottle) -> None:
    big = {"vmName": "a", "xml": "x" * (1 << 20)}
    problem = assert_problem(request(app, "POST", f"/api/v1/vms?vmID={VM_ID}", big), 413, "RequestTooLarge")
    assert problem["data"] == {"limit": 1 << 20}


def test_chunked_body_over_the_limit_is_413(app: bottle.Bottle) -> None:
    raw = json.dumps({"xml": "x" * (1 << 20)}).encode()
    environ: dict[str, Any] = {}
    wsgiref.util.setup_testing_defaults(environ)
    environ.update(REQUEST_METHOD="POST", PATH_INFO="/api/v1/vms", CONTENT_TYPE="application/json",
                   HTTP_TRANSFER_ENCODING="chunked", **{"wsgi.input": io.BytesIO(raw)})
    statuses: list[str] = []
    body = b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    assert statuses == ["413 Request Entity Too Large"]
    assert json.loads(body)["name"] == "RequestTooLarge"


def test_unexpected_errors_leak_nothing(stack: Stack, monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    def broken(name: str, params: Any, context: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(stack.registry, "call", broken)
    app = make_app(stack.registry, stack.events)
    app.route("/api/v1/boom", "GET", lambda: 1 / 0)
    for target in ("/api/v1/host/ping", "/api/v1/boom"):
        reply = request(app, "GET", target)
        problem = assert_problem(reply, 500, "unexpected")
        assert "secret" not in reply.body.decode() and "Traceback" not in reply.body.decode()
        assert problem["data"]["reference"] in caplog.text


def test_result_that_is_not_json_is_a_500_problem(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack.registry, "call", lambda name, params, context: {"when": object()})
    assert_problem(request(make_app(stack.registry, stack.events), "GET", "/api/v1/host"), 500, "unexpected")


# -- tasks --------------------------------------------------------------------------------------


def test_task_verb_answers_202_and_where_to_wait(app: bottle.Bottle, stack: Stack) -> None:
    stack.vms.guest_obeys_shutdown = True
    request(app, "POST", "/api/v1/vms", VM_PARAMS)
    accepted = request(app, "POST", f"/api/v1/vms/{VM_ID}/shutdown", {"timeout": 5})
    assert accepted.status == 202
    task = accepted.json()
    assert accepted.header("Location") == f"/api/v1/tasks/{task['taskID']}"
    ended = request(app, "GET", accepted.header("Location") + "?wait=5")
    assert ended.status == 200
    assert ended.json()["state"] == "succeeded"
    assert ended.json()["result"] == {"vmId": VM_ID, "status": "Down"}
    assert request(app, "GET", accepted.header("Location") + "/status").json()["taskResult"] == "success"
    assert task["taskID"] in request(app, "GET", "/api/v1/tasks").json()
    assert request(app, "DELETE", accepted.header("Location")).json() is True
    assert_problem(request(app, "GET", accepted.header("Location")), 404, "UnknownTask")


# -- events: long-poll ------------------------------------------------------------------------


def test_events_long_poll(app: bottle.Bottle, stack: Stack) -> None:
    stack.events.publish("|virt|VM_status|a", {"a": {"status": "Up"}})
    stack.events.publish("|jobs|status|b", {})
    batch = request(app, "GET", "/api/v1/events?after=0&types=virt.VM_status").json()
    assert [e["name"] for e in batch["events"]] == ["|virt|VM_status|a"]
    assert batch["last"] == 2 and batch["oldest"] == 1
    threading.Timer(0.2, stack.events.publish, ("|virt|VM_status|c", {})).start()
    started = time.monotonic()
    waited = request(app, "GET", "/api/v1/events?after=2&types=|virt|VM_status|,|jobs|&wait=5").json()
    assert time.monotonic() - started < 3
    assert [e["seq"] for e in waited["events"]] == [3]


def test_events_long_poll_expired_cursor_is_410(app: bottle.Bottle, stack: Stack) -> None:
    stack.events.max_events = 3
    for n in range(10):
        stack.events.publish(f"|virt|VM_status|{n}", {})
    stack.events.prune()
    problem = assert_problem(request(app, "GET", "/api/v1/events?after=1"), 410, "eventsExpired")
    assert problem["data"]["oldest"] == stack.events.oldest_seq == 8


# -- events: server-sent events ---------------------------------------------------------------

SSE = {"Accept": "text/event-stream"}


def test_event_stream_frames_and_resume(app: bottle.Bottle, stack: Stack) -> None:
    for n in range(3):
        stack.events.publish(f"|virt|VM_status|{n}", {"n": n})
    stack.events.publish("|jobs|status|x", {})
    reply = request(app, "GET", "/api/v1/events?after=0&types=virt.VM_status", headers=SSE, stream=True)
    try:
        assert reply.status == 200 and reply.header("Content-Type") == "text/event-stream"
        got = frames(reply, 3)
        assert [f["id"] for f in got] == ["1", "2", "3"]
        assert got[0]["event"] == "|virt|VM_status|0"
        assert json.loads(got[2]["data"])["params"]["n"] == 2
        stack.events.publish("|virt|VM_status|live", {})
        assert frames(reply, 1)[0]["id"] == "5"
    finally:
        reply.close()
    resumed = request(app, "GET", "/api/v1/events?after=0", headers={**SSE, "Last-Event-ID": "3"}, stream=True)
    try:
        assert [f["id"] for f in frames(resumed, 2)] == ["4", "5"]
    finally:
        resumed.close()
    assert app.config["pier.streams"].open_streams == 0


def test_event_stream_sends_keepalives(app: bottle.Bottle) -> None:
    reply = request(app, "GET", "/api/v1/events", headers=SSE, stream=True)
    try:
        assert next(reply.chunks).startswith(b"retry:")
        assert next(reply.chunks) == b": keepalive\n\n"
    finally:
        reply.close()


def test_event_stream_expired_cursor_is_410(stack: Stack, tmp_path: Path) -> None:
    events = EventLog(str(tmp_path / "small.db"), max_events=3)
    try:
        for n in range(10):
            events.publish(f"|virt|VM_status|{n}", {})
        events.prune()
        app = make_app(stack.registry, events)
        for headers in ({}, {"Last-Event-ID": "2"}):
            reply = request(app, "GET", "/api/v1/events?after=0", headers={**SSE, **headers})
            assert assert_problem(reply, 410, "eventsExpired")["data"]["oldest"] == 8
        assert app.config["pier.streams"].open_streams == 0
    finally:
        events.close()


def test_event_stream_that_falls_behind_says_so_and_ends(stack: Stack, tmp_path: Path) -> None:
    events = EventLog(str(tmp_path / "small.db"), max_events=3)
    try:
        app = make_app(stack.registry, events, stream_keepalive=0.2)
        reply = request(app, "GET", "/api/v1/events", headers=SSE, stream=True)
        next(reply.chunks)
        for n in range(10):
            events.publish(f"|virt|VM_status|{n}", {})
        events.prune()
        lost = frames(reply, 1)[0]
        assert "id" not in lost
        assert lost["event"] == "|pier|events_lost|"
        assert json.loads(lost["data"])["params"]["oldest"] == 8
        assert list(reply.chunks) == []
        reply.close()
        assert app.config["pier.streams"].open_streams == 0
    finally:
        events.close()


def test_event_stream_bad_params(app: bottle.Bottle) -> None:
    assert_problem(request(app, "GET", "/api/v1/events?after=-1", headers=SSE), 400, "InvalidParams")
    assert_problem(request(app, "GET", "/api/v1/events", headers={**SSE, "Last-Event-ID": "x"}), 400)


def test_event_streams_are_capped(stack: Stack) -> None:
    app = make_app(stack.registry, stack.events, max_streams=2, stream_keepalive=0.2)
    open_ = [request(app, "GET", "/api/v1/events", headers=SSE, stream=True) for _ in range(2)]
    try:
        refused = request(app, "GET", "/api/v1/events", headers=SSE)
        assert_problem(refused, 503, "unavail")
        assert refused.header("Retry-After")
        assert request(app, "GET", "/api/v1/events").status == 200  # long-poll still served
    finally:
        for reply in open_:
            reply.close()
    again = request(app, "GET", "/api/v1/events", headers=SSE, stream=True)
    assert again.status == 200
    again.close()


def test_event_stream_ends_when_stopping(stack: Stack) -> None:
    stopping = threading.Event()
    app = make_app(stack.registry, stack.events, stopping=stopping, stream_keepalive=60)
    reply = request(app, "GET", "/api/v1/events", headers=SSE, stream=True)
    next(reply.chunks)
    threading.Timer(0.2, stopping.set).start()
    started = time.monotonic()
    assert list(reply.chunks) == []
    assert time.monotonic() - started < 2
    reply.close()
    assert_problem(request(app, "GET", "/api/v1/events", headers=SSE), 503)


def test_openapi_document_is_served(stack: Stack) -> None:
    app = make_app(stack.registry, stack.events, info=lambda: {"hostId": "h"})
    document = request(app, "GET", "/api/v1/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    assert document["info"]["x-pier-agent"] == {"hostId": "h"}
    assert "/api/v1/vms/{vmID}" in document["paths"]


# -- a real server ----------------------------------------------------------------------------


@pytest.fixture
def served(stack: Stack) -> Iterator[tuple[HttpServer, threading.Event]]:
    stopping = threading.Event()
    app = make_app(stack.registry, stack.events, stopping=stopping, stream_keepalive=60)

    def authenticated(environ: dict[str, Any], start_response: Any) -> Any:
        environ[WSGI_IDENTITY] = ADMIN  # what pier's HTTP listener does for a caller it recognises
        return app(environ, start_response)

    server = HttpServer(("127.0.0.1", 0), authenticated, workers=4)
    server.start()
    yield server, stopping
    stopping.set()
    server.stop()


def test_real_server_stops_with_a_stream_open(served: tuple[HttpServer, threading.Event], stack: Stack) -> None:
    server, stopping = served
    host, port = server.bound
    plain = http.client.HTTPConnection(host, port, timeout=5)
    plain.request("POST", "/api/v1/vms", body=json.dumps(VM_PARAMS), headers={"Content-Type": "application/json"})
    created = plain.getresponse()
    assert created.status == 201 and json.loads(created.read())["vmId"] == VM_ID
    plain.close()
    streaming = http.client.HTTPConnection(host, port, timeout=5)
    streaming.request("GET", "/api/v1/events?after=0", headers=SSE)
    response = streaming.getresponse()
    assert response.status == 200 and response.getheader("Content-Type") == "text/event-stream"
    assert response.readline().startswith(b"retry:")
    assert b"id: 1" in b"".join(response.readline() for _ in range(4))
    stopping.set()
    stopper = threading.Thread(target=server.stop, name="test-stop")
    started = time.monotonic()
    stopper.start()
    stopper.join(5)
    assert not stopper.is_alive(), "the server did not stop with an event stream open"
    assert time.monotonic() - started < 3
    streaming.close()


def test_real_server_answers_413_and_keeps_the_connection(served: tuple[HttpServer, threading.Event]) -> None:
    server, _ = served
    connection = http.client.HTTPConnection(*server.bound, timeout=5)
    connection.request("POST", "/api/v1/vms", body=b"x" * (2 << 20), headers={"Content-Type": "application/json"})
    refused = connection.getresponse()
    assert refused.status == 413
    assert refused.getheader("Content-Type") == "application/problem+json"
    refused.read()
    connection.request("GET", "/api/v1/host/ping")
    assert connection.getresponse().read() == b"true"
    connection.close()


@pytest.mark.parametrize("opening, closing", [("[", "]"), ('{"a":', "}")], ids=["arrays", "objects"])
def test_deeply_nested_body_is_a_400_problem(app: bottle.Bottle, opening: str, closing: str) -> None:
    deep = (opening * 100_000 + "1" + closing * 100_000).encode()
    reply = request(app, "POST", "/api/v1/vms", deep)
    problem = assert_problem(reply, 400, "ParseError")
    assert problem["data"]["field"] == "params.vmParams"
    assert "Traceback" not in reply.body.decode() and "RecursionError" not in reply.body.decode()


def test_deeply_nested_query_value_is_a_400_problem(app: bottle.Bottle) -> None:
    deep = '{"a":' * 3000 + "1" + "}" * 3000
    reply = request(app, "POST", "/api/v1/vms?vmParams=" + quote(deep))
    assert assert_problem(reply, 400, "InvalidParams")["data"]["field"] == "params.vmParams"
