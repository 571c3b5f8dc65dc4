"""Domain metadata and special files, checked against VDSM's format as vdsm-compat.md describes it
(the expected bytes are built here by hand, not by the code under test)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pier.host.storage import domain_md, special
from pier.rpc.errors import MetaDataSealIsBroken, MetaDataValidationError, StorageDomainMetadataNotFound

SD = "11111111-2222-3333-4444-555555555555"


def vdsm_bytes(pairs: dict[str, str]) -> bytes:
    lines = [f"{k}={v}" for k, v in sorted(pairs.items())]
    sha = hashlib.sha1()
    for line in lines:
        sha.update(line.encode("ascii", "xmlcharrefreplace"))
    return ("\n".join(lines + [f"_SHA_CKSUM={sha.hexdigest()}"]) + "\n").encode("utf-8")


def test_dump_is_sorted_lines_then_vdsms_checksum() -> None:
    md = {"VERSION": "5", "CLASS": "Data", "DESCRIPTION": "dómain ✓", "POOL_UUID": ""}
    assert domain_md.dump(md) == vdsm_bytes(md)
    assert domain_md.dump(md).splitlines()[0] == b"CLASS=Data"


def test_parse_reads_what_vdsm_writes() -> None:
    md = {"SDUUID": SD, "DESCRIPTION": "a=b", "LOCKPOLICY": ""}
    assert domain_md.parse(vdsm_bytes(md)) == md


def test_parse_refuses_a_broken_seal_naming_the_file() -> None:
    data = vdsm_bytes({"SDUUID": SD, "DESCRIPTION": "x"}).replace(b"DESCRIPTION=x", b"DESCRIPTION=y")
    with pytest.raises(MetaDataSealIsBroken, match="/some/metadata") as err:
        domain_md.parse(data, "/some/metadata")
    assert err.value.code == 752


def test_parse_refuses_a_line_that_is_not_key_value_naming_the_line() -> None:
    data = b"CLASS=Data\ngarbage here\nVERSION=5\n"
    with pytest.raises(MetaDataValidationError, match=r"/m, line 2") as err:
        domain_md.parse(data, "/m")
    assert err.value.data == {"path": "/m", "line": 2}


def test_read_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StorageDomainMetadataNotFound):
        domain_md.read(tmp_path / "metadata")


def test_validate_names_missing_keys_and_bad_values() -> None:
    with pytest.raises(MetaDataValidationError, match="missing"):
        domain_md.validate({"CLASS": "Data"})
    md = {"CLASS": "Data", "DESCRIPTION": "", "POOL_UUID": "", "ROLE": "Boss", "SDUUID": SD, "TYPE": "NFS",
          "VERSION": "5"}
    with pytest.raises(MetaDataValidationError, match="ROLE=Boss"):
        domain_md.validate(md)


def test_write_goes_through_new_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "metadata"
    domain_md.write(path, {"A": "1"})
    domain_md.write(path, {"A": "2"})
    assert path.read_bytes() == vdsm_bytes({"A": "2"})
    assert not (tmp_path / "metadata.new").exists()
    assert path.stat().st_mode & 0o777 == 0o660


def test_dump_refuses_a_newline_in_a_value() -> None:
    with pytest.raises(MetaDataValidationError):
        domain_md.dump({"DESCRIPTION": "two\nlines"})


def test_pool_domains_round_trip() -> None:
    text = f"{SD}:Active,99999999-2222-3333-4444-555555555555:Attached"
    assert domain_md.format_pool_domains(domain_md.pool_domains({"POOL_DOMAINS": text})) == text


def test_xleases_index_is_vdsms_format() -> None:
    data = special.xleases_bytes(SD, special.MiB, mtime=1700000000)
    assert len(data) == special.MiB + 62 * 4096
    assert data[:special.MiB] == bytes(special.MiB)
    header = data[special.MiB:special.MiB + 512]
    # magic (big endian) NUL version NUL lockspace(48) NUL mtime(10) NUL flag 440*NUL newline
    expected = (bytes.fromhex("12152016") + b"\0" + b"0001" + b"\0" + SD.encode().ljust(48, b"\0") + b"\0"
                + b"1700000000" + b"\0" + b"-" + bytes(440) + b"\n")
    assert header == expected
    record = data[special.MiB + 512:special.MiB + 576]
    assert record == bytes(48) + b"\0" + b"00000000000" + b"\0" + b"--\n"
    assert special.parse_index_header(header)["lockspace"] == SD


@pytest.mark.parametrize(("block", "hosts", "align"), [(512, 2000, 1 << 20), (4096, 250, 1 << 20),
                                                       (4096, 251, 2 << 20), (4096, 2000, 8 << 20)])
def test_alignment_follows_vdsm(block: int, hosts: int, align: int) -> None:
    assert special.alignment(block, hosts) == align
