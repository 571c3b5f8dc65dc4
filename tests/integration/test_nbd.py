"""NBD exports through a real pierd and the real qemu-nbd, read by the real qemu-img and qemu-io.

An export is read by `qemu-img convert` from its socket; a dirty bitmap's extents, read over NBD
with qemu-img map and `x-dirty-bitmap`, show only what was written after the bitmap was added; a
writable export takes writes; pierd stops its qemu-nbd servers on stop_server and at shutdown.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.clients import JsonRpcError
from tests.integration.test_sdm_jobs import path_of, qemu_io
from tests.integration.test_volumes import Site, new, start_site

MiB = 1 << 20


@pytest.fixture
def site(tmp_path: Path, test_uri: str) -> Iterator[Site]:
    made = start_site(tmp_path, test_uri)
    yield made
    made.daemon.stop()


def nbd_pids(socket: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"qemu-nbd --socket {socket}"], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def socket_of(url: str) -> str:
    assert url.startswith("nbd:unix:"), url
    return url[len("nbd:unix:"):]


def dirty_extents(socket: str, bitmap: str) -> list[dict[str, Any]]:
    """The extents qemu-img reads through NBD's qemu:dirty-bitmap context; `data: false` is dirty."""
    opts = (f"driver=nbd,server.type=unix,server.path={socket},export=,"
            f"x-dirty-bitmap=qemu:dirty-bitmap:{bitmap}")
    out = subprocess.run(["qemu-img", "map", "--output", "json", "--image-opts", opts], capture_output=True,
                         text=True, check=True).stdout
    extents: list[dict[str, Any]] = json.loads(out)
    return extents


def test_an_export_of_a_chain_is_read_by_qemu_img_convert_and_stopped(site: Site, tmp_path: Path) -> None:
    img, base, top = new(), new(), new()
    site.create(img, base, size=64 * MiB)
    qemu_io(path_of(site, site.sd, img, base), "write -P 7 0 4M")
    site.create(img, top, size=64 * MiB, parent=base)
    qemu_io(path_of(site, site.sd, img, top), "write -P 9 2M 1M")
    server = new()
    url = site.rpc.call("NBD.start_server", server_id=server,
                        config={"sd_id": site.sd, "img_id": img, "vol_id": top, "readonly": True})
    socket = socket_of(url)
    assert Path(socket).name == f"{server}.sock" and len(nbd_pids(socket)) == 1
    copy = tmp_path / "copy.raw"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", url, str(copy)], check=True)
    subprocess.run(["qemu-img", "compare", "-F", "qcow2", "-f", "raw", str(copy),
                    str(path_of(site, site.sd, img, top))], check=True)
    write = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 1 0 4k", url], capture_output=True, text=True)
    assert write.returncode != 0 or "read-only" in (write.stdout + write.stderr).lower()

    site.rpc.call("NBD.stop_server", server_id=server)
    assert nbd_pids(socket) == [] and not Path(socket).exists()
    site.rpc.call("NBD.stop_server", server_id=server)  # not running: fine, as VDSM answers


def test_a_writable_export_of_one_volume_takes_writes(site: Site) -> None:
    img, vol = new(), new()
    site.create(img, vol, size=16 * MiB, fmt="RAW")
    server = new()
    url = site.rpc.call("NBD.start_server", server_id=server,
                        config={"sd_id": site.sd, "img_id": img, "vol_id": vol, "backing_chain": False})
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x42 1M 64k", url], check=True, capture_output=True)
    site.rpc.call("NBD.stop_server", server_id=server)
    assert "Pattern verification failed" not in qemu_io(path_of(site, site.sd, img, vol), "read -P 0x42 1M 64k", "raw")


def test_a_dirty_bitmap_export_shows_only_blocks_written_after_the_bitmap(site: Site) -> None:
    img, vol = new(), new()
    site.create(img, vol, size=64 * MiB)
    path = path_of(site, site.sd, img, vol)
    qemu_io(path, "write -P 1 0 8M")  # before the bitmap: not dirty
    ended = site.wait(site.rpc.call("SDM.add_bitmap", job_id=new(), vol_info={"sd_id": site.sd, "img_id": img,
                                                                              "vol_id": vol}, bitmap="backup-1"))
    assert ended["state"] == "succeeded", ended
    qemu_io(path, "write -P 2 16M 1M")
    qemu_io(path, "write -P 3 40M 2M")
    config = {"sd_id": site.sd, "img_id": img, "vol_id": vol, "readonly": True, "bitmap": "backup-1"}
    for wrong, code in (({"readonly": False}, 2009), ({"backing_chain": False}, 2009), ({"bitmap": "nope"}, 1000)):
        with pytest.raises(JsonRpcError) as caught:
            site.rpc.call("NBD.start_server", server_id=new(), config={**config, **wrong})
        assert caught.value.code == code, wrong
    server = new()
    url = site.rpc.call("NBD.start_server", server_id=server, config=config)
    dirty = [(e["start"], e["length"]) for e in dirty_extents(socket_of(url), "backup-1") if not e["data"]]
    assert dirty == [(16 * MiB, 1 * MiB), (40 * MiB, 2 * MiB)]
    site.rpc.call("NBD.stop_server", server_id=server)


def test_pierd_stops_its_nbd_servers_at_shutdown(tmp_path: Path, test_uri: str) -> None:
    site = start_site(tmp_path, test_uri)
    try:
        img, vol = new(), new()
        site.create(img, vol, size=16 * MiB)
        sockets = [socket_of(site.rpc.call("NBD.start_server", server_id=new(),
                                           config={"sd_id": site.sd, "img_id": img, "vol_id": vol,
                                                   "readonly": True})) for _ in range(2)]
        assert all(nbd_pids(socket) for socket in sockets)
    finally:
        assert site.daemon.stop() == 0
    assert [nbd_pids(socket) for socket in sockets] == [[], []]
    assert not any(Path(socket).exists() for socket in sockets)
