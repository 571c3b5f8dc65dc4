"""Hand-written fakes of Pier's own interfaces, for unit tests (never an imitation of libvirt)."""

from __future__ import annotations

import base64
import copy
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pier.host.console import png
from pier.host.network.model import desired
from pier.host.services import (
    BackupService,
    BlockDeviceService,
    ConsoleService,
    DomainXmlService,
    GuestService,
    HostDeviceService,
    HostService,
    ImageSharingService,
    KsmService,
    LldpService,
    NetworkService,
    SecretService,
    StorageService,
    TransferService,
    VmDeviceService,
    VmService,
    VolumeService,
)
from pier.host.storage.service import Storage
from pier.host.storage.sharing import remote
from pier.rpc.channels import ENDED, TAKEN_OVER, Channel, ChannelEnd
from pier.rpc.dataplane import HttpEndpoint
from pier.rpc.errors import (
    BackupError,
    ChangeDisk,
    CheckpointError,
    FreezeError,
    GuestTimeout,
    HostdevDetachError,
    HotplugDisk,
    HotplugMemory,
    HotplugNic,
    HotunplugDisk,
    HotunplugNic,
    ImageDoesNotExistInSD,
    ImageError,
    ImageSharingRefused,
    InvalidParameterException,
    InvalidParams,
    KsmError,
    MissingOvfFileFromVM,
    NoSuchBackupError,
    NoSuchCheckpointError,
    NoSuchDevice,
    NoSuchImageTicket,
    NoVM,
    PierError,
    PrepareIllegalVolume,
    SecretBadRequest,
    SecretRegisterError,
    SetNumberOfCpus,
    StorageDomainDoesNotExist,
    StoragePoolUnknown,
    TargetBusy,
    Unexpected,
    UnsupportedOperation,
    UpdateDevice,
    VMDown,
    VMExists,
    VolumeAlreadyExists,
    VolumeDoesNotExist,
    VolumeGroupDoesNotExist,
    VolumeImageHasChildren,
    VolumeResizeValueError,
    VolumeSizeError,
)


class FakeHost:
    """A `pier.host.services.HostService` in memory, counting the VMs of `vms`."""

    def __init__(self, vms: FakeVms) -> None:
        self._vms = vms

    def uuid(self) -> str:
        return "00000000-0000-4000-8000-000000000001"

    def capabilities(self) -> dict[str, Any]:
        return {"uuid": self.uuid(), "cpuCores": "2", "memSize": "1024", "kvmEnabled": "true"}

    def hardware_info(self) -> dict[str, str]:
        return {"systemManufacturer": "Fake"}

    def stats(self) -> dict[str, Any]:
        return {"cpuIdle": "99.0", "vmCount": len(self._vms.records)}


class FakeVms:
    """A `pier.host.services.VmService` in memory: `records` holds each VM's definition by id."""

    connected = True

    def __init__(self, emit: Callable[[str, dict[str, Any]], Any] | None = None) -> None:
        self.emit = emit or (lambda name, params: None)
        self.records: dict[str, dict[str, Any]] = {}
        self.changed = threading.Condition()
        self.guest_obeys_shutdown = False

    def _set(self, vm_id: str, status: str) -> None:
        with self.changed:
            self.records[vm_id]["status"] = status
            self.changed.notify_all()
        self.emit(f"|virt|VM_status|{vm_id}", {vm_id: {"status": status}})

    def _get(self, vm_id: str) -> dict[str, Any]:
        if vm_id not in self.records:
            raise NoVM(f"Virtual machine does not exist: {vm_id}", data={"vmId": vm_id})
        return self.records[vm_id]

    def _running(self, vm_id: str) -> None:
        if self._get(vm_id)["status"] == "Down":
            raise VMDown(data={"vmId": vm_id})

    def listing(self, vm_ids: Iterable[str] | None = None, full: bool = False) -> list[dict[str, Any]]:
        wanted = None if vm_ids is None else set(vm_ids)
        return [dict(vm) if full else {"vmId": vm["vmId"], "status": vm["status"]}
                for vm in self.records.values() if wanted is None or vm["vmId"] in wanted]

    def definition(self, vm_id: str) -> dict[str, Any]:
        return dict(self._get(vm_id))

    def status(self, vm_id: str) -> str:
        return str(self._get(vm_id)["status"])

    def stats(self, vm_id: str) -> dict[str, Any]:
        vm = self._get(vm_id)
        return {"vmId": vm_id, "status": vm["status"], "statsAge": "0.1"}

    def all_stats(self) -> list[dict[str, Any]]:
        return [self.stats(vm_id) for vm_id in self.records]

    def wait_status(self, vm_id: str, statuses: set[str], timeout: float,
                    cancelled: threading.Event | None = None) -> str | None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                status = self.records.get(vm_id, {}).get("status")
                remaining = deadline - time.monotonic()
                if status in statuses or remaining <= 0 or (cancelled is not None and cancelled.is_set()):
                    return status if status in statuses else None
                self.changed.wait(min(remaining, 0.05))

    def create(self, vm_id: str | None, params: dict[str, Any]) -> dict[str, Any]:
        vm_id = vm_id or str(uuid.uuid4())
        if vm_id in self.records:
            raise VMExists(data={"vmId": vm_id})
        self.records[vm_id] = {"vmId": vm_id, "vmName": params.get("vmName", vm_id), "status": "WaitForLaunch"}
        if params.get("devices"):
            self.records[vm_id]["devices"] = copy.deepcopy(params["devices"])
        self._set(vm_id, "Up")
        return dict(self.records[vm_id])

    def destroy(self, vm_id: str) -> None:
        self._get(vm_id)
        self._set(vm_id, "Down")
        del self.records[vm_id]

    def poweroff(self, vm_id: str) -> None:
        self._get(vm_id)
        self._set(vm_id, "Down")

    def shutdown(self, vm_id: str) -> None:
        self._running(vm_id)
        self._set(vm_id, "Down" if self.guest_obeys_shutdown else "Powering down")

    def end_power_down(self, vm_id: str) -> None:
        if self.records.get(vm_id, {}).get("status") == "Powering down":
            self._set(vm_id, "Up")

    def reboot(self, vm_id: str) -> None:
        self._running(vm_id)

    def reset(self, vm_id: str) -> None:
        self._running(vm_id)

    def pause(self, vm_id: str) -> dict[str, Any]:
        self._running(vm_id)
        self._set(vm_id, "Paused")
        return self.definition(vm_id)

    def cont(self, vm_id: str) -> dict[str, Any]:
        self._running(vm_id)
        status = self._get(vm_id)["status"]
        if status != "Paused":
            raise UnsupportedOperation(f"cannot cont VM {vm_id} while it is {status}",
                                       data={"vmId": vm_id, "status": status})
        self._set(vm_id, "Up")
        return self.definition(vm_id)


class FakeNetwork:
    """A `pier.host.services.NetworkService` in memory: one NIC, `eth0`, and the networks in `networks`."""

    def __init__(self) -> None:
        self.networks: dict[str, dict[str, Any]] = {}
        self.rx_bytes = 1000
        self.running: dict[str, dict[str, Any]] = {"networks": {}, "bondings": {}}
        self.safe: dict[str, dict[str, Any]] | None = None
        self.confirmed = threading.Event()

    def _addresses(self, mtu: int = 1500) -> dict[str, Any]:
        return {"addr": "", "netmask": "", "ipv4addrs": [], "ipv6addrs": [], "gateway": "",
                "ipv6gateway": "::", "ipv4defaultroute": False, "dhcpv4": False, "dhcpv6": False,
                "ipv6autoconf": False, "mtu": str(mtu)}

    def capabilities(self) -> dict[str, Any]:
        return {"nics": {"eth0": {**self._addresses(), "hwaddr": "52:54:00:00:00:01", "speed": 1000}},
                "bridges": {}, "bondings": {}, "vlans": {}, "networks": dict(self.networks),
                "nameservers": ["192.0.2.53"], "supportsIPv6": True, "netConfigDirty": "False"}

    def statistics(self) -> dict[str, Any]:
        eth0 = {"name": "eth0", "state": "up", "speed": "1000", "rx": str(self.rx_bytes), "tx": "2000",
                "rxErrors": "0", "txErrors": "0", "rxDropped": "1", "txDropped": "2",
                "rxBytesPerSec": "0", "txBytesPerSec": "0", "sampleTime": time.time()}
        return {"network": {"eth0": eth0}, "rxDropped": "1", "txDropped": "2"}

    def check(self, networks: dict[str, dict[str, Any]], bondings: dict[str, dict[str, Any]]) -> None:
        self._checked(networks, bondings)

    def _checked(self, networks: dict[str, dict[str, Any]], bondings: dict[str, dict[str, Any]]) -> Any:
        wanted = desired(self.running, networks, bondings)
        for name, attrs in wanted["networks"].items():
            if attrs.get("nic") not in (None, "eth0"):
                raise InvalidParams(f"networks.{name}.nic: there is no NIC {attrs['nic']}",
                                    data={"field": f"networks.{name}.nic"})
        for name, attrs in wanted["bondings"].items():
            if not attrs.get("nics"):
                raise InvalidParams(f"bondings.{name}.nics: a bond needs at least one NIC",
                                    data={"field": f"bondings.{name}.nics"})
        return wanted

    def setup(self, networks: dict[str, dict[str, Any]], bondings: dict[str, dict[str, Any]],
              options: dict[str, Any], progress: Callable[[int, str], None] | None = None) -> None:
        wanted = self._checked(networks, bondings)
        if progress is not None:
            progress(50, "applying")
        if options.get("connectivityCheck") and not self.confirmed.wait(options.get("connectivityTimeout", 120)):
            raise Unexpected("Host.confirmConnectivity did not arrive: the network change was rolled back")
        self.confirmed.clear()
        self.running = wanted
        self.networks = {name: {"bridged": attrs.get("bridged", True), "iface": name if attrs.get("bridged", True)
                                else attrs.get("nic", ""), "southbound": attrs.get("nic", "")}
                         for name, attrs in wanted["networks"].items()}

    def confirm(self) -> None:
        self.confirmed.set()

    def save(self) -> None:
        self.safe = {section: dict(entries) for section, entries in self.running.items()}


class FixedAuthenticator:
    """Stands in for `pier.rpc.auth.Authenticator`: everyone is `identity`."""

    def __init__(self, identity: Any) -> None:
        self.identity = identity

    def identify(self, **credentials: Any) -> Any:
        return self.identity

    def watch(self, identity: Any, revoked: Any) -> Any:
        return lambda: False  # nothing it stands for is ever revoked


def as_services(host: FakeHost, vms: FakeVms) -> tuple[HostService, VmService]:
    """The fakes as the handlers see them; mypy checks here that they keep to the services' protocols."""
    return host, vms


def as_network_service(network: FakeNetwork) -> NetworkService:
    """The network fake as the handlers see it (checked by mypy like `as_services`)."""
    return network


class FakeKsm:
    """A `pier.host.services.KsmService` in memory: `knobs` holds the values, `read_only` refuses writes."""

    def __init__(self) -> None:
        self.knobs = {"run": 0, "sleep_millisecs": 20, "pages_to_scan": 100, "merge_across_nodes": 1}
        self.read_only = False

    def tune(self, params: Mapping[str, int]) -> None:
        unknown = sorted(set(params) - set(self.knobs))
        if unknown:
            raise KsmError(f"unknown KSM knob(s) {', '.join(unknown)}", data={"knobs": unknown})
        if self.read_only and any(self.knobs[knob] != value for knob, value in params.items()):
            raise KsmError("cannot write to /fake/kernel/mm/ksm: the file system is read-only",
                           data={"file": "/fake/kernel/mm/ksm"})
        self.knobs.update(params)


class FakeLldp:
    """A `pier.host.services.LldpService`: the NICs of `nics`, no LLDP agent."""

    def __init__(self, nics: Iterable[str] = ("eth0", "eth1")) -> None:
        self.nics = list(nics)

    def info(self, devices: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        names = self.nics if devices is None else list(devices)
        for index, name in enumerate(names):
            if name not in self.nics:
                raise NoSuchDevice(f"filter.devices[{index}]: no network interface {name!r} on this host",
                                    data={"field": f"params.filter.devices[{index}]"})
        return {name: {"enabled": False, "tlvs": [], "agent": None,
                       "message": "no LLDP agent (lldpad or lldpd) runs on this host"} for name in names}


def as_tuning(ksm: FakeKsm, lldp: FakeLldp) -> tuple[KsmService, LldpService]:
    """The tuning fakes as the handlers see them (checked by mypy like `as_services`)."""
    return ksm, lldp


class FakeSecrets:
    """A `pier.host.services.SecretService` in memory: `values` holds each secret's value by UUID,
    `pier` the UUIDs Pier registered (the others came from elsewhere)."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.usages: dict[tuple[str, str], str] = {}
        self.pier: set[str] = set()

    def register(self, secrets: Iterable[Mapping[str, Any]], clear: bool = False) -> None:
        checked = []
        for index, secret in enumerate(secrets):
            try:
                value = base64.b64decode(str(secret.get("password", "")), validate=True)
            except ValueError:
                raise SecretBadRequest(f"secrets[{index}].password is not base64",
                                       data={"field": f"params.secrets[{index}].password"}) from None
            secret_uuid = str(uuid.UUID(str(secret["uuid"])))
            usage = (str(secret["usageType"]), str(secret["usageID"]))
            if self.usages.get(usage, secret_uuid) != secret_uuid:
                raise SecretRegisterError(f"cannot register secret {secret_uuid}: usage {usage} is taken")
            checked.append((secret_uuid, usage, value))
        for secret_uuid, usage, value in checked:
            self.values[secret_uuid] = value
            self.usages[usage] = secret_uuid
            self.pier.add(secret_uuid)
        if clear:
            self.unregister(self.pier - {secret_uuid for secret_uuid, _, _ in checked})

    def unregister(self, uuids: Iterable[str]) -> None:
        for secret_uuid in [str(uuid.UUID(str(value))) for value in uuids]:
            self.values.pop(secret_uuid, None)
            self.pier.discard(secret_uuid)
            self.usages = {usage: owner for usage, owner in self.usages.items() if owner != secret_uuid}


class FakeHostDevices:
    """A `pier.host.services.HostDeviceService` in memory: `devices` by name; `assigned` the
    <hostdev> XMLs each VM of `vms` holds."""

    def __init__(self, vms: FakeVms) -> None:
        self._vms = vms
        self.devices: dict[str, dict[str, Any]] = {
            "pci_0000_00_02_0": {"capability": "pci", "parent": "computer", "driver": "virtio-pci",
                                 "vendor_id": "0x1af4", "product_id": "0x1042", "is_assignable": "false",
                                 "address": {"domain": "0", "bus": "0", "slot": "2", "function": "0"}},
            "pci_0000_02_00_0": {"capability": "pci", "parent": "computer", "driver": "igb", "iommu_group": "15",
                                 "vendor_id": "0x8086", "product_id": "0x10c9", "is_assignable": "true",
                                 "totalvfs": "7",
                                 "address": {"domain": "0", "bus": "2", "slot": "0", "function": "0"}},
        }
        self.numvfs: dict[str, int] = {}
        self.assigned: dict[str, list[str]] = {}

    def _device(self, name: str, field: str = "deviceName") -> dict[str, Any]:
        if name not in self.devices:
            raise NoSuchDevice(f"{field}: no host device {name!r} on this host", data={"field": f"params.{field}"})
        return self.devices[name]

    def list_by_caps(self, caps: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        wanted = set(caps or ())
        return {name: {"params": dict(params)} for name, params in self.devices.items()
                if not wanted or params["capability"] in wanted}

    def change_numvfs(self, name: str, numvfs: int) -> None:
        params = self._device(name)
        if "totalvfs" not in params:
            raise UnsupportedOperation(f"host device {name} is not an SR-IOV physical function")
        if numvfs > int(params["totalvfs"]):
            raise InvalidParams(f"numvfs: {name} supports at most {params['totalvfs']} virtual functions",
                                data={"field": "params.numvfs"})
        self.numvfs[name] = numvfs

    def reattach(self, name: str) -> None:
        self._device(name)

    def _names(self, devices: list[str]) -> list[str]:
        """The host devices the <hostdev> XMLs name by their PCI address, all of them assignable."""
        names = []
        for index, xml in enumerate(devices):
            try:
                address = ET.fromstring(xml).find("source/address")
                assert address is not None
                slot = tuple(int(address.get(key, ""), 0) for key in ("domain", "bus", "slot", "function"))
            except (ET.ParseError, AssertionError, ValueError):
                raise InvalidParams(f"devices[{index}]: expected <hostdev> XML naming a PCI address",
                                    data={"field": f"params.devices[{index}]"}) from None
            name = "pci_{:04x}_{:02x}_{:02x}_{:x}".format(*slot)
            if name not in self.devices:
                raise NoSuchDevice(f"devices[{index}]: no host device {name} on this host",
                                   data={"field": f"params.devices[{index}]"})
            if self.devices[name]["is_assignable"] != "true":
                raise HostdevDetachError(f"devices[{index}]: host device {name} cannot be assigned to a VM")
            names.append(name)
        return names

    def hotplug(self, vm_id: str, devices: list[str]) -> list[str]:
        self._vms.status(vm_id)
        self._names(devices)
        self.assigned.setdefault(vm_id, []).extend(devices)
        return list(devices)

    def hotunplug(self, vm_id: str, devices: list[str]) -> list[str]:
        self._vms.status(vm_id)
        held = self.assigned.get(vm_id, [])
        for index, xml in enumerate(devices):
            if xml not in held:
                raise NoSuchDevice(f"devices[{index}]: VM {vm_id} has no such host device",
                                    data={"field": f"params.devices[{index}]"})
        self.assigned[vm_id] = [xml for xml in held if xml not in devices]
        return list(devices)


class FakeDomainXmls:
    """A `pier.host.services.DomainXmlService` over the VMs of `vms`."""

    def __init__(self, vms: FakeVms) -> None:
        self._vms = vms

    def domain_xmls(self, vm_ids: Iterable[str] | None = None) -> dict[str, str]:
        ids = list(self._vms.records) if vm_ids is None else list(vm_ids)
        return {vm_id: f"<domain><name>{self._vms.definition(vm_id)['vmName']}</name><uuid>{vm_id}</uuid></domain>"
                for vm_id in ids}


def as_host_extras(hostdevs: FakeHostDevices, xmls: FakeDomainXmls,
                   ksm: FakeKsm) -> tuple[HostDeviceService, DomainXmlService, KsmService]:
    """The device, domain XML and KSM fakes as the handlers see them (checked by mypy)."""
    return hostdevs, xmls, ksm


def as_secret_service(secrets: FakeSecrets) -> SecretService:
    return secrets


class FakeGuest:
    """A `pier.host.services.GuestService` over the VMs of `vms`: `agents` names the VMs whose
    agent runs, `exec_allowed` those whose agent allows guest-exec; `told` keeps each message."""

    def __init__(self, vms: FakeVms) -> None:
        self._vms = vms
        self.agents: set[str] = set()
        self.exec_allowed: set[str] = set()
        self.frozen: set[str] = set()
        self.locked: set[str] = set()
        self.told: list[tuple[str, str]] = []

    def _agent(self, vm_id: str, action: str) -> None:
        self._vms._running(vm_id)
        if vm_id not in self.agents:
            raise GuestTimeout(f"cannot {action}: the guest agent of VM {vm_id} does not answer",
                               data={"vmId": vm_id})

    def freeze(self, vm_id: str) -> int:
        self._agent(vm_id, "freeze its filesystems")
        if vm_id in self.frozen:
            raise FreezeError(f"cannot freeze the filesystems of VM {vm_id}: they are frozen already")
        self.frozen.add(vm_id)
        return 1

    def thaw(self, vm_id: str) -> int:
        self._agent(vm_id, "thaw its filesystems")
        thawed = 1 if vm_id in self.frozen else 0
        self.frozen.discard(vm_id)
        return thawed

    def desktop_lock(self, vm_id: str) -> None:
        self._agent(vm_id, "lock the desktop")
        if vm_id not in self.exec_allowed:
            raise UnsupportedOperation(f"cannot lock the desktop of VM {vm_id}: its guest agent does not "
                                       "allow guest-exec", data={"vmId": vm_id, "missing": "guest-exec"})
        self.locked.add(vm_id)

    def desktop_unsupported(self, vm_id: str, what: str) -> None:
        self._vms._get(vm_id)
        raise UnsupportedOperation(f"cannot {what} in VM {vm_id}: qemu-guest-agent has no command for it",
                                   data={"vmId": vm_id, "missing": "ovirt-guest-agent"})

    def tell_users(self, vm_id: str, message: str) -> str:
        if vm_id not in self.agents or vm_id not in self.exec_allowed:
            return "the message did not reach the guest's users: no guest-exec"
        self.told.append((vm_id, message))
        return "the message was shown to the guest's users (wall)"


def as_guest_service(guest: FakeGuest) -> GuestService:
    return guest


class FakeChannel:
    """A `pier.rpc.channels.Channel` that echoes what it is sent."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[bytes] = []
        self._cond = threading.Condition()
        self._pending = bytearray()
        self._end: ChannelEnd | None = None

    @property
    def end(self) -> ChannelEnd | None:
        return self._end

    def recv(self, size: int) -> bytes:
        with self._cond:
            self._cond.wait_for(lambda: self._pending or self._end is not None)
            data = bytes(self._pending[:size])
            del self._pending[:size]
            return data

    def send(self, data: bytes) -> None:
        with self._cond:
            if self._end is not None:
                raise BrokenPipeError(self._end.reason)
            self.sent.append(data)
            self._pending += data
            self._cond.notify_all()

    def finish(self, kind: str, reason: str) -> None:
        """End the channel from the far side (the VM stopped, someone took it over)."""
        with self._cond:
            if self._end is None:
                self._end = ChannelEnd(kind, reason)
            self._cond.notify_all()

    def close(self) -> None:
        self.finish(ENDED, f"{self.name} was closed")


class FakeConsoles:
    """A `pier.host.services.ConsoleService` over the VMs of `vms`: echoing channels, a 2x1 PNG."""

    def __init__(self, vms: FakeVms) -> None:
        self._vms = vms
        self.tickets: dict[str, tuple[str, int, str, str | None]] = {}
        self.consoles: dict[str, FakeChannel] = {}

    def set_ticket(self, vm_id: str, password: str, ttl: int, connected: str,
                   graphics_type: str | None = None) -> None:
        self._vms._running(vm_id)
        self.tickets[vm_id] = (password, ttl, connected, graphics_type)

    def screenshot(self, vm_id: str, screen: int = 0) -> dict[str, Any]:
        self._vms._running(vm_id)
        return {"mimeType": "image/png", "width": 2, "height": 1, "png": png(2, 1, b"\0" + bytes(6))}

    def open_console(self, vm_id: str, force: bool = False, holder: str = "") -> Channel:
        self._vms._running(vm_id)
        current = self.consoles.get(vm_id)
        if current is not None and current.end is None:
            if not force:
                raise TargetBusy(f"the serial console of VM {vm_id} is in use", data={"vmId": vm_id})
            current.finish(TAKEN_OVER, f"{holder} took over the serial console of VM {vm_id}")
        self.consoles[vm_id] = FakeChannel(f"the serial console of VM {vm_id}")
        return self.consoles[vm_id]

    def open_display(self, vm_id: str) -> Channel:
        self._vms._running(vm_id)
        return FakeChannel(f"the VNC display of VM {vm_id}")


def as_console_service(consoles: FakeConsoles) -> ConsoleService:
    return consoles


class FakeVmDevices:
    """A `pier.host.services.VmDeviceService` over the VMs of `vms`: each VM's devices, memory
    (memSize, maxMemSize) and CPUs (smp, maxVCpus) in its record; `paths` are the images that exist."""

    def __init__(self, vms: FakeVms, paths: Iterable[str] = ("/images/a.img", "/images/b.img")) -> None:
        self._vms = vms
        self.paths = set(paths)
        self.io_tunes: dict[str, list[dict[str, Any]]] = {}
        self.policies: dict[str, list[dict[str, Any]]] = {}

    def _devices(self, vm_id: str) -> list[dict[str, Any]]:
        return self._vms._get(vm_id).setdefault("devices", [])

    def _changed(self, vm_id: str) -> dict[str, Any]:
        vm = self._vms._get(vm_id)
        self._vms.emit(f"|virt|VM_status|{vm_id}", {vm_id: {"status": vm["status"], "hash": str(len(self._devices(vm_id)))}})
        return self._vms.definition(vm_id)

    def _plug(self, vm_id: str, device: dict[str, Any], error: type[PierError]) -> dict[str, Any]:
        device = dict(device)
        device.setdefault("alias", f"ua-{uuid.uuid4()}")
        for other in self._devices(vm_id):
            for key in ("alias", "macAddr", "name", "path"):
                if device.get(key) and other.get(key) == device[key]:
                    raise error(f"{key}: VM {vm_id} already has a device with {key} {device[key]}",
                                data={"field": f"params.{key}"})
        self._devices(vm_id).append(device)
        return device

    def _unplug(self, vm_id: str, match: Mapping[str, Any], keys: tuple[str, ...],
                error: type[PierError]) -> dict[str, Any]:
        for device in self._devices(vm_id):
            if any(match.get(key) and device.get(key) == match[key] for key in keys):
                self._devices(vm_id).remove(device)
                return self._changed(vm_id)
        raise error(f"VM {vm_id} has no such device", data={"field": "params"})

    def devices(self, vm_id: str) -> list[dict[str, Any]]:
        return [dict(d) for d in self._devices(vm_id)]

    def add_device(self, vm_id: str, device: dict[str, Any]) -> dict[str, Any]:
        kind = device.get("deviceType")
        plug = {"disk": ("drive", self.hotplug_disk), "interface": ("nic", self.hotplug_nic),
                "memory": ("memory", self.hotplug_memory)}[str(kind)]
        given = {"alias": f"ua-{uuid.uuid4()}", **device}
        plug[1](vm_id, {plug[0]: given})
        return next(d for d in self._devices(vm_id) if d["alias"] == given["alias"])

    def remove_device(self, vm_id: str, alias: str) -> dict[str, Any]:
        return self._unplug(vm_id, {"alias": alias}, ("alias",), UpdateDevice)

    def hotplug_disk(self, vm_id: str, params: dict[str, Any]) -> dict[str, Any]:
        drive = params["drive"]
        if drive.get("path") not in self.paths:
            raise ImageError(f"drive.path: {drive.get('path')} does not exist", data={"field": "params.drive.path"})
        self._plug(vm_id, {"deviceType": "disk", "device": "disk", "iface": "virtio", **drive}, HotplugDisk)
        return self._changed(vm_id)

    def hotunplug_disk(self, vm_id: str, params: dict[str, Any]) -> dict[str, Any]:
        return self._unplug(vm_id, params["drive"], ("alias", "name", "path"), HotunplugDisk)

    def change_cd(self, vm_id: str, spec: Any, floppy: bool = False) -> dict[str, Any]:
        path = spec if isinstance(spec, str) else spec.get("path", "")
        if path and path not in self.paths:
            raise ImageError(f"driveSpec.path: {path} does not exist")
        kind = "floppy" if floppy else "cdrom"
        drive = next((d for d in self._devices(vm_id) if d.get("device") == kind), None)
        if drive is None:
            raise ChangeDisk(f"VM {vm_id} has no {kind} drive")
        drive["path"] = path
        return self._changed(vm_id)

    def hotplug_nic(self, vm_id: str, params: dict[str, Any]) -> dict[str, Any]:
        nic = {"deviceType": "interface", "device": "bridge", "macAddr": f"52:54:00:00:00:{len(self._devices(vm_id)):02x}",
               **params["nic"]}
        self._plug(vm_id, nic, HotplugNic)
        return self._changed(vm_id)

    def hotunplug_nic(self, vm_id: str, params: dict[str, Any]) -> dict[str, Any]:
        return self._unplug(vm_id, params["nic"], ("alias", "macAddr"), HotunplugNic)

    def update_device(self, vm_id: str, params: dict[str, Any]) -> dict[str, Any]:
        device = next((d for d in self._devices(vm_id) if params.get("alias") and d.get("alias") == params["alias"]), None)
        if device is None:
            raise UpdateDevice(f"VM {vm_id} has no device {params.get('alias')}")
        device.update({k: v for k, v in params.items() if k in ("linkActive", "network", "path")})
        return self._changed(vm_id)

    def hotplug_memory(self, vm_id: str, params: dict[str, Any]) -> dict[str, Any]:
        vm, memory = self._vms._get(vm_id), params["memory"]
        if not vm.get("maxMemSize"):
            raise HotplugMemory(f"VM {vm_id} was not made for memory hotplug: create it with maxMemSize")
        if vm.get("memSize", 0) + memory["size"] > vm["maxMemSize"]:
            raise HotplugMemory(f"memory.size: beyond the VM's maxMemSize of {vm['maxMemSize']} MiB",
                                data={"field": "params.memory.size"})
        self._plug(vm_id, {"deviceType": "memory", "device": "memory", "node": 0, **memory}, HotplugMemory)
        vm["memSize"] = vm.get("memSize", 0) + memory["size"]
        return self._changed(vm_id)

    def hotunplug_memory(self, vm_id: str, params: dict[str, Any]) -> dict[str, Any]:
        vm = self._vms._get(vm_id)
        dimm = next((d for d in self._devices(vm_id) if d.get("alias") == params["memory"].get("alias")), None)
        if dimm is not None:
            vm["memSize"] -= dimm["size"]
        return self._unplug(vm_id, params["memory"], ("alias",), HotplugMemory)

    def set_cpus(self, vm_id: str, count: int) -> dict[str, Any]:
        vm = self._vms._get(vm_id)
        maximum = int(vm.get("maxVCpus", vm.get("smp", 1)))
        if not 1 <= count <= maximum:
            raise SetNumberOfCpus(f"numberOfCpus: {count} is not between 1 and the VM's maxVCpus, {maximum}")
        vm["smp"] = count
        return self._changed(vm_id)

    def set_balloon(self, vm_id: str, target_kib: int) -> None:
        self._vms._get(vm_id)["balloonTarget"] = target_kib

    def set_io_tune(self, vm_id: str, tunables: list[dict[str, Any]]) -> None:
        self._vms._get(vm_id)
        self.io_tunes[vm_id] = [dict(t) for t in tunables]

    def io_tune(self, vm_id: str) -> list[dict[str, Any]]:
        self._vms._get(vm_id)
        return list(self.io_tunes.get(vm_id, []))

    def io_tune_policy(self, vm_id: str) -> list[dict[str, Any]]:
        self._vms._get(vm_id)
        return list(self.policies.get(vm_id, []))

    def all_io_tune_policies(self) -> dict[str, dict[str, Any]]:
        return {vm_id: {"policy": self.policies.get(vm_id, []), "current_values": self.io_tunes.get(vm_id, [])}
                for vm_id in self._vms.records}

    def set_cpu_tune(self, vm_id: str, period: int | None = None, quota: int | None = None) -> None:
        self._vms._get(vm_id)

    def update_policy(self, vm_id: str, params: dict[str, Any]) -> None:
        self._vms._get(vm_id)
        if params.get("ioTune") is not None:
            self.policies[vm_id] = list(params["ioTune"])

    def set_destroy_on_reboot(self, vm_id: str) -> None:
        self._vms._get(vm_id)["destroyOnReboot"] = True

    def external_data(self, vm_id: str, kind: str, last_hash: str = "", force: bool = False) -> dict[str, Any]:
        self._vms._get(vm_id)
        raise UnsupportedOperation(f"VM {vm_id} has no {kind}")


def as_vm_device_service(devices: FakeVmDevices) -> VmDeviceService:
    return devices


class FakeStorage(Storage):
    """The real storage service on a temporary data-center root, with mount(8) replaced by a
    refusal (unit tests mount nothing): its domains are directories, connected as localfs."""

    def __init__(self, data_center: str, emit: Callable[[str, dict[str, Any]], object] | None = None) -> None:
        super().__init__(data_center, emit or (lambda name, params: None), monitor_interval=3600,
                         run=lambda argv, timeout: (32, f"{argv[0]}: not in unit tests"))


def as_storage_service(storage: FakeStorage) -> StorageService:
    return storage


BLANK = "00000000-0000-0000-0000-000000000000"


class FakeVolumes:
    """A `pier.host.services.VolumeService` in memory: `domains` and `pools` by id, `volumes`
    {(sd, img, vol): VolumeInfo-like dict}, `ovfs` {(domain, vm): ovf}."""

    def __init__(self, domains: Iterable[str] = (), pools: Iterable[str] = ()) -> None:
        self.domains = set(domains)
        self.pools = set(pools)
        self.volumes: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.ovfs: dict[tuple[str, str], str] = {}
        self.prepared: set[tuple[str, str, str]] = set()
        self.leftovers: dict[str, set[str]] = {}  # domain: images an interrupted operation left something in

    def check_pool(self, sp: str) -> None:
        if sp != BLANK and sp not in self.pools:
            raise StoragePoolUnknown(f"Unknown pool id, pool not connected: {sp}")

    def _domain(self, sd: str) -> None:
        if sd not in self.domains:
            raise StorageDomainDoesNotExist(f"Storage domain does not exist: {sd}")

    def _image(self, sd: str, img: str) -> None:
        self._domain(sd)
        if not any(key[:2] == (sd, img) for key in self.volumes):
            raise ImageDoesNotExistInSD(f"Image does not exist in domain: image={img}, domain={sd}")

    def _vol(self, sd: str, img: str, vol: str) -> dict[str, Any]:
        self._image(sd, img)
        if (sd, img, vol) not in self.volumes:
            raise VolumeDoesNotExist(f"Volume does not exist: {vol}")
        return self.volumes[(sd, img, vol)]

    @staticmethod
    def _size(text: str, field: str) -> int:
        try:
            size = int(text)
        except ValueError:
            raise InvalidParameterException(f"{field}: {text!r} is not a number of bytes") from None
        if size < 1:
            raise VolumeSizeError(f"{field}: {size} bytes; a volume needs at least 1")
        return size

    def check_create(self, sd: str, img: str, vol: str, size: str, volume_format: str, preallocate: str,
                     parent_img: str, parent_vol: str) -> None:
        self._size(size, "size")
        self._domain(sd)
        if (sd, img, vol) in self.volumes:
            raise VolumeAlreadyExists(f"Volume already exists: {vol}")
        if parent_vol != BLANK:
            self._vol(sd, img, parent_vol)

    def check_copy(self, sd: str, img: str, vol: str, dst_sd: str, dst_img: str, dst_vol: str) -> None:
        self._vol(sd, img, vol)
        self._domain(dst_sd)
        if (dst_sd, dst_img, dst_vol) in self.volumes:
            raise VolumeAlreadyExists(f"Volume already exists: {dst_vol}")

    def check_delete(self, sd: str, img: str, vol: str) -> None:
        self._vol(sd, img, vol)
        if self.children_of(sd, img, vol):
            raise VolumeImageHasChildren(f"volume {vol} has children")

    def check_extend(self, sd: str, img: str, vol: str, new_size: str) -> None:
        if self._size(new_size, "newSize") < int(self._vol(sd, img, vol)["capacity"]):
            raise VolumeResizeValueError("newSize: volumes only grow")

    def check_move(self, sd: str, img: str, dst_sd: str) -> None:
        self._image(sd, img)
        self._domain(dst_sd)

    def create(self, sd: str, img: str, vol: str, size: str, volume_format: str, preallocate: str,
               disktype: str, description: str, parent_img: str, parent_vol: str, *,
               initial_size: str | None = None, legal: bool = True, sequence: int | None = None,
               progress: Callable[[int, str], None] = lambda p, m: None) -> str:
        self.check_create(sd, img, vol, size, volume_format, preallocate, parent_img, parent_vol)
        if parent_vol != BLANK:
            self.volumes[(sd, img, parent_vol)]["voltype"] = "INTERNAL"
        self.volumes[(sd, img, vol)] = {
            "uuid": vol, "format": volume_format, "type": preallocate, "disktype": disktype, "voltype": "LEAF",
            "capacity": str(int(size)), "parent": parent_vol, "description": description, "domain": sd,
            "image": img, "legality": "LEGAL" if legal else "ILLEGAL", "status": "OK"}
        progress(100, "created")
        return vol

    def copy_volume(self, sd: str, img: str, vol: str, dst_sd: str, dst_img: str, dst_vol: str, description: str,
                    voltype: str, volume_format: str, preallocate: str,
                    progress: Callable[[int, str], None] = lambda p, m: None,
                    cancelled: threading.Event | None = None) -> str:
        self.check_copy(sd, img, vol, dst_sd, dst_img, dst_vol)
        source = self.volumes[(sd, img, vol)]
        self.volumes[(dst_sd, dst_img, dst_vol)] = dict(source, uuid=dst_vol, domain=dst_sd, image=dst_img,
                                                        parent=BLANK, voltype=voltype, format=volume_format,
                                                        type=preallocate, description=description)
        return dst_vol

    def delete_volume(self, sd: str, img: str, vol: str, post_zero: bool = False,
                      progress: Callable[[int, str], None] = lambda p, m: None,
                      cancelled: threading.Event | None = None) -> None:
        self.check_delete(sd, img, vol)
        del self.volumes[(sd, img, vol)]

    def extend_size(self, sd: str, img: str, vol: str, new_size: str) -> None:
        self.check_extend(sd, img, vol, new_size)
        self.volumes[(sd, img, vol)]["capacity"] = str(int(new_size))

    def info(self, sp: str, sd: str, img: str, vol: str) -> dict[str, Any]:
        return dict(self._vol(sd, img, vol))

    def size(self, sd: str, img: str, vol: str) -> dict[str, str]:
        capacity = self._vol(sd, img, vol)["capacity"]
        return {"apparentsize": capacity, "truesize": "0"}

    def qemu_info(self, sd: str, img: str, vol: str) -> dict[str, Any]:
        found = self._vol(sd, img, vol)
        return {"format": "qcow2" if found["format"] == "COW" else "raw", "virtualsize": int(found["capacity"])}

    def measure(self, sd: str, img: str, vol: str, dst_format: str, backing_chain: bool = True,
                base: str | None = None) -> dict[str, int]:
        capacity = int(self._vol(sd, img, vol)["capacity"])
        return {"required": 0, "fully-allocated": capacity}

    def set_description(self, sd: str, img: str, vol: str, description: str) -> None:
        self._vol(sd, img, vol)["description"] = description

    def set_legality(self, sd: str, img: str, vol: str, legality: str) -> None:
        self._vol(sd, img, vol)["legality"] = legality

    def verify_untrusted(self, sd: str, img: str, vol: str) -> None:
        self._vol(sd, img, vol)

    def volume_path(self, sd: str, img: str, vol: str) -> str:
        self._vol(sd, img, vol)
        return f"/fake/{sd}/images/{img}/{vol}"

    def volumes_of(self, sd: str, img: str) -> list[str]:
        if img == BLANK:
            self._domain(sd)
            return sorted(key[2] for key in self.volumes if key[0] == sd)
        self._image(sd, img)
        return self.volumes_of_any(sd, img)

    def volumes_of_any(self, sd: str, img: str) -> list[str]:
        return sorted(key[2] for key in self.volumes if key[:2] == (sd, img))

    def chain_of(self, sd: str, img: str, vol: str) -> list[str]:
        chain = [vol]
        while (parent := self._vol(sd, img, chain[-1])["parent"]) != BLANK:
            chain.append(parent)
        return chain[::-1]

    def children_of(self, sd: str, img: str, vol: str) -> list[str]:
        return sorted(key[2] for key, found in self.volumes.items() if key[:2] == (sd, img) and found["parent"] == vol)

    def legality(self, sd: str, img: str, vol: str) -> str | None:
        found = self.volumes.get((sd, img, vol))
        return None if found is None else str(found["legality"])

    def remove_leftovers(self, sd: str, img: str | None = None) -> list[str]:
        gone = sorted(i for i in self.leftovers.get(sd, set()) if img is None or i == img)
        self.leftovers[sd] = self.leftovers.get(sd, set()) - set(gone)
        return gone

    def leftover_images(self, sd: str) -> list[str]:
        return sorted(self.leftovers.get(sd, set()))

    def images_with(self, sp: str, img: str) -> list[str]:
        self.check_pool(sp)
        return sorted({key[0] for key in self.volumes if key[1] == img})

    def prepare(self, sd: str, img: str, vol: str, allow_illegal: bool = False) -> dict[str, Any]:
        chain = self.chain_of(sd, img, vol)
        if self.volumes[(sd, img, vol)]["legality"] == "ILLEGAL" and not allow_illegal:
            raise PrepareIllegalVolume(f"Cannot prepare illegal volume {vol}")
        self.prepared.add((sd, img, vol))
        path = self.volume_path(sd, img, vol)
        return {"path": path, "info": {"type": "file", "path": path},
                "imgVolumesInfo": [{"domainID": sd, "imageID": img, "volumeID": v,
                                    "path": self.volume_path(sd, img, v)} for v in chain]}

    def teardown(self, sd: str, img: str, vol: str | None = None) -> None:
        self._image(sd, img)
        self.prepared = {key for key in self.prepared if key[:2] != (sd, img) or (vol and key[2] != vol)}

    def delete_image(self, sd: str, img: str, post_zero: bool = False,
                     progress: Callable[[int, str], None] = lambda p, m: None,
                     cancelled: threading.Event | None = None) -> None:
        self._image(sd, img)
        for key in [key for key in self.volumes if key[:2] == (sd, img)]:
            del self.volumes[key]

    def delete_volumes(self, sd: str, img: str, vols: list[str], post_zero: bool = False,
                       progress: Callable[[int, str], None] = lambda p, m: None,
                       cancelled: threading.Event | None = None) -> None:
        for vol in sorted(vols, key=lambda v: -len(self.chain_of(sd, img, v))):
            self.delete_volume(sd, img, vol)

    def move(self, sd: str, img: str, dst_sd: str, *, remove_source: bool, structure_only: bool = False,
             post_zero: bool = False, progress: Callable[[int, str], None] = lambda p, m: None,
             cancelled: threading.Event | None = None) -> None:
        self.check_move(sd, img, dst_sd)
        for key, found in list(self.volumes.items()):
            if key[:2] == (sd, img):
                self.volumes[(dst_sd, img, key[2])] = dict(found, domain=dst_sd)
                if remove_source:
                    del self.volumes[key]

    def sync_data(self, sd: str, img: str, dst_sd: str, sync_type: str,
                  progress: Callable[[int, str], None] = lambda p, m: None,
                  cancelled: threading.Event | None = None) -> None:
        self._image(sd, img)
        self._image(dst_sd, img)

    def reconcile_chain(self, sd: str, img: str, leaf_vol: str) -> list[str]:
        return self.chain_of(sd, img, leaf_vol)

    def finalize_merge(self, sd: str, img: str, base: str, top: str) -> None:
        self._vol(sd, img, top)["legality"] = "ILLEGAL"

    def record_capacity(self, sd: str, img: str, vol: str, size: int) -> None:
        self._vol(sd, img, vol)["capacity"] = str(size)

    def update_vms(self, sp: str, vms: list[dict[str, Any]], sd: str | None = None) -> None:
        self.check_pool(sp)
        for vm in vms:
            self.ovfs[(sd or sp, vm["vm"])] = vm["ovf"]

    def remove_vm(self, sp: str, vm: str, sd: str | None = None) -> None:
        self.check_pool(sp)
        if self.ovfs.pop((sd or sp, vm), None) is None:
            raise MissingOvfFileFromVM(f"Missing OVF file from VM {vm}")

    def backed_up_vms(self, sp: str, sd: str) -> list[str]:
        self.check_pool(sp)
        return sorted(vm for where, vm in self.ovfs if where == sd)

    def backed_up_vms_info(self, sp: str, sd: str, vms: list[str]) -> dict[str, str]:
        self.check_pool(sp)
        try:
            return {vm: self.ovfs[(sd, vm)] for vm in vms}
        except KeyError as exc:
            raise MissingOvfFileFromVM(f"Missing OVF file from VM {exc.args[0]}") from None


def as_volume_service(volumes: FakeVolumes) -> VolumeService:
    """The fake, typed as the Protocol it implements (mypy checks it)."""
    return volumes


class FakeBlockDevices:
    """A `pier.host.services.BlockDeviceService` in memory: `listed` devices (BlockDeviceInfo dicts,
    status as if checked) and LVM volume `groups`."""

    def __init__(self) -> None:
        self.listed: list[dict[str, Any]] = [
            {"GUID": "0QEMU_QEMU_HARDDISK_drive-1", "capacity": "1073741824", "devtype": "", "name": "sda",
             "path": "/dev/sda", "type": "disk", "status": "free", "inUse": False, "usedBy": [], "partitions": []},
            {"GUID": "loop0", "capacity": "67108864", "devtype": "", "name": "loop0", "path": "/dev/loop0",
             "type": "loop", "status": "used", "inUse": True, "usedBy": ["partition table (gpt)"],
             "partitions": [{"name": "loop0p1", "path": "/dev/loop0p1", "capacity": "33554432"}]},
        ]
        self.unreadable: set[str] = set()
        self.groups: list[dict[str, Any]] = []

    def devices(self, guids: Iterable[str] | None = None, check_status: bool = True) -> list[dict[str, Any]]:
        wanted = set(guids) if guids is not None else None
        return [{**dev, **({} if check_status else {"status": "unknown"})} for dev in self.listed
                if wanted is None or dev["GUID"] in wanted]

    def visibility(self, guids: Iterable[str]) -> dict[str, bool]:
        known = {dev["GUID"] for dev in self.listed}
        return {guid: guid in known and guid not in self.unreadable for guid in guids}

    def volume_groups(self) -> list[dict[str, Any]]:
        return [dict(group) for group in self.groups]

    def volume_group(self, vg_uuid: str) -> dict[str, Any]:
        for group in self.groups:
            if vg_uuid in (group["vgUUID"], group["name"]):
                return dict(group)
        raise VolumeGroupDoesNotExist(f"Volume Group does not exist: {vg_uuid}")


def as_block_device_service(devices: FakeBlockDevices) -> BlockDeviceService:
    """The fake, typed as the Protocol it implements (mypy checks it)."""
    return devices


class FakeTransfers:
    """A `pier.host.services.TransferService` in memory: `tickets` by uuid, as imageio would keep them;
    a url must name a volume of `volumes` as file:///<sd>/<img>/<vol>."""

    def __init__(self, volumes: FakeVolumes, max_timeout: int = 7 * 86400) -> None:
        self.volumes = volumes
        self.max_timeout = max_timeout
        self.tickets: dict[str, dict[str, Any]] = {}
        self.opened: list[tuple[str, str, str, bool, str | None]] = []

    def add_ticket(self, ticket: dict[str, Any]) -> None:
        if ticket["timeout"] > self.max_timeout:
            raise InvalidParameterException("ticket.timeout: beyond this host's limit", data={"field": "ticket.timeout"})
        path = ticket["url"].removeprefix("file:///").split("/")
        if not ticket["url"].startswith("file:///") or len(path) != 3:
            raise InvalidParameterException("ticket.url: not a volume", data={"field": "ticket.url"})
        self.volumes._vol(*path)
        self.tickets[ticket["uuid"]] = {**ticket, "active": False, "transferred": 0}

    def get_ticket(self, ticket_id: str) -> dict[str, Any]:
        if ticket_id not in self.tickets:
            raise NoSuchImageTicket(f"no such image ticket: {ticket_id}")
        return dict(self.tickets[ticket_id])

    def extend_ticket(self, ticket_id: str, timeout: int) -> None:
        if timeout > self.max_timeout:
            raise InvalidParameterException("timeout: beyond this host's limit", data={"field": "timeout"})
        self.get_ticket(ticket_id)
        self.tickets[ticket_id]["timeout"] = timeout

    def remove_ticket(self, ticket_id: str) -> None:
        self.tickets.pop(ticket_id, None)

    def open_data(self, sd: str, img: str, vol: str, write: bool, checksum: str | None = None) -> HttpEndpoint:
        self.volumes._vol(sd, img, vol)
        self.opened.append((sd, img, vol, write, checksum))
        return HttpEndpoint("/nonexistent.sock", f"/images/{vol}", f"volume {vol}")

    def serving(self) -> dict[str, Any]:
        return {}


def as_transfer_service(transfers: FakeTransfers) -> TransferService:
    """The fake, typed as the Protocol it implements (mypy checks it)."""
    return transfers


class FakeImageSharing:
    """A `pier.host.services.ImageSharingService` over FakeVolumes: `moved` lists each transfer as
    (upload|download, sd, img, vol, url); methodArgs are checked as the real one checks them."""

    def __init__(self, volumes: FakeVolumes) -> None:
        self.volumes = volumes
        self.moved: list[tuple[str, str, str, str, str]] = []

    def check(self, sp: str, sd: str, img: str, vol: str | None, method_args: dict[str, Any]) -> str:
        self.volumes.check_pool(sp)
        self.volumes._image(sd, img)
        if vol is None:
            ours = [key[2] for key in self.volumes.volumes if key[:2] == (sd, img)]
            vol = next(v for v in ours if not self.volumes.children_of(sd, img, v))
        if self.volumes._vol(sd, img, vol)["parent"] != BLANK:
            raise ImageSharingRefused(f"volume {vol} has a parent")
        remote(method_args)
        return vol

    def upload(self, sd: str, img: str, vol: str | None, method_args: dict[str, Any], *,
               progress: Callable[[int, str], None], cancelled: threading.Event) -> int:
        self.moved.append(("upload", sd, img, str(vol), method_args["url"]))
        return 0

    def download(self, sd: str, img: str, vol: str | None, method_args: dict[str, Any], *,
                 progress: Callable[[int, str], None], cancelled: threading.Event) -> int:
        self.moved.append(("download", sd, img, str(vol), method_args["url"]))
        return 0


def as_sharing_service(sharing: FakeImageSharing) -> ImageSharingService:
    """The fake, typed as the Protocol it implements (mypy checks it)."""
    return sharing


class FakeBackups:
    """A `pier.host.services.BackupService` in memory over `vms`: each running VM's backup id
    (`running`) and checkpoints (`checkpoints`, oldest first), with the real service's refusals."""

    def __init__(self, vms: FakeVms) -> None:
        self.vms = vms
        self.running: dict[str, str] = {}
        self.checkpoints: dict[str, list[str]] = {}

    def start_backup(self, vm_id: str, config: dict[str, Any]) -> dict[str, Any]:
        self.vms._running(vm_id)
        if vm_id in self.running:
            raise BackupError(f"VM {vm_id} already runs backup {self.running[vm_id]}")
        known = self.checkpoints.setdefault(vm_id, [])
        source, target = config.get("from_checkpoint_id"), config.get("to_checkpoint_id")
        if source and source not in known:
            raise NoSuchCheckpointError(f"config.from_checkpoint_id: no checkpoint {source}")
        if target and target in known:
            raise CheckpointError(f"config.to_checkpoint_id: checkpoint {target} exists")
        self.running[vm_id] = config["backup_id"]
        if target:
            known.append(target)
        return self.backup_info(vm_id, config["backup_id"], target)

    def stop_backup(self, vm_id: str, backup_id: str) -> None:
        self.vms._get(vm_id)
        if self.running.get(vm_id, backup_id) != backup_id:
            raise NoSuchBackupError(f"VM {vm_id} runs backup {self.running[vm_id]}")
        self.running.pop(vm_id, None)

    def backup_info(self, vm_id: str, backup_id: str, checkpoint_id: str | None = None) -> dict[str, Any]:
        self.vms._get(vm_id)
        if self.running.get(vm_id) != backup_id:
            raise NoSuchBackupError(f"VM {vm_id} runs no backup {backup_id}")
        info: dict[str, Any] = {"disks": {"img": f"nbd:unix:/run/pier/backup/{backup_id}.sock:exportname=vda"}}
        if checkpoint_id in self.checkpoints.get(vm_id, []):
            info["checkpoint"] = f"<domaincheckpoint><name>{checkpoint_id}</name></domaincheckpoint>"
        return info

    def list_checkpoints(self, vm_id: str) -> list[str]:
        self.vms._get(vm_id)
        return list(self.checkpoints.get(vm_id, []))

    def dump_checkpoint(self, vm_id: str, checkpoint_id: str) -> dict[str, Any]:
        if checkpoint_id not in self.list_checkpoints(vm_id):
            raise NoSuchCheckpointError(f"VM {vm_id} has no checkpoint {checkpoint_id}")
        return {"checkpoint": f"<domaincheckpoint><name>{checkpoint_id}</name></domaincheckpoint>"}

    def delete_checkpoints(self, vm_id: str, checkpoint_ids: list[str]) -> dict[str, Any]:
        self.vms._get(vm_id)
        known = self.checkpoints.setdefault(vm_id, [])
        for checkpoint_id in checkpoint_ids:
            if checkpoint_id in known:
                known.remove(checkpoint_id)
        return {"checkpoint_ids": list(checkpoint_ids)}

    def redefine_checkpoints(self, vm_id: str, checkpoints: list[dict[str, Any]]) -> dict[str, Any]:
        self.vms._get(vm_id)
        known = self.checkpoints.setdefault(vm_id, [])
        done = []
        for checkpoint in checkpoints:
            if checkpoint["id"] not in known:
                known.append(checkpoint["id"])
            done.append(checkpoint["id"])
        return {"checkpoint_ids": done}


def as_backup_service(backups: FakeBackups) -> BackupService:
    """The fake, typed as the Protocol it implements (mypy checks it)."""
    return backups
