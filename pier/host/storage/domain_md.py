"""A file domain's metadata (`dom_md/metadata`), byte for byte as VDSM 4.50 writes it.

`KEY=value` lines sorted by key, each ending in a newline, then `_SHA_CKSUM=<hex>`: the SHA-1 of
the preceding lines without their newlines, each encoded as ASCII with XML character references
for anything else. The file is UTF-8, written to `metadata.new`, fsynced and renamed over
`metadata` (then the directory is fsynced). A reader refuses a file whose checksum does not match
or a line that is not `KEY=value`, naming the file and the line.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from pier.rpc.errors import (
    InvalidParameterException,
    MetaDataSealIsBroken,
    MetaDataValidationError,
    StorageDomainMetadataNotFound,
)

CHECKSUM_KEY = "_SHA_CKSUM"
FILE_MODE = 0o660
DIR_MODE = 0o775

# Keys (VDSM's DMDK_*).
ALIGNMENT = "ALIGNMENT"
BLOCK_SIZE = "BLOCK_SIZE"
CLASS = "CLASS"
DESCRIPTION = "DESCRIPTION"
IOOPTIMEOUTSEC = "IOOPTIMEOUTSEC"
LEASERETRIES = "LEASERETRIES"
LEASETIMESEC = "LEASETIMESEC"
LOCKPOLICY = "LOCKPOLICY"
LOCKRENEWALINTERVALSEC = "LOCKRENEWALINTERVALSEC"
POOL_UUID = "POOL_UUID"
REMOTE_PATH = "REMOTE_PATH"
ROLE = "ROLE"
SDUUID = "SDUUID"
TYPE = "TYPE"
VERSION = "VERSION"
# The pool's own keys, on its master domain only.
MASTER_VERSION = "MASTER_VERSION"
POOL_DESCRIPTION = "POOL_DESCRIPTION"
POOL_DOMAINS = "POOL_DOMAINS"
POOL_SPM_ID = "POOL_SPM_ID"
POOL_SPM_LVER = "POOL_SPM_LVER"
POOL_KEYS = (MASTER_VERSION, POOL_DESCRIPTION, POOL_DOMAINS, POOL_SPM_ID, POOL_SPM_LVER)

REQUIRED = (CLASS, DESCRIPTION, POOL_UUID, ROLE, SDUUID, TYPE, VERSION)

# VDSM's names and numbers.
DOMAIN_TYPES = {1: "NFS", 2: "FCP", 3: "ISCSI", 4: "LOCALFS", 5: "CIFS", 6: "POSIXFS", 7: "GLUSTERFS"}
FILE_DOMAIN_TYPES = ("NFS", "LOCALFS", "POSIXFS", "GLUSTERFS", "CIFS")
DOMAIN_CLASSES = {1: "Data", 2: "Iso", 3: "Backup"}
REGULAR, MASTER = "Regular", "Master"
SUPPORTED_VERSIONS = (5,)
DEFAULT_VERSION = 5
MAX_DESCRIPTION = 50  # VDSM's MAX_DOMAIN_DESCRIPTION_SIZE

# VDSM's lease parameters at creation (DEFAULT_LEASE_PARAMS); LOCKPOLICY is written empty.
DEFAULT_LEASE_PARAMS = {LEASERETRIES: "3", LEASETIMESEC: "60", LOCKRENEWALINTERVALSEC: "5", IOOPTIMEOUTSEC: "10"}


def check_value(value: str, what: str) -> None:
    """Refuse a value metadata cannot hold: a newline, a NUL, or text that is not UTF-8."""
    if "\n" in value or "\0" in value:
        raise InvalidParameterException(f"Invalid parameter: {what} may not hold a newline or a NUL")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidParameterException(f"Invalid parameter: {what} is not valid UTF-8") from None


def checksum(lines: list[str]) -> str:
    """VDSM's seal: SHA-1 over the lines (no newlines), ASCII with XML character references."""
    digest = hashlib.sha1()
    for line in lines:
        digest.update(line.encode("ascii", "xmlcharrefreplace"))
    return digest.hexdigest()


def dump(md: Mapping[str, str]) -> bytes:
    """The file's bytes: sorted `KEY=value` lines, then the checksum line."""
    for key, value in md.items():
        if key == CHECKSUM_KEY or "=" in key or "\n" in key or "\n" in str(value):
            raise MetaDataValidationError(f"Meta Data self-validation failed: cannot write key {key!r}")
    lines = [f"{key}={value}" for key, value in sorted(md.items())]
    lines.append(f"{CHECKSUM_KEY}={checksum(lines)}")
    return "".join(line + "\n" for line in lines).encode("utf-8")


def parse(data: bytes, path: Path | str = "metadata") -> dict[str, str]:
    """The metadata in `data`; refuses (naming `path` and the line) a line that is not
    `KEY=value`, bytes that are not UTF-8, and a checksum that does not match."""
    try:
        text = data.rstrip(b"\0").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MetaDataValidationError(f"{path}: not UTF-8 at byte {exc.start}",
                                      data={"path": str(path), "byte": exc.start}) from None
    md: dict[str, str] = {}
    declared: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise MetaDataValidationError(f"{path}, line {number}: not KEY=value: {line[:80]!r}",
                                          data={"path": str(path), "line": number})
        if key.strip() == CHECKSUM_KEY:
            declared = value
        else:
            md[key.strip()] = value
    if declared is not None:
        computed = checksum([f"{key}={value}" for key, value in sorted(md.items())])
        if declared != computed:
            raise MetaDataSealIsBroken(f"{path}: checksum {declared} does not match the content ({computed})",
                                       data={"path": str(path), "line": len(md) + 1})
    return md


def read(path: Path) -> dict[str, str]:
    """Read and check a metadata file (see `parse`)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise StorageDomainMetadataNotFound(f"Storage domain invalid, metadata not found: {path}",
                                            data={"path": str(path)}) from None
    return parse(data, path)


def validate(md: Mapping[str, str], path: Path | str = "metadata") -> None:
    """Refuse metadata a file domain cannot have: a missing key, an unknown type, class or role."""
    missing = [key for key in REQUIRED if key not in md]
    if missing:
        raise MetaDataValidationError(f"{path}: missing {', '.join(missing)}", data={"path": str(path)})
    problems = []
    if md[TYPE] not in DOMAIN_TYPES.values():
        problems.append(f"TYPE={md[TYPE]}")
    if md[CLASS] not in DOMAIN_CLASSES.values():
        problems.append(f"CLASS={md[CLASS]}")
    if md[ROLE] not in (REGULAR, MASTER):
        problems.append(f"ROLE={md[ROLE]}")
    if not md[VERSION].isdigit():
        problems.append(f"VERSION={md[VERSION]}")
    if problems:
        raise MetaDataValidationError(f"{path}: bad value {', '.join(problems)}", data={"path": str(path)})


def write(path: Path, md: Mapping[str, str]) -> None:
    """Write `md` to `path` as VDSM does: to `<path>.new`, fsynced, renamed, directory fsynced."""
    path = Path(path)
    tmp = path.with_name(path.name + ".new")
    data = dump(md)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pool_ids(md: Mapping[str, str]) -> list[str]:
    """The pools a domain is attached to (POOL_UUID, joined with `,`)."""
    return [p for p in md.get(POOL_UUID, "").split(",") if p]


def pool_domains(md: Mapping[str, str]) -> dict[str, str]:
    """A master domain's POOL_DOMAINS as {sdUUID: status}."""
    out: dict[str, str] = {}
    for pair in md.get(POOL_DOMAINS, "").split(","):
        sd, sep, status = pair.partition(":")
        if sep and sd:
            out[sd] = status
    return out


def format_pool_domains(domains: Mapping[str, str]) -> str:
    """{sdUUID: status} as POOL_DOMAINS' `sd:Status,sd:Status`."""
    return ",".join(f"{sd}:{status}" for sd, status in domains.items())
