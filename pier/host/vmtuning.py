"""A running VM's tuning: the balloon, disk I/O limits, CPU period and quota, the SLA policy an
engine sets, destroy-on-reboot, and the TPM and NVRAM data of VMs that have them.

`VmControl` adds them to `pier.host.vmdevices.VmDevices` (whose `changed` refreshes the cache and
emits the event); like the device verbs,
every change is checked whole before libvirt is asked, and applies to the running guest and to
the persistent definition together. The policy (`VM.updateVmPolicy`) is kept in the domain's
metadata, where VDSM keeps it; Pier runs no MOM, so a policy's CPU limit is applied at once as
the CPU quota it stands for, and its I/O limits are kept for `VM.getIoTunePolicy`.
"""

from __future__ import annotations

import base64
import bz2
import copy
import hashlib
import io
import json
import logging
import os
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import libvirt

from pier.host.devices import Balloon, Disk
from pier.host.domain import Domain
from pier.host.domxml import OVIRT_VM_NS
from pier.host.vmdevices import Sides, VmDevices, field
from pier.rpc.errors import (
    BalloonError,
    CpuTuneError,
    InvalidParams,
    NoVM,
    PierError,
    UnsupportedOperation,
    UpdateIoTune,
    UpdateVmPolicy,
)

log = logging.getLogger(__name__)

_LIVE, _CONFIG = libvirt.VIR_DOMAIN_AFFECT_LIVE, libvirt.VIR_DOMAIN_AFFECT_CONFIG
SWTPM_DIR = "/var/lib/libvirt/swtpm"
PERIOD_RANGE = (1000, 1000000)  # microseconds, as libvirt (and the kernel's CFS) accept
QUOTA_RANGE = (1000, 17592186044415)


class VmControl(VmDevices):
    """Implements `pier.host.services.VmDeviceService`: the device verbs of `VmDevices` and the
    tuning verbs, over libvirt."""

    def _domain(self, vm_id: str) -> tuple[Domain, Sides]:
        domain = Domain.lookup(self._connection, vm_id)
        return domain, Sides(domain)

    # -- balloon -------------------------------------------------------------------------------

    def set_balloon(self, vm_id: str, target_kib: int) -> None:
        """Ask the guest's balloon to leave it `target_kib` KiB (at most its memory)."""
        domain, sides = self._domain(vm_id)
        now = sides.current()
        balloon = next((d for d in now.devices() if isinstance(d, Balloon)), None)
        if balloon is None or balloon.element.get("model") == "none":
            raise BalloonError(f"VM {vm_id} has no balloon device", data={"vmId": vm_id})
        if target_kib > now.memory_kib:
            raise BalloonError(f"target: {target_kib} KiB is more than the VM's memory, {now.memory_kib} KiB",
                               data=field("target"))
        with domain.errors("set the balloon target of", BalloonError):
            domain.virdomain.setMemoryFlags(target_kib, domain.affect_flags())
        self.changed(domain)

    # -- disk I/O limits -----------------------------------------------------------------------

    def set_io_tune(self, vm_id: str, tunables: list[dict[str, Any]]) -> None:
        """Set each disk's ioTune (found by name or path), all or none."""
        domain, sides = self._domain(vm_id)
        disks = [d for d in sides.current().devices() if isinstance(d, Disk)]
        plan: list[tuple[str, dict[str, int], dict[str, int]]] = []
        for index, tunable in enumerate(tunables):
            where = f"tunables[{index}]"
            disk = next((d for d in disks if (tunable.get("name") and d.target.get("dev") == tunable["name"])
                         or (not tunable.get("name") and tunable.get("path") and d.path == tunable["path"])), None)
            if disk is None:
                raise UpdateIoTune(f"{where}: VM {vm_id} has no disk "
                                   f"{tunable.get('name') or tunable.get('path') or '(none named)'}", data=field(where))
            limits = tunable.get("ioTune") or {}
            unknown = sorted(set(limits) - set(Disk.IO_TUNE_KEYS))
            if unknown:
                raise InvalidParams(f"{where}.ioTune: {', '.join(unknown)} not among {', '.join(Disk.IO_TUNE_KEYS)}",
                                    data=field(f"{where}.ioTune"))
            wanted = {**disk.io_tune, **{k: int(v) for k, v in limits.items()}}
            for kind in ("bytes", "iops"):
                if wanted[f"total_{kind}_sec"] and (wanted[f"read_{kind}_sec"] or wanted[f"write_{kind}_sec"]):
                    raise UpdateIoTune(f"{where}.ioTune: total_{kind}_sec cannot be set with read_{kind}_sec "
                                       f"or write_{kind}_sec", data=field(f"{where}.ioTune"))
            plan.append((disk.target.get("dev", ""), wanted, disk.io_tune))
        done: list[tuple[str, dict[str, int]]] = []
        try:
            for name, wanted, before in plan:
                with domain.errors(f"set the I/O limits of disk {name} of", UpdateIoTune):
                    domain.virdomain.setBlockIoTune(name, wanted, domain.affect_flags())
                done.append((name, before))
        except PierError:
            for name, before in reversed(done):
                try:
                    domain.virdomain.setBlockIoTune(name, before, domain.affect_flags())
                except libvirt.libvirtError as exc:
                    log.error("VM %s: could not put back the I/O limits of %s: %s", vm_id, name, exc)
            raise
        self.changed(domain)

    def io_tune(self, vm_id: str) -> list[dict[str, Any]]:
        """[{name, path, ioTune}] of each disk with an I/O limit."""
        _, sides = self._domain(vm_id)
        return _io_tunes(sides.current().devices())

    def io_tune_policy(self, vm_id: str) -> list[dict[str, Any]]:
        """The I/O limits the engine's policy (VM.updateVmPolicy) set, per disk."""
        _, sides = self._domain(vm_id)
        return _policy(sides.current().metadata("ioTunePolicy"))

    def all_io_tune_policies(self) -> dict[str, dict[str, Any]]:
        """{vmId: {policy, current_values}} of every running VM."""
        out: dict[str, dict[str, Any]] = {}
        for rec in self._cache.records():
            try:
                domain = Domain.lookup(self._connection, rec.vm_id)
                if not domain.is_active():
                    continue
                xml = domain.xml()
            except NoVM:
                continue
            out[rec.vm_id] = {"policy": _policy(xml.metadata("ioTunePolicy")),
                              "current_values": _io_tunes(xml.devices())}
        return out

    # -- CPU -----------------------------------------------------------------------------------

    def set_cpu_tune(self, vm_id: str, period: int | None = None, quota: int | None = None) -> None:
        """Set the vCPUs' CFS period and/or quota (microseconds; quota -1: no limit)."""
        if period is not None and not PERIOD_RANGE[0] <= period <= PERIOD_RANGE[1]:
            raise CpuTuneError(f"period: {period} is not between {PERIOD_RANGE[0]} and {PERIOD_RANGE[1]}",
                               data=field("period"))
        if quota is not None and quota != -1 and not QUOTA_RANGE[0] <= quota <= QUOTA_RANGE[1]:
            raise CpuTuneError(f"quota: {quota} is neither -1 nor between {QUOTA_RANGE[0]} and {QUOTA_RANGE[1]}",
                               data=field("quota"))
        domain, _ = self._domain(vm_id)
        params: dict[str, int] = {}
        if period is not None:
            params["vcpu_period"] = period
        if quota is not None:
            params["vcpu_quota"] = quota
        _set_scheduler(domain, params, CpuTuneError)
        self.changed(domain)

    def update_policy(self, vm_id: str, params: dict[str, Any]) -> None:
        """Keep the engine's SLA policy (vcpuLimit, ioTune) in the metadata; apply the CPU limit."""
        domain, sides = self._domain(vm_id)
        changes: dict[str, str] = {}
        quota = None
        if params.get("vcpuLimit") not in (None, ""):
            try:
                limit = int(params["vcpuLimit"])
            except (TypeError, ValueError):
                limit = -1
            if not 1 <= limit <= 100:
                raise UpdateVmPolicy(f"params.vcpuLimit: {params['vcpuLimit']!r} is not a percentage from 1 to 100",
                                     data=field("params.vcpuLimit"))
            changes["vcpuLimit"] = str(limit)
            vcpus = sides.current().vcpus
            period = _scheduler(domain).get("vcpu_period") or 100000
            quota = -1 if limit == 100 else max(QUOTA_RANGE[0], period * limit * (os.cpu_count() or 1) // (100 * vcpus))
        if params.get("ioTune") is not None:
            policy = params["ioTune"]
            if not isinstance(policy, list) or not all(isinstance(p, dict) for p in policy):
                raise UpdateVmPolicy("params.ioTune: expected a list of {name, path, maximum, guaranteed}",
                                     data=field("params.ioTune"))
            changes["ioTunePolicy"] = json.dumps(policy, sort_keys=True)
        if not changes:
            raise UpdateVmPolicy("params: neither vcpuLimit nor ioTune is given", data=field("params"))
        if quota is not None:
            _set_scheduler(domain, {"vcpu_quota": quota}, UpdateVmPolicy)
        set_metadata(domain, sides, changes, UpdateVmPolicy)
        self.changed(domain)

    # -- life cycle and data -------------------------------------------------------------------

    def set_destroy_on_reboot(self, vm_id: str) -> None:
        """The VM powers off instead of rebooting (this time and after)."""
        domain, _ = self._domain(vm_id)
        with domain.errors("make a reboot power off", UnsupportedOperation):
            domain.virdomain.setLifecycleAction(libvirt.VIR_DOMAIN_LIFECYCLE_REBOOT,
                                                libvirt.VIR_DOMAIN_LIFECYCLE_ACTION_DESTROY, domain.affect_flags())
        self.changed(domain)

    def external_data(self, vm_id: str, kind: str, last_hash: str = "", force: bool = False) -> dict[str, Any]:
        """{data, hash} of the VM's TPM state (a bzip2 tar, base64) or NVRAM (bzip2, base64);
        without data when it still has `last_hash` and `force` is not set."""
        domain, sides = self._domain(vm_id)
        xml = sides.current()
        if kind == "tpm":
            if xml.devices_element.find("tpm/backend[@type='emulator']") is None:
                raise UnsupportedOperation(f"VM {vm_id} has no emulated TPM", data={"vmId": vm_id})
            directory = Path(SWTPM_DIR) / domain.vm_id
            files = sorted(p for p in directory.rglob("*") if p.is_file()) if directory.is_dir() else []
            digest = hashlib.sha256()
            for path in files:
                digest.update(str(path.relative_to(directory)).encode() + b"\0" + path.read_bytes())
            hash_ = digest.hexdigest()
            if hash_ == last_hash and not force:
                return {"hash": hash_}
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w:bz2") as tar:
                for path in files:
                    tar.add(path, arcname=str(path.relative_to(directory)))
            return {"data": base64.b64encode(buffer.getvalue()).decode(), "hash": hash_}
        if kind == "nvram":
            path = (xml.root.findtext("os/nvram") or "").strip()
            if not path:
                raise UnsupportedOperation(f"VM {vm_id} has no NVRAM", data={"vmId": vm_id})
            try:
                content = Path(path).read_bytes()
            except OSError as exc:
                raise UnsupportedOperation(f"cannot read the NVRAM of VM {vm_id} ({path}): {exc.strerror}",
                                           data={"vmId": vm_id}) from None
            hash_ = hashlib.sha256(content).hexdigest()
            if hash_ == last_hash and not force:
                return {"hash": hash_}
            return {"data": base64.b64encode(bz2.compress(content)).decode(), "hash": hash_}
        raise InvalidParams(f"kind: {kind!r} is not one of tpm, nvram", data=field("kind"))


def _io_tunes(devices: list[Any]) -> list[dict[str, Any]]:
    return [{"name": d.target.get("dev", ""), "path": d.path, "ioTune": d.io_tune}
            for d in devices if isinstance(d, Disk) and any(d.io_tune.values())]


def _policy(text: str | None) -> list[dict[str, Any]]:
    if not text:
        return []
    try:
        found = json.loads(text)
    except ValueError:
        return []
    return found if isinstance(found, list) else []


def _scheduler(domain: Domain) -> dict[str, int]:
    try:
        return dict(domain.virdomain.schedulerParametersFlags(0))
    except libvirt.libvirtError:
        return {}


def _set_scheduler(domain: Domain, params: dict[str, int], error: type[PierError]) -> None:
    """Set CPU scheduler parameters in the running guest, then in the definition (libvirt takes
    one side a call); the running guest is put back when the definition refuses."""
    flags = domain.affect_flags()
    before = _scheduler(domain)
    if flags & _LIVE:
        with domain.errors("set the CPU tuning of", error):
            domain.virdomain.setSchedulerParametersFlags(params, _LIVE)
    if flags & _CONFIG or not flags & _LIVE:
        try:
            with domain.errors("set the CPU tuning in the definition of", error):
                domain.virdomain.setSchedulerParametersFlags(params, flags & ~_LIVE)
        except PierError:
            if flags & _LIVE and before:
                try:
                    domain.virdomain.setSchedulerParametersFlags(
                        {key: before[key] for key in params if key in before}, _LIVE)
                except libvirt.libvirtError as exc:
                    log.error("VM %s: could not put back its CPU tuning: %s", domain.vm_id, exc)
            raise


def set_metadata(domain: Domain, sides: Sides, values: dict[str, str], error: type[PierError]) -> None:
    """Set `<ovirt-vm:NAME>` texts in the VM's metadata, in the running guest and the definition."""
    for xml, flags in ((sides.live, _LIVE), (sides.config, _CONFIG if sides.persistent else 0)):
        if xml is None or (flags == 0 and sides.active):
            continue
        for name, value in values.items():
            xml.set_metadata(name, value)
        element = xml.root.find(f"metadata/{{{OVIRT_VM_NS}}}vm")
        assert element is not None
        plain = copy.deepcopy(element)
        for el in plain.iter():  # libvirt puts the namespace on every element itself
            el.tag = el.tag.replace(f"{{{OVIRT_VM_NS}}}", "")
        text = ET.tostring(plain, encoding="unicode")
        with domain.errors("set the metadata of", error):
            domain.virdomain.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, text, "ovirt-vm", OVIRT_VM_NS,
                                         flags or libvirt.VIR_DOMAIN_AFFECT_CURRENT)
