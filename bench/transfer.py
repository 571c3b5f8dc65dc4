"""Image transfer through pierd beside qemu-img alone, on a directory domain of a throwaway data center.

  upload of 1 GiB (raw, random data)       through an image ticket (HTTPS to ovirt-imageio, as an
                                            engine's client does), and through pierd's REST data
                                            route (64 MiB PUTs with Content-Range, as `pier upload`)
  download of the same 1 GiB               both ways again
      each beside `qemu-img convert -t none -T none` of the same file to another local file
      (target: >= 0.7x the floor's throughput)
  add_image_ticket to the first byte       Host.add_image_ticket over JSON-RPC, then a new HTTPS
                                            connection reading byte 0; the first ticket (which
                                            starts ovirt-imageio) and warm ones

Each figure beside its floor, in one run. The data center is deleted at the end.

Run: .venv/bin/python bench/transfer.py [--rounds N]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import shutil
import ssl
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from common import PierdProcess
from storage_volumes import BLANK, GiB, Rpc, make_domain

MiB = 1 << 20
BLOCK = 4 * MiB
CHUNK = 64 * MiB


def floor_copy(source: Path, target: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["qemu-img", "convert", "-t", "none", "-T", "none", "-f", "raw", "-O", "raw", str(source),
                    str(target)], check=True, capture_output=True)
    seconds = time.perf_counter() - started
    target.unlink()
    return seconds


class Site:
    def __init__(self, rpc: Rpc, daemon: PierdProcess, sd: str, domain: Path) -> None:
        self.rpc, self.daemon, self.sd, self.domain = rpc, daemon, sd, domain

    def volume(self, size: int) -> tuple[str, str, Path]:
        img, vol = str(uuid.uuid4()), str(uuid.uuid4())
        self.rpc.task("Volume.create", volumeID=vol, storagepoolID=BLANK, storagedomainID=self.sd, imageID=img,
                      size=str(size), volFormat="RAW", preallocate="SPARSE", diskType="DATA", desc="",
                      srcImgUUID=BLANK, srcVolUUID=BLANK)
        return img, vol, self.domain / "images" / img / vol

    def ticket(self, path: Path, ops: list[str], size: int) -> str:
        made = str(uuid.uuid4())
        self.rpc.call("Host.add_image_ticket", ticket={"uuid": made, "size": size, "url": f"file://{path}",
                                                       "timeout": 600, "ops": ops})
        return made

    def imageio(self) -> tuple[str, int, ssl.SSLContext]:
        info = self.rpc.call("Host.getAgentInfo")["imageio"]
        split = urlsplit(info["url"])
        return split.hostname or "", split.port or 0, ssl.create_default_context(cafile=info["ca"])


def put_file(connection: http.client.HTTPConnection, path: str, source: Path, offset: int, length: int,
             headers: dict[str, str]) -> None:
    connection.putrequest("PUT", path)
    for name, value in {**headers, "Content-Length": str(length),
                        "Content-Range": f"bytes {offset}-{offset + length - 1}/*"}.items():
        connection.putheader(name, value)
    connection.endheaders()
    with open(source, "rb") as stream:
        stream.seek(offset)
        left = length
        while left:
            piece = stream.read(min(BLOCK, left))
            connection.send(piece)
            left -= len(piece)
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"PUT {path}: {response.status} {body[:200]!r}")


def get_file(connection: http.client.HTTPConnection, path: str, target: Path, headers: dict[str, str]) -> None:
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status} {response.read()[:200]!r}")
    with open(target, "wb") as out:
        while piece := response.read(BLOCK):
            out.write(piece)
        os.fsync(out.fileno())


def timed(action: object) -> float:
    started = time.perf_counter()
    action()  # type: ignore[operator]
    return time.perf_counter() - started


def line(name: str, seconds: list[float], floor: list[float], size: int = GiB) -> None:
    subject, base = statistics.median(seconds), statistics.median(floor)
    rate, floor_rate = size / subject / MiB, size / base / MiB
    print(f"{name:<40} {rate:7.0f} MiB/s ({subject:6.2f} s)   floor qemu-img convert {floor_rate:7.0f} MiB/s "
          f"({base:6.2f} s)   ratio {rate / floor_rate:4.2f}x   (target >= 0.7x)", flush=True)


def bench_throughput(site: Site, scratch: Path, rounds: int) -> None:
    source = scratch / "source.raw"
    with open(source, "wb") as out:
        for _ in range(GiB // MiB):
            out.write(os.urandom(MiB))
        os.fsync(out.fileno())
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    floors: list[float] = []
    figures: dict[str, list[float]] = {k: [] for k in ("ticket up", "ticket down", "rest up", "rest down")}
    for _ in range(rounds):
        floors.append(floor_copy(source, scratch / "floor.raw"))
        one_round(site, source, scratch, figures)
        assert hashlib.sha256((scratch / "down.raw").read_bytes()).hexdigest() == digest
        for image_dir in list((site.domain / "images").iterdir()):
            shutil.rmtree(image_dir)
    line("upload 1 GiB via ticket (HTTPS, imageio)", figures["ticket up"], floors)
    line("download 1 GiB via ticket (HTTPS, imageio)", figures["ticket down"], floors)
    line("upload 1 GiB via REST data route (HTTP)", figures["rest up"], floors)
    line("download 1 GiB via REST data route (HTTP)", figures["rest down"], floors)


def one_round(site: Site, source: Path, scratch: Path, figures: dict[str, list[float]]) -> None:
    """Up and down through a ticket, then up and down through the REST data route."""
    _, _, path = site.volume(GiB)
    writer = site.ticket(path, ["write"], GiB)
    host, port, context = site.imageio()
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=600, blocksize=BLOCK)
    figures["ticket up"].append(timed(lambda: put_file(connection, f"/images/{writer}", source, 0, GiB, {})))
    reader = site.ticket(path, ["read"], GiB)
    figures["ticket down"].append(timed(lambda: get_file(connection, f"/images/{reader}", scratch / "down.raw", {})))
    connection.close()
    digest = hashlib.sha256((scratch / "down.raw").read_bytes()).hexdigest()
    assert digest == hashlib.sha256(source.read_bytes()).hexdigest()

    img, vol, _ = site.volume(GiB)
    data = f"/api/v1/storage-domains/{site.sd}/images/{img}/volumes/{vol}/data"
    rest = urlsplit(site.daemon.http)
    auth = {"Authorization": f"Bearer {site.daemon.token}"}
    plain = http.client.HTTPConnection(rest.hostname or "", rest.port, timeout=600, blocksize=BLOCK)

    def rest_upload() -> None:
        for offset in range(0, GiB, CHUNK):
            put_file(plain, data, source, offset, CHUNK, auth)

    figures["rest up"].append(timed(rest_upload))
    figures["rest down"].append(timed(lambda: get_file(plain, data, scratch / "down.raw", auth)))
    plain.close()


def first_byte(site: Site, path: Path) -> float:
    started = time.perf_counter()
    reader = site.ticket(path, ["read"], MiB)
    host, port, context = site.imageio()
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=60)
    connection.request("GET", f"/images/{reader}", headers={"Range": "bytes=0-0"})
    response = connection.getresponse()
    assert response.status == 206 and len(response.read()) == 1
    seconds = time.perf_counter() - started
    connection.close()
    site.rpc.call("Host.remove_image_ticket", uuid=reader)
    return seconds


def bench_first_byte(site: Site, rounds: int) -> None:
    _, _, path = site.volume(MiB)
    cold = first_byte(site, path)
    warm = [first_byte(site, path) for _ in range(rounds)]
    print(f"{'add_image_ticket -> first byte, first':<40} {cold * 1e3:7.1f} ms (starts ovirt-imageio)", flush=True)
    print(f"{'add_image_ticket -> first byte, warm':<40} p50 {statistics.median(warm) * 1e3:7.1f} ms  "
          f"max {max(warm) * 1e3:7.1f} ms  ({rounds} tickets, each a new TLS connection)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    root = Path(tempfile.mkdtemp(prefix="pier-bench-transfer-", dir="/var/tmp"))
    dc, scratch = root / "dc", root / "scratch"
    scratch.mkdir()
    sd = str(uuid.uuid4())
    domain = make_domain(dc, sd)
    daemon = PierdProcess(None, None, "--data-center", str(dc), "--imageio-remote", "127.0.0.1:0")
    try:
        site = Site(Rpc(daemon), daemon, sd, domain)
        bench_first_byte(site, rounds * 10)
        bench_throughput(site, scratch, rounds)
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
