"""Where storage lives on disk: VDSM's file-domain tree, byte for byte the same paths.

    <data_center>/mnt/<mount name>/            a connection (a mount, or a symlink for localfs)
    <mount>/<sdUUID>/dom_md/{metadata,ids,leases,xleases,inbox,outbox}
    <mount>/<sdUUID>/images/<imgUUID>/<volUUID>{,.meta,.lease}
    <mount>/<sdUUID>/master/                   on a pool's master domain only
    <data_center>/<spUUID>/<sdUUID> -> domain  the links of a connected pool
    <data_center>/<spUUID>/mastersd -> master domain

Only paths here, no I/O beyond looking a domain up and making the pool links.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

from pier.rpc.errors import StorageDomainDoesNotExist, StoragePoolUnknown

DEFAULT_DATA_CENTER = Path("/rhev/data-center")
MOUNT_DIR = "mnt"
DOM_MD = "dom_md"
IMAGES = "images"
MASTER = "master"
MASTER_LINK = "mastersd"
METADATA = "metadata"
META_EXT = ".meta"
LEASE_EXT = ".lease"
BLANK_UUID = "00000000-0000-0000-0000-000000000000"

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def is_uuid(text: str) -> bool:
    """True when `text` is a UUID in its dashed form (so it is safe as one path component)."""
    return bool(_UUID.match(text))


def new_uuid() -> str:
    """A fresh random UUID string."""
    return str(uuid.uuid4())


# -- connections -------------------------------------------------------------------------------


def mount_name(remote_path: str) -> str:
    """VDSM's name for a connection's mount point: `_` doubled first, then `/` turned into `_`.

    `/data/sd1` -> `_data_sd1`; `server:/export` -> `server:_export`; `/a_b` -> `_a__b`. Not
    reversible (`/_` and `_/` both give `___`): a domain's REMOTE_PATH is in its metadata.
    """
    return remote_path.replace("_", "__").replace("/", "_")


NAME_MAX = 255


def usable_remote_path(remote_path: str) -> str | None:
    """Why `remote_path` cannot name a mount point (None when it can): a NUL, text that is not
    UTF-8, or a mount name longer than the filesystem's 255 bytes."""
    if not remote_path:
        return "it is empty"
    if "\0" in remote_path or "\n" in remote_path:
        return "it holds a NUL or a newline"
    try:
        size = len(mount_name(remote_path).encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid UTF-8"
    if size > NAME_MAX:
        return f"its mount name would be {size} bytes, more than {NAME_MAX}"
    return None


def mount_root(data_center: Path) -> Path:
    """The directory that holds every connection: `<data_center>/mnt`."""
    return Path(data_center) / MOUNT_DIR


def mount_point(data_center: Path, remote_path: str) -> Path:
    """Where a connection to `remote_path` is mounted (or linked, for localfs)."""
    return mount_root(data_center) / mount_name(remote_path)


# -- a domain's tree ---------------------------------------------------------------------------


def domain_dir(mount: Path, sd_uuid: str) -> Path:
    """The domain directory under a connection's mount point."""
    return Path(mount) / sd_uuid


def dom_md_dir(domain: Path) -> Path:
    """`<domain>/dom_md`, the domain's metadata and lease files."""
    return Path(domain) / DOM_MD


def metadata_path(domain: Path) -> Path:
    """`<domain>/dom_md/metadata`."""
    return dom_md_dir(domain) / METADATA


def dom_md_file(domain: Path, name: str) -> Path:
    """One of the dom_md files: metadata, ids, leases, xleases, inbox, outbox."""
    return dom_md_dir(domain) / name


def images_dir(domain: Path) -> Path:
    """`<domain>/images`."""
    return Path(domain) / IMAGES


def image_dir(domain: Path, img_uuid: str) -> Path:
    """`<domain>/images/<imgUUID>`."""
    return images_dir(domain) / img_uuid


def volume_path(domain: Path, img_uuid: str, vol_uuid: str) -> Path:
    """The volume's data file: `<domain>/images/<imgUUID>/<volUUID>`."""
    return image_dir(domain, img_uuid) / vol_uuid


def volume_meta_path(domain: Path, img_uuid: str, vol_uuid: str) -> Path:
    """The volume's metadata: `<volUUID>.meta`."""
    return image_dir(domain, img_uuid) / (vol_uuid + META_EXT)


def volume_lease_path(domain: Path, img_uuid: str, vol_uuid: str) -> Path:
    """The volume's lease file: `<volUUID>.lease`."""
    return image_dir(domain, img_uuid) / (vol_uuid + LEASE_EXT)


def master_dir(domain: Path) -> Path:
    """`<domain>/master`, present on a pool's master domain only."""
    return Path(domain) / MASTER


# -- finding domains ---------------------------------------------------------------------------


def _mounts(data_center: Path) -> list[Path]:
    try:
        return sorted(p for p in mount_root(data_center).iterdir() if not p.name.startswith("."))
    except FileNotFoundError:
        return []


def find_domain(data_center: Path, sd_uuid: str) -> Path:
    """The directory of domain `sd_uuid`: the first `<data_center>/mnt/*/<sdUUID>` with a
    `dom_md/metadata` file. Raises StorageDomainDoesNotExist naming the domain."""
    if not is_uuid(sd_uuid):
        raise StorageDomainDoesNotExist(f"Storage domain does not exist: {sd_uuid!r} is not a UUID")
    for mount in _mounts(data_center):
        candidate = mount / sd_uuid
        try:
            if metadata_path(candidate).is_file():
                return candidate
        except OSError:
            continue
    raise StorageDomainDoesNotExist(f"Storage domain does not exist: {sd_uuid}", data={"sdUUID": sd_uuid})


def iter_domains(data_center: Path) -> Iterator[tuple[str, Path]]:
    """Every domain under every connection, as (sdUUID, domain directory), first mount wins."""
    seen: set[str] = set()
    for mount in _mounts(data_center):
        try:
            entries = sorted(mount.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.name in seen or not is_uuid(entry.name):
                continue
            try:
                if metadata_path(entry).is_file():
                    seen.add(entry.name)
                    yield entry.name, entry
            except OSError:
                continue


# -- pool links --------------------------------------------------------------------------------


def pool_dir(data_center: Path, sp_uuid: str) -> Path:
    """`<data_center>/<spUUID>`, the directory of a connected pool's links."""
    if not is_uuid(sp_uuid):
        raise StoragePoolUnknown(f"Unknown pool id, pool not connected: {sp_uuid!r} is not a UUID")
    return Path(data_center) / sp_uuid


def pool_domain_link(data_center: Path, sp_uuid: str, sd_uuid: str) -> Path:
    """`<data_center>/<spUUID>/<sdUUID>`, a link to the domain directory."""
    return pool_dir(data_center, sp_uuid) / sd_uuid


def pool_master_link(data_center: Path, sp_uuid: str) -> Path:
    """`<data_center>/<spUUID>/mastersd`, a link to the master domain directory."""
    return pool_dir(data_center, sp_uuid) / MASTER_LINK


def set_link(link: Path, target: Path) -> None:
    """Make `link` point to `target`, replacing what was there in one rename."""
    link = Path(link)
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def link_pool_domain(data_center: Path, sp_uuid: str, sd_uuid: str, domain: Path) -> Path:
    """Link domain `sd_uuid` into the pool's directory; returns the link."""
    link = pool_domain_link(data_center, sp_uuid, sd_uuid)
    set_link(link, domain)
    return link


def link_pool_master(data_center: Path, sp_uuid: str, domain: Path) -> Path:
    """Point the pool's `mastersd` link to the master domain; returns the link."""
    link = pool_master_link(data_center, sp_uuid)
    set_link(link, domain)
    return link


def unlink_pool_domain(data_center: Path, sp_uuid: str, sd_uuid: str) -> None:
    """Remove the pool's link to domain `sd_uuid`, if there is one."""
    link = pool_domain_link(data_center, sp_uuid, sd_uuid)
    if link.is_symlink():
        link.unlink()


def pool_domain_links(data_center: Path, sp_uuid: str) -> dict[str, Path]:
    """The domains a pool links to: {sdUUID: link target}."""
    out: dict[str, Path] = {}
    try:
        entries = list(pool_dir(data_center, sp_uuid).iterdir())
    except FileNotFoundError:
        return out
    for entry in entries:
        if entry.is_symlink() and is_uuid(entry.name):
            out[entry.name] = Path(os.readlink(entry))
    return out


def remove_pool_links(data_center: Path, sp_uuid: str) -> None:
    """Remove a pool's links and its directory (the domains themselves stay)."""
    directory = pool_dir(data_center, sp_uuid)
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if entry.is_symlink():
            entry.unlink()
    try:
        directory.rmdir()
    except OSError:
        pass
