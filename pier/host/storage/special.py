"""A file domain's special volumes in `dom_md/`: ids, leases, xleases, inbox, outbox.

Sizes as a VDSM 4.50 host leaves them after StorageDomain.create:

- `inbox`, `outbox`: 16 MiB of zeros each (the SPM mailbox).
- `ids`: one alignment (1 MiB for 512-byte sectors): where sanlock keeps the hosts' delta leases.
- `leases`: two alignments: slot 0 unused, slot 1 the SPM lease.
- `xleases`: slot 0 unused (zeros), slot 1 the index of external (VM) leases: a 512-byte header
  and 3960 empty 64-byte records (VDSM's xlease format, version 1).

Pier holds the SPM role with a host-local lock, not sanlock, so `ids` and `leases` stay zeros
where sanlock would write its own records: the sizes match, the sanlock contents do not.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

from pier.host.storage.domain_md import FILE_MODE

MiB = 1024 * 1024
MAILBOX_SIZE = 16 * MiB
IDS, LEASES, XLEASES, INBOX, OUTBOX, METADATA = "ids", "leases", "xleases", "inbox", "outbox", "metadata"
SPECIAL_FILES = (METADATA, IDS, LEASES, XLEASES, INBOX, OUTBOX)

BLOCK_SIZES = (512, 4096)
HOSTS_MAX = 2000
SDM_LEASE_SLOT = 1

# xleases index (VDSM's xlease module, format version 1)
INDEX_MAGIC = 0x12152016
INDEX_VERSION = 1
INDEX_SIZE = 62 * 4096
INDEX_METADATA_SIZE = 512
RECORD_SIZE = 64
MAX_RECORDS = (INDEX_SIZE - INDEX_METADATA_SIZE) // RECORD_SIZE
_INDEX_HEADER = struct.Struct(">i x 4s x 48s x 10s x c 440x c")
_RECORD = struct.Struct("48s x 11s x 3c")


def alignment(block_size: int, max_hosts: int) -> int:
    """Sanlock's lease size for this block size and number of hosts (VDSM's rule)."""
    if block_size == 512:
        return MiB
    if max_hosts > 1000:
        return 8 * MiB
    if max_hosts > 500:
        return 4 * MiB
    if max_hosts > 250:
        return 2 * MiB
    return MiB


def special_sizes(align: int) -> dict[str, int]:
    """The size of each special file but metadata and xleases."""
    return {IDS: align, LEASES: (SDM_LEASE_SLOT + 1) * align, INBOX: MAILBOX_SIZE, OUTBOX: MAILBOX_SIZE}


def index_header(lockspace: str, mtime: int | None = None, updating: bool = False) -> bytes:
    """The xleases index's 512-byte header."""
    return _INDEX_HEADER.pack(INDEX_MAGIC, b"%04d" % INDEX_VERSION, lockspace.encode("ascii"),
                              b"%010d" % (int(time.time()) if mtime is None else mtime),
                              b"u" if updating else b"-", b"\n")


def empty_record() -> bytes:
    """One free record of the xleases index."""
    return _RECORD.pack(b"", b"%011d" % 0, b"-", b"-", b"\n")


def xleases_bytes(lockspace: str, align: int, mtime: int | None = None) -> bytes:
    """The whole xleases file of a new domain."""
    return bytes(align) + index_header(lockspace, mtime) + empty_record() * MAX_RECORDS


def parse_index_header(data: bytes) -> dict[str, object]:
    """The fields of an xleases index header (for dump and tests)."""
    magic, version, lockspace, mtime, updating, _ = _INDEX_HEADER.unpack(data[:INDEX_METADATA_SIZE])
    return {"magic": magic, "version": int(version), "lockspace": lockspace.rstrip(b"\0").decode("ascii"),
            "mtime": int(mtime), "updating": updating == b"u"}


def create_files(md_dir: Path, sd_uuid: str, align: int) -> None:
    """Make every special file but metadata in `md_dir` (which exists), each fsynced."""
    for name, size in special_sizes(align).items():
        fd = os.open(md_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)
    data = xleases_bytes(sd_uuid, align)
    fd = os.open(md_dir / XLEASES, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        os.pwrite(fd, data[align:], align)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)
