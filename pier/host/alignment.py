"""Partition alignment of a disk image (VM.getDiskAlignment): whether every partition of an MBR
or GPT partition table starts on a 64 KiB boundary, as virt-alignment-scan judged it for VDSM.

The first sectors are read with `qemu-img dd -U`, so the image may be in use by a running VM.
"""

from __future__ import annotations

import struct
import subprocess
import tempfile
from pathlib import Path

SECTOR = 512
ALIGNMENT = 64 * 1024
_GPT_TYPE = 0xEE
_READ_SECTORS = 34  # MBR, GPT header and the usual 128 entries of 128 bytes


def first_sectors(path: str, fmt: str, count: int = _READ_SECTORS) -> bytes:
    """The guest-visible first `count` sectors of an image (qcow2 chains read through)."""
    with tempfile.TemporaryDirectory(prefix="pier-align-") as tmp:
        out = Path(tmp) / "head"
        done = subprocess.run(["qemu-img", "dd", "-U", "-f", fmt, "-O", "raw", f"bs={SECTOR}", f"count={count}",
                               f"if={path}", f"of={out}"], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise OSError(done.stderr.strip() or f"qemu-img dd failed ({done.returncode})")
        return out.read_bytes()


def partition_starts(head: bytes) -> list[int]:
    """The first sector of each partition in an MBR or (protective MBR) GPT table; none without one."""
    if len(head) < SECTOR or head[510:512] != b"\x55\xaa":
        return []
    entries = [head[446 + 16 * i: 462 + 16 * i] for i in range(4)]
    if any(e[4] == _GPT_TYPE for e in entries) and head[SECTOR:SECTOR + 8] == b"EFI PART":
        gpt = head[SECTOR:2 * SECTOR]
        first_entry, count, size = struct.unpack_from("<QII", gpt, 72)
        starts = []
        for index in range(count):
            offset = first_entry * SECTOR + index * size
            entry = head[offset:offset + size]
            if len(entry) < 40:
                break
            if entry[:16] != bytes(16):
                starts.append(struct.unpack_from("<Q", entry, 32)[0])
        return starts
    return [struct.unpack_from("<I", e, 8)[0] for e in entries if e[4] != 0]


def partitions_aligned(path: str, fmt: str) -> bool:
    """Whether every partition of the image starts on a 64 KiB boundary (True with none)."""
    return all(start * SECTOR % ALIGNMENT == 0 for start in partition_starts(first_sectors(path, fmt)))
