"""Storage server connections: what StoragePool.connectStorageServer makes under `<dc>/mnt`.

- localfs (4): a symlink at the mount name pointing to the local directory, as VDSM makes.
- posixfs (6), glusterfs (7), cifs (5): `mount -t <vfs_type> -o <mnt_options> <spec> <mount point>`.
- nfs (1): `mount -t nfs` with VDSM's options: `soft,nosharecache,timeo=<timeout>,retrans=<retrans>`,
  `nfsvers=`/`minorversion=` from `protocol_version`, `nolock` for NFSv3 or auto unless the caller
  asks for `lock`, then the caller's `mnt_options`.

Each connection gets its own status, VDSM's codes: 0 connected (or disconnected); 477 the mount
failed (MountError); 453 the local path does not exist; 469 it is not a directory or cannot be
read; 372 a type this host does not serve (iSCSI, FCP); 451 anything else. A failed connection
leaves nothing behind.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pier.host.blockdev import DEVICE_MAPPER_MISSING
from pier.host.storage import layout
from pier.rpc.errors import (
    MountError,
    PierError,
    StorageDomainTypeError,
    StorageServerAccessPermissionError,
    StorageServerConnectionError,
    StorageServerValidationError,
)

log = logging.getLogger(__name__)

NFS, FCP, ISCSI, LOCALFS, CIFS, POSIXFS, GLUSTERFS = 1, 2, 3, 4, 5, 6, 7
MOUNTED_TYPES = {NFS: "nfs", CIFS: "cifs", POSIXFS: "", GLUSTERFS: "glusterfs"}
MOUNT_TIMEOUT = 120.0


def unserved_type(domain_type: int) -> str:
    """Why a storage type is not served here (iSCSI and FCP: the missing device-mapper targets)."""
    if domain_type in (FCP, ISCSI):
        return (f"Storage type {domain_type} ({'FCP' if domain_type == FCP else 'iSCSI'}) is not served by this host: "
                f"{DEVICE_MAPPER_MISSING}")
    return f"Storage type {domain_type} is not served by this host (file domains only)"

Runner = Callable[[Sequence[str], float], tuple[int, str]]


def run_command(argv: Sequence[str], timeout: float) -> tuple[int, str]:
    """Run a command; its exit code and what it wrote (stderr first)."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]} did not end within {timeout:g} s"
    except OSError as exc:
        return 127, f"{argv[0]}: {exc.strerror}"
    return done.returncode, (done.stderr.strip() or done.stdout.strip())


def _number(params: Mapping[str, Any], key: str, default: int) -> int:
    value = params.get(key)
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = -1
    if number < 0:
        raise StorageServerConnectionError(f"Error storage server connection: {key} {value!r} is not a count")
    return number


def nfs_options(params: Mapping[str, Any]) -> str:
    """VDSM's mount options for an NFS connection's params."""
    options = ["soft", "nosharecache", f"timeo={_number(params, 'timeout', 100)}",
               f"retrans={_number(params, 'retrans', 3)}"]
    version = str(params.get("protocol_version") or params.get("version") or "")
    if version in ("auto", "None"):
        version = ""
    if version:
        parts = version.split(".")
        if len(parts) > 2 or not all(p.isdigit() for p in parts):
            raise StorageServerConnectionError(f"Invalid NFS version {version!r}")
        options.append(f"nfsvers={int(parts[0])}")
        if len(parts) > 1:
            options.append(f"minorversion={int(parts[1])}")
    extra = [opt for opt in str(params.get("mnt_options") or "").split(",") if opt]
    if version in ("", "3") and "lock" not in extra:
        options.append("nolock")
    return ",".join(options + extra)


def remote_of(params: Mapping[str, Any]) -> str:
    """The connection's remote path (`connection`, or VDSM's older `export`, `spec`, `path`)."""
    for key in ("connection", "export", "spec", "path"):
        value = params.get(key)
        if value:
            return str(value)
    return ""


def mounted_at(point: Path) -> bool:
    """True when something is mounted at `point` (read from /proc/self/mountinfo)."""
    target = os.path.realpath(point)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                fields = line.split(" ")
                if len(fields) > 4 and fields[4].replace("\\040", " ") == target:
                    return True
    except OSError:
        return False
    return False


class Connections:
    """Connects and disconnects storage servers under `<data_center>/mnt`."""

    def __init__(self, data_center: Path, run: Runner = run_command) -> None:
        self._dc = Path(data_center)
        self._run = run

    def connect(self, domain_type: int, params: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Connect each; one status per connection, in order."""
        return [self._status(p, functools.partial(self._connect_one, domain_type, p)) for p in params]

    def disconnect(self, domain_type: int, params: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Disconnect each; one status per connection, in order."""
        return [self._status(p, functools.partial(self._disconnect_one, domain_type, p)) for p in params]

    def _status(self, params: Mapping[str, Any], work: Callable[[], None]) -> dict[str, Any]:
        con_id = str(params.get("id") or layout.BLANK_UUID)
        try:
            work()
        except PierError as exc:
            log.warning("storage connection %s (%s): %s", con_id, remote_of(params), exc.message)
            return {"id": con_id, "status": exc.code}
        except (OSError, ValueError) as exc:  # ValueError: text the OS cannot take (a NUL, bad UTF-8)
            log.warning("storage connection %s (%s): %s", con_id, remote_of(params), exc)
            return {"id": con_id, "status": StorageServerConnectionError.code}
        return {"id": con_id, "status": 0}

    # -- connect -------------------------------------------------------------------------------

    def _connect_one(self, domain_type: int, params: Mapping[str, Any]) -> None:
        remote = remote_of(params)
        problem = layout.usable_remote_path(remote)
        if problem:
            raise StorageServerValidationError(f"The connection's path {remote!r} cannot be used: {problem}")
        if domain_type == LOCALFS:
            self._link_local(remote)
        elif domain_type in MOUNTED_TYPES:
            self._mount(domain_type, remote, params)
        else:
            raise StorageDomainTypeError(unserved_type(domain_type))

    def _link_local(self, remote: str) -> None:
        if not os.path.isabs(remote) or os.path.normpath(remote) != remote:
            raise StorageServerValidationError(f"The local path must be absolute and normal: {remote!r}")
        if not os.path.exists(remote):
            raise StorageServerValidationError(f"The specified path does not exist: {remote}")
        if not os.path.isdir(remote):
            raise StorageServerAccessPermissionError(f"The specified local path is not a directory: {remote}")
        if not os.access(remote, os.R_OK | os.W_OK | os.X_OK):
            raise StorageServerAccessPermissionError(f"Permission settings on {remote} do not allow access")
        link = layout.mount_point(self._dc, remote)
        if link.is_symlink() and os.readlink(link) == remote:
            return
        if link.exists() and not link.is_symlink():
            raise StorageServerConnectionError(f"{link} exists and is not a link")
        layout.set_link(link, Path(remote))

    def _mount(self, domain_type: int, remote: str, params: Mapping[str, Any]) -> None:
        point = layout.mount_point(self._dc, remote)
        if point.is_dir() and mounted_at(point):
            return
        if domain_type == NFS:
            vfs, options = "nfs", nfs_options(params)
        else:
            vfs = str(params.get("vfs_type") or params.get("vfstype") or MOUNTED_TYPES[domain_type])
            options = str(params.get("mnt_options") or params.get("options") or "")
            if not vfs:
                raise MountError("A posixfs connection needs its vfs_type")
        for name, value in (("vfs_type", vfs), ("mnt_options", options)):
            if "\0" in value or not value.isprintable():
                raise MountError(f"Problem while trying to mount target: {name} {value!r} is not printable text")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise MountError(f"Problem while trying to mount target: {name} is not valid UTF-8") from None
        made = not point.exists()
        point.mkdir(parents=True, exist_ok=True)
        argv = ["mount", "-t", vfs] + (["-o", options] if options else []) + [remote, str(point)]
        code, out = self._run(argv, MOUNT_TIMEOUT)
        if code != 0:
            if made:
                try:
                    point.rmdir()
                except OSError:
                    pass
            raise MountError(f"Problem while trying to mount target: {' '.join(argv)}: {out or f'exit {code}'}",
                             data={"command": argv, "rc": code})

    # -- disconnect ----------------------------------------------------------------------------

    def _disconnect_one(self, domain_type: int, params: Mapping[str, Any]) -> None:
        remote = remote_of(params)
        problem = layout.usable_remote_path(remote)
        if problem:
            raise StorageServerValidationError(f"The connection's path {remote!r} cannot be used: {problem}")
        point = layout.mount_point(self._dc, remote)
        if domain_type == LOCALFS:
            if point.is_symlink():
                point.unlink()
            return
        if domain_type not in MOUNTED_TYPES:
            raise StorageDomainTypeError(unserved_type(domain_type))
        if mounted_at(point):
            code, out = self._run(["umount", str(point)], MOUNT_TIMEOUT)
            if code != 0:
                raise MountError(f"Problem while trying to unmount {point}: {out or f'exit {code}'}",
                                 data={"rc": code})
        if point.is_dir() and not point.is_symlink():
            try:
                point.rmdir()
            except OSError:
                pass
