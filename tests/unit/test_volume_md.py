"""The volume `.meta` format: VDSM's V5 keys, sorted, EOF, at most 512 bytes; pre-5 files read too."""

from __future__ import annotations

from pathlib import Path

import pytest

from pier.host.storage import volume_md as md
from pier.rpc.errors import VolumeMetadataReadError, VolumeMetadataWriteError

SD, IMG, PARENT = "11111111-2222-4333-8444-555555555555", "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee", md.BLANK_UUID

META = md.VolumeMetadata(domain=SD, image=IMG, parent=PARENT, capacity=1073741824, format="COW", type="SPARSE",
                         voltype="LEAF", disktype="DATA", description="a disk", legality="LEGAL", ctime=1700000000,
                         generation=2, sequence=1)


def test_v5_is_written_sorted_key_value_lines_then_eof(tmp_path: Path) -> None:
    path = tmp_path / "v.meta"
    md.write(path, META)
    assert path.read_text() == (
        "CAP=1073741824\nCTIME=1700000000\nDESCRIPTION=a disk\nDISKTYPE=DATA\n"
        f"DOMAIN={SD}\nFORMAT=COW\nGEN=2\nIMAGE={IMG}\nLEGALITY=LEGAL\nPUUID={PARENT}\nSEQ=1\n"
        "TYPE=SPARSE\nVOLTYPE=LEAF\nEOF\n")
    assert md.read(path) == META
    assert not (tmp_path / "v.meta.new").exists()


def test_a_pre_5_file_with_size_in_blocks_and_mtime_is_read() -> None:
    old = (f"DOMAIN={SD}\nCTIME=1\nFORMAT=RAW\nDISKTYPE=2\nLEGALITY=LEGAL\nSIZE=2048\nVOLTYPE=LEAF\n"
           f"DESCRIPTION=\nIMAGE={IMG}\nPUUID={PARENT}\nMTIME=0\nPOOL_UUID=\nTYPE=PREALLOCATED\nEOF\n").encode()
    meta = md.decode(old)
    assert (meta.capacity, meta.format, meta.type, meta.sequence) == (2048 * 512, "RAW", "PREALLOCATED", 0)


def test_metadata_over_512_bytes_is_refused() -> None:
    with pytest.raises(VolumeMetadataWriteError, match="more than 512"):
        META.with_(description="x" * 400).encode()
    with pytest.raises(VolumeMetadataWriteError, match="newline"):
        META.with_(description="two\nlines").encode()


def test_a_broken_file_is_refused_naming_the_file_and_line() -> None:
    with pytest.raises(VolumeMetadataReadError, match=r"v.meta:2: not KEY=value"):
        md.decode(b"CAP=1\ngarbage\nEOF\n", "v.meta")
    with pytest.raises(VolumeMetadataReadError, match="no EOF"):
        md.decode(b"CAP=1\n", "v.meta")
    with pytest.raises(VolumeMetadataReadError, match="no DOMAIN key"):
        md.decode(b"CAP=1\nEOF\n", "v.meta")
