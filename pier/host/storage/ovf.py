"""VMs' OVF descriptions kept on storage, as VDSM keeps them: `<domain>/master/vms/<vmUUID>/<vmUUID>.ovf`
on a pool's master domain (or a backup domain named by the caller)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pier.host.storage import layout
from pier.host.storage.domain_md import fsync_dir
from pier.rpc.errors import MissingOvfFileFromVM, StoragePoolUnknown, StorageUpdateVmError

VMS = "vms"


def vms_dir(domain: Path) -> Path:
    return layout.master_dir(domain) / VMS


def ovf_domain(data_center: Path, sp: str, sd: str | None, find: Any) -> Path:
    """The domain holding the OVFs: `sd` when given, else the pool's master domain."""
    if sd is not None:
        return Path(find(sd))
    link = layout.pool_master_link(data_center, sp)
    if not link.exists():
        raise StoragePoolUnknown(f"Unknown pool id, pool not connected: {sp} (it has no master domain)",
                                 data={"spUUID": sp})
    return link.resolve()


def update(domain: Path, vms: Iterable[Mapping[str, Any]]) -> None:
    """Write each VM's OVF: a temporary file, fsynced, renamed."""
    for vm in vms:
        directory = vms_dir(domain) / str(vm["vm"])
        try:
            directory.mkdir(parents=True, exist_ok=True)
            _write(directory / f"{vm['vm']}.ovf", str(vm["ovf"]).encode())
        except OSError as exc:
            raise StorageUpdateVmError(f"cannot write the OVF of VM {vm['vm']}: {exc.strerror}",
                                       data={"vmUUID": vm["vm"]}) from None


def _write(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".new")
    with open(temporary, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.rename(temporary, path)
    fsync_dir(path.parent)


def remove(domain: Path, vm: str) -> None:
    directory = vms_dir(domain) / vm
    if not layout.is_uuid(vm) or not directory.is_dir():
        raise MissingOvfFileFromVM(f"Missing OVF file from VM {vm}", data={"vmUUID": vm})
    shutil.rmtree(directory)


def listing(domain: Path) -> list[str]:
    try:
        return sorted(name for name in os.listdir(vms_dir(domain))
                      if layout.is_uuid(name) and (vms_dir(domain) / name / f"{name}.ovf").is_file())
    except FileNotFoundError:
        return []


def info(domain: Path, vms: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for vm in vms:
        path = vms_dir(domain) / vm / f"{vm}.ovf"
        try:
            out[vm] = path.read_text()
        except FileNotFoundError:
            raise MissingOvfFileFromVM(f"Missing OVF file from VM {vm}", data={"vmUUID": vm}) from None
    return out
