"""A file volume's metadata, `<volUUID>.meta`, in VDSM's format (domain version 5).

`KEY=value` lines sorted by key, then a line `EOF`, at most 512 bytes. Version 5 keys are CAP
(bytes), CTIME, DESCRIPTION, DISKTYPE, DOMAIN, FORMAT (RAW|COW), GEN, IMAGE, LEGALITY, PUUID,
SEQ, TYPE (SPARSE|PREALLOCATED) and VOLTYPE (LEAF|INTERNAL|SHARED); older domains wrote SIZE (in
512-byte blocks) and MTIME instead of CAP and SEQ, which the reader understands. A write goes to
a temporary file that is fsynced and renamed over the old one, so a crash leaves either.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from pier.host.storage.domain_md import fsync_dir
from pier.rpc.errors import VolumeMetadataReadError, VolumeMetadataWriteError

BLANK_UUID = "00000000-0000-0000-0000-000000000000"
MAX_SIZE = 512
DESCRIPTION_SIZE = 210  # VDSM's limit: what is left of 512 bytes once the other keys are written
BLOCK = 512

FORMATS = ("RAW", "COW")
TYPES = ("SPARSE", "PREALLOCATED")
VOLTYPES = ("LEAF", "INTERNAL", "SHARED")
LEGALITIES = ("LEGAL", "ILLEGAL", "FAKE")


@dataclass(frozen=True)
class VolumeMetadata:
    """What `<volUUID>.meta` says of a volume."""

    domain: str
    image: str
    parent: str
    capacity: int
    format: str
    type: str
    voltype: str
    disktype: str
    description: str = ""
    legality: str = "LEGAL"
    ctime: int = 0
    generation: int = 0
    sequence: int = 0

    def with_(self, **changes: object) -> VolumeMetadata:
        """A copy with `changes` (field names)."""
        return replace(self, **changes)  # type: ignore[arg-type]  # field names and types checked by replace

    def lines(self) -> dict[str, str]:
        """The keys and values written, version 5."""
        return {
            "CAP": str(self.capacity), "CTIME": str(self.ctime), "DESCRIPTION": self.description,
            "DISKTYPE": self.disktype, "DOMAIN": self.domain, "FORMAT": self.format,
            "GEN": str(self.generation), "IMAGE": self.image, "LEGALITY": self.legality,
            "PUUID": self.parent, "SEQ": str(self.sequence), "TYPE": self.type, "VOLTYPE": self.voltype,
        }

    def encode(self) -> bytes:
        """The file's bytes; VolumeMetadataWriteError when they pass 512 or a value breaks a line."""
        for key, value in self.lines().items():
            if "\n" in value or "=" in key:
                raise VolumeMetadataWriteError(f"volume metadata {key} may not hold a newline",
                                               data={"key": key})
        text = "".join(f"{key}={value}\n" for key, value in sorted(self.lines().items())) + "EOF\n"
        data = text.encode("utf-8")
        if len(data) > MAX_SIZE:
            raise VolumeMetadataWriteError(f"volume metadata would be {len(data)} bytes, more than {MAX_SIZE}",
                                           data={"size": len(data)})
        return data


def decode(data: bytes, path: Path | str = "") -> VolumeMetadata:
    """Parse a `.meta` file of any version; VolumeMetadataReadError naming the file and line."""
    values: dict[str, str] = {}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VolumeMetadataReadError(f"{path}: not UTF-8 text ({exc})", data={"path": str(path)}) from None
    for number, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\0").strip()
        if not line:
            continue
        if line == "EOF":
            break
        key, sep, value = line.partition("=")
        if not sep:
            raise VolumeMetadataReadError(f"{path}:{number}: not KEY=value: {line[:60]!r}",
                                          data={"path": str(path), "line": number})
        values[key] = value
    else:
        raise VolumeMetadataReadError(f"{path}: no EOF line", data={"path": str(path)})
    try:
        if "CAP" in values:
            capacity = int(values["CAP"])
        else:
            capacity = int(values["SIZE"]) * BLOCK
        meta = VolumeMetadata(
            domain=values["DOMAIN"], image=values["IMAGE"], parent=values.get("PUUID") or BLANK_UUID,
            capacity=capacity, format=values["FORMAT"], type=values["TYPE"], voltype=values["VOLTYPE"],
            disktype=values.get("DISKTYPE", "DATA"), description=values.get("DESCRIPTION", ""),
            legality=values.get("LEGALITY", "LEGAL"), ctime=int(values.get("CTIME", "0") or 0),
            generation=int(values.get("GEN", "0") or 0), sequence=int(values.get("SEQ", "0") or 0))
    except KeyError as exc:
        raise VolumeMetadataReadError(f"{path}: no {exc.args[0]} key", data={"path": str(path)}) from None
    except ValueError as exc:
        raise VolumeMetadataReadError(f"{path}: a number that does not parse ({exc})",
                                      data={"path": str(path)}) from None
    return meta


def read(path: Path) -> VolumeMetadata:
    """The metadata in file `path`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VolumeMetadataReadError(f"cannot read {path}: {exc.strerror}", data={"path": str(path)}) from None
    return decode(data, path)


def write(path: Path, meta: VolumeMetadata, *, durable: bool = True) -> None:
    """Write `meta` to `path` crash-safely: a temporary file, fsynced, renamed, the directory fsynced.
    Without `durable` the fsyncs are left out (for the ILLEGAL metadata of a volume being made,
    which its pending marker already says to remove after a crash)."""
    data = meta.encode()
    temporary = path.with_name(path.name + ".new")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o660)
        try:
            os.write(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, path)
        if durable:
            fsync_dir(path.parent)
    except OSError as exc:
        raise VolumeMetadataWriteError(f"cannot write {path}: {exc.strerror}", data={"path": str(path)}) from None


def now() -> int:
    return int(time.time())
