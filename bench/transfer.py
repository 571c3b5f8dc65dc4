"""Image transfer through pierd beside qemu-img alone, on a directory domain of a throwaway data center.

  upload of 1 GiB (raw, random data)       through an image ticket with ovirt_imageio.client.upload
                                            (the engine SDK's path: qemu-nbd reading the file, several
                                            HTTPS connections), and through pierd's REST data route
                                            with `pier upload`'s own code (256 MiB PUTs with Content-Range)
  download of the same 1 GiB               ovirt_imageio.client.download (qemu-nbd writing with
                                            cache=none), and `pier download`'s own code (the file is
                                            fsynced before it is renamed into place)
      each beside `qemu-img convert -t none -T none` of the same file to another local file
      (target: >= 0.7x the floor's throughput)
  the same through one plain HTTPS (ticket) or HTTP (REST) stream of http.client, writing a download
      through the page cache and fsyncing it: what a hand-written client gets (no target)
  add_image_ticket to the first byte       Host.add_image_ticket over JSON-RPC, then a new HTTPS
                                            connection reading byte 0; the first ticket (which
                                            starts ovirt-imageio) and warm ones

Each figure beside its floor, in one run. The data center is deleted at the end.

Run: .venv/bin/python bench/transfer.py [--rounds N]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import io
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
from ovirt_imageio import client as imageio_client
from storage_volumes import BLANK, GiB, Rpc, make_domain

from pier import cli, cli_transfer

MiB = 1 << 20
BLOCK = 4 * MiB
CHUNK = cli_transfer.CHUNK  # as `pier upload` sends


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


def line(name: str, seconds: list[float], floor: list[float], size: int = GiB, target: bool = True) -> None:
    subject, base = statistics.median(seconds), statistics.median(floor)
    rate, floor_rate = size / subject / MiB, size / base / MiB
    print(f"{name:<52} {rate:7.0f} MiB/s ({subject:6.2f} s)   floor qemu-img convert {floor_rate:7.0f} MiB/s "
          f"({base:6.2f} s)   ratio {rate / floor_rate:4.2f}x" + ("   (target >= 0.7x)" if target else ""), flush=True)


FIGURES = (  # (key, label, held to the target)
    ("sdk up", "upload 1 GiB via ticket (ovirt_imageio.client)", True),
    ("sdk down", "download 1 GiB via ticket (ovirt_imageio.client)", True),
    ("cli up", "upload 1 GiB via REST data route (pier upload)", True),
    ("cli down", "download 1 GiB via REST data route (pier download)", True),
    ("ticket up", "upload 1 GiB via ticket, one http.client stream", False),
    ("ticket down", "download 1 GiB via ticket, one http.client stream", False),
    ("rest up", "upload 1 GiB via REST, one http.client stream", False),
    ("rest down", "download 1 GiB via REST, one http.client stream", False),
)


def bench_throughput(site: Site, scratch: Path, rounds: int) -> None:
    source = scratch / "source.raw"
    with open(source, "wb") as out:
        for _ in range(GiB // MiB):
            out.write(os.urandom(MiB))
        os.fsync(out.fileno())
    digest = sha256(source)
    floors: list[float] = []
    figures: dict[str, list[float]] = {key: [] for key, _, _ in FIGURES}
    for _ in range(rounds):
        floors.append(floor_copy(source, scratch / "floor.raw"))
        users_round(site, source, scratch, figures, digest)
        plain_round(site, source, scratch, figures, digest)
    for key, label, target in FIGURES:
        line(label, figures[key], floors, target=target)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while piece := stream.read(BLOCK):
            digest.update(piece)
    return digest.hexdigest()


def arrived(target: Path, digest: str) -> None:
    assert sha256(target) == digest, f"{target} is not what was uploaded"
    target.unlink()


def users_round(site: Site, source: Path, scratch: Path, figures: dict[str, list[float]], digest: str) -> None:
    """Up and down through a ticket with the engine SDK's client, then through REST with pier's CLI."""
    _, _, path = site.volume(GiB)
    host, port, _ = site.imageio()
    ca = site.rpc.call("Host.getAgentInfo")["imageio"]["ca"]
    writer = site.ticket(path, ["write"], GiB)
    figures["sdk up"].append(timed(lambda: imageio_client.upload(str(source), f"https://{host}:{port}/images/{writer}",
                                                                 ca)))
    reader = site.ticket(path, ["read"], GiB)
    target = scratch / "down.raw"
    figures["sdk down"].append(timed(lambda: imageio_client.download(f"https://{host}:{port}/images/{reader}",
                                                                     str(target), ca, fmt="raw")))
    arrived(target, digest)

    img, vol, _ = site.volume(GiB)
    client = cli.PierClient(site.daemon.http, 600.0, token=site.daemon.token)
    where = {"domain": site.sd, "retries": 0, "json": True, "image": img, "volume": vol}
    upload = argparse.Namespace(file=str(source), pool=BLANK, description="", chunk=cli_transfer.CHUNK, **where)
    download = argparse.Namespace(file=str(target), **where)
    with contextlib.redirect_stdout(io.StringIO()):
        figures["cli up"].append(timed(lambda: cli_transfer.cmd_upload(client, upload) == cli.EXIT_OK or _failed()))
        figures["cli down"].append(timed(lambda: cli_transfer.cmd_download(client, download) == cli.EXIT_OK
                                         or _failed()))
    arrived(target, digest)
    remove_images(site)


def _failed() -> None:
    raise RuntimeError("pier upload/download failed (its error is above)")


def remove_images(site: Site) -> None:
    for image_dir in list((site.domain / "images").iterdir()):
        shutil.rmtree(image_dir)


def plain_round(site: Site, source: Path, scratch: Path, figures: dict[str, list[float]], digest: str) -> None:
    """Up and down through a ticket, then through the REST data route, with one http.client stream."""
    _, _, path = site.volume(GiB)
    writer = site.ticket(path, ["write"], GiB)
    host, port, context = site.imageio()
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=600, blocksize=BLOCK)
    figures["ticket up"].append(timed(lambda: put_file(connection, f"/images/{writer}", source, 0, GiB, {})))
    reader = site.ticket(path, ["read"], GiB)
    figures["ticket down"].append(timed(lambda: get_file(connection, f"/images/{reader}", scratch / "down.raw", {})))
    connection.close()
    arrived(scratch / "down.raw", digest)

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
    arrived(scratch / "down.raw", digest)
    remove_images(site)


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
