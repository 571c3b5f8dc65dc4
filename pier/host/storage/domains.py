"""File storage domains: making one (VDSM 4.50's tree), reading it, and the verbs on one domain.

A domain is found through `layout.find_domain`; its metadata is read and checked on every call
(the file is small, and another host may have changed it). Changes to one domain's metadata are
serialised by a lock per domain (`Domains.locked`).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import shutil
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pier.host.blockdev import DEVICE_MAPPER_MISSING
from pier.host.storage import domain_md as md_
from pier.host.storage import layout, special
from pier.rpc.errors import (
    CannotFormatAttachedStorageDomain,
    CannotFormatStorageDomainInConnectedPool,
    InvalidParameterException,
    PierError,
    StorageDomainAlreadyExists,
    StorageDomainCheckError,
    StorageDomainClassError,
    StorageDomainDescriptionTooLongError,
    StorageDomainFSNotMounted,
    StorageDomainIllegalRemotePath,
    StorageDomainNotEmpty,
    StorageDomainTypeError,
    UnsupportedDomainVersion,
)

log = logging.getLogger(__name__)

ISO_IMAGE_UUID = "11111111-1111-1111-1111-111111111111"


def domain_type_name(value: int | str) -> str:
    """VDSM's domain type name from its number (or name); refuses a type that is not a file domain."""
    name = md_.DOMAIN_TYPES.get(value) if isinstance(value, int) else str(value).upper()
    if name is None and str(value).isdigit():
        name = md_.DOMAIN_TYPES.get(int(value))
    if name not in md_.FILE_DOMAIN_TYPES:
        block = f" ({name} domains are block domains: {DEVICE_MAPPER_MISSING})" if name in ("ISCSI", "FCP") else ""
        raise StorageDomainTypeError(f"Unsupported Storage Domain type {value!r}: this host serves file domains "
                                     f"({', '.join(md_.FILE_DOMAIN_TYPES)}){block}")
    return name


def domain_class_name(value: int | str) -> str:
    """VDSM's class name (Data, Iso, Backup) from its number or name."""
    if isinstance(value, int) or str(value).isdigit():
        name = md_.DOMAIN_CLASSES.get(int(value))
    else:
        name = {n.lower(): n for n in md_.DOMAIN_CLASSES.values()}.get(str(value).lower())
    if name is None:
        raise StorageDomainClassError(f"Invalid domain class value {value!r}")
    return name


def info_of(sd_uuid: str, md: Mapping[str, str]) -> dict[str, Any]:
    """StorageDomain.getInfo's answer from a domain's metadata."""
    info: dict[str, Any] = {
        "uuid": sd_uuid, "type": md.get(md_.TYPE, ""), "class": md.get(md_.CLASS, ""),
        "name": md.get(md_.DESCRIPTION, ""), "role": md.get(md_.ROLE, ""), "pool": md_.pool_ids(md),
        "version": md.get(md_.VERSION, ""), "remotePath": md.get(md_.REMOTE_PATH, ""),
        "block_size": int(md.get(md_.BLOCK_SIZE, "512") or 512),
        "alignment": int(md.get(md_.ALIGNMENT, str(special.MiB)) or special.MiB),
    }
    if md.get(md_.ROLE) == md_.MASTER:
        info.update(lver=int(md.get(md_.POOL_SPM_LVER, "-1") or -1), spm_id=int(md.get(md_.POOL_SPM_ID, "-1") or -1),
                    master_ver=int(md.get(md_.MASTER_VERSION, "0") or 0))
    return info


def disk_space(path: Path) -> tuple[int, int]:
    """(total, free) bytes of the filesystem holding `path`, as VDSM counts them."""
    st = os.statvfs(path)
    return st.f_frsize * st.f_blocks, st.f_frsize * st.f_bavail


class Domains:
    """The file domains under `<data_center>/mnt`."""

    def __init__(self, data_center: Path) -> None:
        self.data_center = Path(data_center)
        self._locks: dict[str, threading.RLock] = {}
        self._locks_guard = threading.Lock()

    # -- finding and reading -------------------------------------------------------------------

    def path(self, sd_uuid: str) -> Path:
        """The domain's directory (StorageDomainDoesNotExist when none)."""
        return layout.find_domain(self.data_center, sd_uuid)

    def metadata(self, sd_uuid: str) -> dict[str, str]:
        """The domain's metadata, checked (its checksum, its keys)."""
        path = layout.metadata_path(self.path(sd_uuid))
        md = md_.read(path)
        md_.validate(md, path)
        return md

    def write_metadata(self, sd_uuid: str, md: Mapping[str, str]) -> None:
        md_.write(layout.metadata_path(self.path(sd_uuid)), md)

    @contextmanager
    def locked(self, sd_uuid: str) -> Iterator[None]:
        """Hold the domain's metadata lock (read-modify-write of one domain at a time)."""
        with self._locks_guard:
            lock = self._locks.setdefault(sd_uuid, threading.RLock())
        with lock:
            yield

    def update(self, sd_uuid: str, changes: Mapping[str, str | None]) -> dict[str, str]:
        """Set (or, for None, remove) keys in the domain's metadata; returns the new metadata."""
        with self.locked(sd_uuid):
            md = self.metadata(sd_uuid)
            for key, value in changes.items():
                if value is None:
                    md.pop(key, None)
                else:
                    md[key] = value
            self.write_metadata(sd_uuid, md)
            return md

    def listing(self) -> list[tuple[str, Path]]:
        """Every domain found under every connection."""
        return list(layout.iter_domains(self.data_center))

    # -- create and format ---------------------------------------------------------------------

    def check_create(self, sd_uuid: str, domain_type: int | str, remote_path: str, name: str,
                     domain_class: int | str, version: int = md_.DEFAULT_VERSION, block_size: int = 512,
                     max_hosts: int = special.HOSTS_MAX) -> tuple[str, str, Path, int]:
        """Refuse what `create` would refuse; (type, class, mount point, block size) otherwise."""
        type_name = domain_type_name(domain_type)
        class_name = domain_class_name(domain_class)
        if not layout.is_uuid(sd_uuid):
            raise InvalidParameterException(f"Invalid parameter: storagedomainID={sd_uuid!r} is not a UUID")
        if version not in md_.SUPPORTED_VERSIONS:
            raise UnsupportedDomainVersion(f"Domain version {version} is unsupported (supported: "
                                           f"{', '.join(map(str, md_.SUPPORTED_VERSIONS))})")
        if block_size == 0:
            block_size = 512
        if block_size not in special.BLOCK_SIZES:
            raise InvalidParameterException(f"Invalid parameter: blockSize={block_size} (512 or 4096)")
        if not 1 <= max_hosts <= special.HOSTS_MAX:
            raise InvalidParameterException(f"Invalid parameter: maxHosts={max_hosts} (1 to {special.HOSTS_MAX})")
        if len(name) > md_.MAX_DESCRIPTION:
            raise StorageDomainDescriptionTooLongError(
                f"Storage domain description is too long: {len(name)} characters, at most {md_.MAX_DESCRIPTION}")
        md_.check_value(name, "the name")
        problem = layout.usable_remote_path(remote_path)
        if problem:
            raise StorageDomainIllegalRemotePath(f"Remote path is illegal: {remote_path!r}: {problem}")
        if type_name == "LOCALFS" and (not os.path.isabs(remote_path) or os.path.normpath(remote_path) != remote_path):
            raise StorageDomainIllegalRemotePath(f"Remote path is illegal: {remote_path!r} (an absolute, normal path)")
        try:
            existing = self.path(sd_uuid)
        except PierError:
            existing = None
        if existing is not None:
            raise StorageDomainAlreadyExists(f"Storage domain already exists: {sd_uuid} at {existing}")
        mount = layout.mount_point(self.data_center, remote_path)
        if not mount.is_dir():
            raise StorageDomainFSNotMounted(f"Storage domain remote path not mounted: {remote_path} "
                                            f"(connect it first: no {mount})")
        others = [p.name for p in mount.iterdir() if (p / layout.DOM_MD).exists()]
        if others:
            raise StorageDomainNotEmpty(f"Storage domain is not empty - requires cleaning: {remote_path} already "
                                        f"holds domain {', '.join(sorted(others))}")
        domain = layout.domain_dir(mount, sd_uuid)
        if domain.exists():
            raise StorageDomainNotEmpty(f"Storage domain is not empty - requires cleaning: {domain} exists")
        return type_name, class_name, mount, block_size

    def create(self, sd_uuid: str, domain_type: int | str, remote_path: str, name: str, domain_class: int | str,
               version: int = md_.DEFAULT_VERSION, block_size: int = 512, max_hosts: int = special.HOSTS_MAX) -> Path:
        """Make a new file domain on the connection to `remote_path`, as VDSM 4.50 does."""
        type_name, class_name, mount, block_size = self.check_create(
            sd_uuid, domain_type, remote_path, name, domain_class, version, block_size, max_hosts)
        domain = layout.domain_dir(mount, sd_uuid)
        align = special.alignment(block_size, max_hosts)
        md = {
            md_.ALIGNMENT: str(align), md_.BLOCK_SIZE: str(block_size), md_.CLASS: class_name,
            md_.DESCRIPTION: name, **md_.DEFAULT_LEASE_PARAMS, md_.LOCKPOLICY: "", md_.POOL_UUID: "",
            md_.REMOTE_PATH: remote_path, md_.ROLE: md_.REGULAR, md_.SDUUID: sd_uuid, md_.TYPE: type_name,
            md_.VERSION: str(version),
        }
        staging = mount / f".{sd_uuid}.creating"
        try:
            md_dir = layout.dom_md_dir(staging)
            md_dir.mkdir(parents=True, mode=md_.DIR_MODE)
            special.create_files(md_dir, sd_uuid, align)
            md_.write(md_dir / layout.METADATA, md)
            images = layout.images_dir(staging)
            images.mkdir(mode=md_.DIR_MODE)
            if class_name == "Iso":
                (images / ISO_IMAGE_UUID).mkdir(mode=md_.DIR_MODE)
            os.rename(staging, domain)
            md_.fsync_dir(mount)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("created storage domain %s (%s %s) on %s", sd_uuid, type_name, class_name, remote_path)
        return domain

    def format(self, sd_uuid: str, auto_detach: bool, connected_pools: set[str]) -> None:
        """Remove the domain and everything in it. Refused while it is attached (unless
        `auto_detach`) or in a pool this host is connected to."""
        with self.locked(sd_uuid):
            domain = self.path(sd_uuid)
            try:
                pools = md_.pool_ids(self.metadata(sd_uuid))
            except PierError:
                pools = []  # a domain whose metadata is broken can still be formatted
            if pools and set(pools) & connected_pools:
                raise CannotFormatStorageDomainInConnectedPool(
                    f"Cannot format storage domain in connected pool: {sd_uuid} is in pool {', '.join(pools)}")
            if pools and not auto_detach:
                raise CannotFormatAttachedStorageDomain(
                    f"Cannot format attached storage domain: {sd_uuid} is attached to pool {', '.join(pools)}")
            doomed = domain.with_name(f".{sd_uuid}.removing")
            os.rename(domain, doomed)
            shutil.rmtree(doomed)
        log.info("formatted (removed) storage domain %s", sd_uuid)

    # -- one domain's verbs --------------------------------------------------------------------

    def info(self, sd_uuid: str) -> dict[str, Any]:
        return info_of(sd_uuid, self.metadata(sd_uuid))

    def stats(self, sd_uuid: str) -> dict[str, Any]:
        """StorageDomain.getStats: VDSM gives the sizes of a file domain as strings."""
        domain = self.path(sd_uuid)
        total, free = disk_space(domain)
        return {"disktotal": str(total), "diskfree": str(free), "mdasize": 0, "mdafree": 0,
                "mdavalid": True, "mdathreshold": True}

    def images(self, sd_uuid: str) -> list[str]:
        images = layout.images_dir(self.path(sd_uuid))
        try:
            return sorted(p.name for p in images.iterdir() if p.is_dir() and layout.is_uuid(p.name))
        except FileNotFoundError:
            return []

    def validate(self, sd_uuid: str) -> None:
        """Refuse (StorageDomainCheckError, naming what is wrong) a domain missing its files."""
        domain = self.path(sd_uuid)
        self.metadata(sd_uuid)
        missing = [name for name in special.SPECIAL_FILES if not layout.dom_md_file(domain, name).is_file()]
        if not layout.images_dir(domain).is_dir():
            missing.append("images/")
        if missing:
            raise StorageDomainCheckError(f"Domain has errors: {sd_uuid} lacks {', '.join(missing)}",
                                          data={"missing": missing})

    def set_description(self, sd_uuid: str, description: str) -> None:
        if len(description) > md_.MAX_DESCRIPTION:
            raise StorageDomainDescriptionTooLongError(
                f"Storage domain description is too long: {len(description)} characters, at most "
                f"{md_.MAX_DESCRIPTION}")
        md_.check_value(description, "the description")
        self.update(sd_uuid, {md_.DESCRIPTION: description})

    def file_stats(self, sd_uuid: str, pattern: str, case_sensitive: bool) -> dict[str, dict[str, Any]]:
        """StorageDomain.getFileStats: the files of an ISO domain matching `pattern`."""
        base = layout.image_dir(self.path(sd_uuid), ISO_IMAGE_UUID)
        regex = re.compile(fnmatch.translate(pattern), 0 if case_sensitive else re.IGNORECASE)
        out: dict[str, dict[str, Any]] = {}
        if not base.is_dir():
            return out
        for root, _dirs, files in os.walk(base):
            for name in files:
                full = Path(root) / name
                rel = str(full.relative_to(base))
                if pattern != "*" and not regex.match(rel):
                    continue
                try:
                    st = full.stat()
                except OSError:
                    continue
                status = 0 if os.access(full, os.R_OK) else 469
                out[rel] = {"size": str(st.st_size), "ctime": str(st.st_ctime), "status": status}
        return out

    def dump(self, sd_uuid: str, full: bool = False) -> dict[str, Any]:
        """StorageDomain.dump: the domain's metadata, its volumes' metadata, and its xleases."""
        domain = self.path(sd_uuid)
        md = self.metadata(sd_uuid)
        out: dict[str, Any] = {"metadata": {**info_of(sd_uuid, md), "state": "OK"}, "volumes": {}}
        images = layout.images_dir(domain)
        for meta in sorted(images.glob(f"*/*{layout.META_EXT}")) if images.is_dir() else []:
            out["volumes"][meta.name[:-len(layout.META_EXT)]] = _volume_dump(meta)
        if full:
            xleases = layout.dom_md_file(domain, special.XLEASES)
            align = int(md.get(md_.ALIGNMENT, str(special.MiB)) or special.MiB)
            try:
                with open(xleases, "rb") as f:
                    header = os.pread(f.fileno(), special.INDEX_METADATA_SIZE, align)
                out["xleases"] = {"index": special.parse_index_header(header)}
            except (OSError, ValueError) as exc:
                out["xleases"] = {"error": str(exc)}
        return out


def _volume_dump(meta: Path) -> dict[str, Any]:
    """A volume's `.meta` keys, lower-cased as VDSM's dump shows them."""
    try:
        text = meta.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return {"status": "INVALID", "error": str(exc)}
    fields: dict[str, Any] = {}
    for line in text.splitlines():
        if line == "EOF":
            break
        key, sep, value = line.partition("=")
        if sep:
            fields[key.lower()] = value
    fields["status"] = "OK" if fields else "INVALID"
    return fields
