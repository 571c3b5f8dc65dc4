"""Image.upload and Image.download through a real pierd, real files, the real qemu-img, and a real HTTP
server on loopback (http.server in a thread, written here) that takes PUTs and serves GETs.

What arrived is compared with sha256 and `qemu-img compare`; a 404, a stream cut short and a
Task.stop in the middle end the task as a user sees it (its state and message, the volume's legality).
"""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.clients import JsonRpcError
from tests.integration.test_volumes import Site, fill, new, start_site

MiB = 1 << 20
THROTTLE = 256 * 1024  # bytes the slow routes move per pause


class Peer(http.server.ThreadingHTTPServer):
    """What an image store does, in its simplest form: PUT /store/<name> keeps the body (its length and
    sha256, and the bytes in `directory`); GET /files/<name> serves a file; /slow/... does either at
    ~5 MiB/s; GET /short/<name> promises the whole file and closes after half; anything else is 404."""

    daemon_threads = True

    def __init__(self, directory: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.directory = directory
        self.files: dict[str, Path] = {}
        self.received: dict[str, tuple[int, str]] = {}  # name: (bytes, sha256) of each PUT body that ended
        self.headers_seen: list[dict[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Peer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_PUT(self) -> None:
        self.server.headers_seen.append(dict(self.headers.items()))
        route, _, name = self.path.lstrip("/").partition("/")
        if route not in ("store", "slow"):
            self.send_error(404, "no such collection")
            return
        left = int(self.headers["Content-Length"])
        digest, done = hashlib.sha256(), 0
        with open(self.server.directory / name, "wb") as out:
            while left:
                chunk = self.rfile.read(min(THROTTLE, left))
                if not chunk:
                    self.server.received[name] = (done, "cut short")
                    return
                digest.update(chunk)
                out.write(chunk)
                done += len(chunk)
                left -= len(chunk)
                if route == "slow":
                    time.sleep(0.05)
        self.server.received[name] = (done, digest.hexdigest())
        self.server.files[name] = self.server.directory / name
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.server.headers_seen.append(dict(self.headers.items()))
        route, _, name = self.path.lstrip("/").partition("/")
        path = self.server.files.get(name)
        if route not in ("files", "slow", "short") or path is None:
            self.send_error(404, "no such image")
            return
        size = path.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        with open(path, "rb") as source:
            sent = 0
            while sent < (size // 2 if route == "short" else size):
                chunk = source.read(THROTTLE)
                try:
                    self.wfile.write(chunk)
                except OSError:
                    return  # the client went away (a cancelled download)
                sent += len(chunk)
                if route == "slow":
                    time.sleep(0.05)
        self.close_connection = True


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    (tmp_path / "peer").mkdir()
    server = Peer(tmp_path / "peer")
    thread = threading.Thread(target=server.serve_forever, name="test-http-peer", daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def site(tmp_path: Path, test_uri: str) -> Iterator[Site]:
    made = start_site(tmp_path, test_uri)
    yield made
    assert made.daemon.stop() == 0, "".join(made.daemon.log[-30:])


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def volume_file(site: Site, img: str, vol: str) -> Path:
    return site.domain_dir(site.sd) / "images" / img / vol


def ids(site: Site, img: str) -> dict[str, Any]:
    return dict(storagepoolID=site.pool, storagedomainID=site.sd, imageID=img)


def http_args(url: str, **headers: str) -> dict[str, Any]:
    return {"method": "http", "url": url, "headers": headers}


def legality(site: Site, img: str, vol: str) -> str:
    return str(site.rpc.call("Volume.getInfo", volumeID=vol, **ids(site, img))["legality"])


def qemu_img_compare(a: Path, a_format: str, b: Path, b_format: str) -> None:
    done = subprocess.run(["qemu-img", "compare", "-f", a_format, "-F", b_format, str(a), str(b)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_raw_volume_uploaded_then_downloaded_into_another_arrives_whole(site: Site, peer: Peer) -> None:
    img, vol, img2, vol2 = new(), new(), new(), new()
    site.create(img, vol, size=32 * MiB, fmt="RAW")
    source = volume_file(site, img, vol)
    fill(source, 32 * MiB)

    ended = site.done("Image.upload", methodArgs=http_args(f"{peer.url}/store/disk?sig=abc", Authorization="Bearer x"),
                      **ids(site, img))  # no volumeID: the image's leaf
    assert peer.received["disk?sig=abc"] == (32 * MiB, sha256(source)), ended
    assert peer.headers_seen[-1]["Authorization"] == "Bearer x"

    site.create(img2, vol2, size=48 * MiB, fmt="RAW", prealloc="PREALLOCATED")
    site.done("Image.download", methodArgs=http_args(f"{peer.url}/files/disk?sig=abc"), volumeID=vol2,
              **ids(site, img2))
    target = volume_file(site, img2, vol2)
    assert target.stat().st_size == 48 * MiB  # the volume keeps its capacity; past the image it reads zeros
    assert legality(site, img2, vol2) == "LEGAL"
    qemu_img_compare(source, "raw", target, "raw")
    with open(target, "rb") as written:
        assert hashlib.sha256(written.read(32 * MiB)).hexdigest() == sha256(source)


def test_a_qcow2_image_downloaded_into_a_cow_volume_is_checked_and_grown_to_its_capacity(
        site: Site, peer: Peer, tmp_path: Path) -> None:
    image = tmp_path / "peer" / "image.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), str(16 * MiB)], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0xAB 0 {4 * MiB}", "-c",
                    f"write -P 0xCD {12 * MiB} {MiB}", str(image)], check=True, capture_output=True)
    peer.files["image.qcow2"] = image
    img, vol = new(), new()
    site.create(img, vol, size=64 * MiB, fmt="COW")

    site.done("Image.download", methodArgs=http_args(f"{peer.url}/files/image.qcow2"), **ids(site, img))
    target = volume_file(site, img, vol)
    assert legality(site, img, vol) == "LEGAL"
    assert site.rpc.call("Volume.getQemuImageInfo", volumeID=vol, **ids(site, img))["virtualsize"] == 64 * MiB
    qemu_img_compare(image, "qcow2", target, "qcow2")

    site.done("Image.upload", methodArgs=http_args(f"{peer.url}/store/back.qcow2"), volumeID=vol, **ids(site, img))
    assert peer.received["back.qcow2"] == (target.stat().st_size, sha256(target))


def test_a_qcow2_with_a_backing_file_is_not_taken(site: Site, peer: Peer, tmp_path: Path) -> None:
    image = tmp_path / "peer" / "layer.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", str(image),
                    str(MiB)], check=True)
    peer.files["layer.qcow2"] = image
    img, vol = new(), new()
    site.create(img, vol, size=MiB, fmt="COW")
    ended = site.wait(site.rpc.call("Image.download", methodArgs=http_args(f"{peer.url}/files/layer.qcow2"),
                                    **ids(site, img)))
    assert ended["state"] == "failed" and "backing file" in ended["error"]["message"], ended
    assert legality(site, img, vol) == "ILLEGAL"


def test_a_url_answering_404_fails_the_task_saying_so(site: Site, peer: Peer) -> None:
    img, vol = new(), new()
    site.create(img, vol, size=MiB, fmt="RAW")
    for verb, route in (("Image.download", "files"), ("Image.upload", "nowhere")):
        ended = site.wait(site.rpc.call(verb, methodArgs=http_args(f"{peer.url}/{route}/absent?token=s3cret"),
                                        **ids(site, img)))
        assert ended["state"] == "failed", ended
        message = ended["error"]["message"]
        assert "404" in message and f"{peer.url}/{route}/absent" in message and "s3cret" not in message, ended
    assert legality(site, img, vol) == "LEGAL"  # nothing was written: the volume is as it was


def test_a_stream_cut_short_or_too_long_fails_and_leaves_what_it_wrote_illegal(site: Site, peer: Peer,
                                                                              tmp_path: Path) -> None:
    data = tmp_path / "peer" / "data"
    data.write_bytes(os.urandom(4 * MiB))
    peer.files["data"] = data
    img, vol = new(), new()
    site.create(img, vol, size=4 * MiB, fmt="RAW")
    ended = site.wait(site.rpc.call("Image.download", methodArgs=http_args(f"{peer.url}/short/data"),
                                    **ids(site, img)))
    assert ended["state"] == "failed" and f"ended after {2 * MiB} of {4 * MiB} bytes" in ended["error"]["message"]
    assert legality(site, img, vol) == "ILLEGAL"

    small_img, small = new(), new()
    site.create(small_img, small, size=MiB, fmt="RAW")
    ended = site.wait(site.rpc.call("Image.download", methodArgs=http_args(f"{peer.url}/files/data"),
                                    **ids(site, small_img)))
    assert ended["state"] == "failed" and ended["error"]["code"] == 79, ended
    assert legality(site, small_img, small) == "LEGAL"  # refused before its first byte


def running(site: Site, task: dict[str, Any], word: str) -> None:
    """Wait until the task reports bytes moved."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = site.rpc.call("Task.getInfo", taskID=task["taskID"])
        assert info["state"] in ("pending", "running"), info
        if word in (info.get("message") or ""):
            return
        time.sleep(0.05)
    raise AssertionError(f"the task never reported {word}: {info}")


def test_task_stop_ends_a_transfer_midway(site: Site, peer: Peer, tmp_path: Path) -> None:
    img, vol = new(), new()
    site.create(img, vol, size=64 * MiB, fmt="RAW")  # ~13 s each way at the slow routes' pace
    fill(volume_file(site, img, vol), 64 * MiB)

    task = site.rpc.call("Image.upload", methodArgs=http_args(f"{peer.url}/slow/up"), **ids(site, img))
    running(site, task, "uploaded")
    site.rpc.call("Task.stop", taskID=task["taskID"])
    assert site.wait(task)["state"] == "cancelled"
    deadline = time.monotonic() + 10
    while "up" not in peer.received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert peer.received["up"][1] == "cut short" and peer.received["up"][0] < 64 * MiB

    peer.files["big"] = volume_file(site, img, vol)
    img2, vol2 = new(), new()
    site.create(img2, vol2, size=64 * MiB, fmt="RAW")
    task = site.rpc.call("Image.download", methodArgs=http_args(f"{peer.url}/slow/big"), **ids(site, img2))
    running(site, task, "downloaded")
    site.rpc.call("Task.stop", taskID=task["taskID"])
    ended = site.wait(task)
    assert ended["state"] == "cancelled", ended
    assert legality(site, img2, vol2) == "ILLEGAL"


def test_what_cannot_be_shared_is_refused_at_the_call(site: Site, peer: Peer) -> None:
    img, base, top = new(), new(), new()
    site.create(img, base, size=MiB)
    site.create(img, top, size=MiB, parent=base)
    url = http_args(f"{peer.url}/store/x")
    tasks = site.rpc.call("Host.getAllTasks")

    def refused(verb: str, **params: Any) -> JsonRpcError:
        with pytest.raises(JsonRpcError) as caught:
            site.rpc.call(verb, **params)
        return caught.value

    for verb in ("Image.upload", "Image.download"):
        assert refused(verb, methodArgs=url, **{**ids(site, img), "storagedomainID": new()}).code == 358
        assert refused(verb, methodArgs=url, **{**ids(site, img), "storagepoolID": new()}).code == 309
        assert refused(verb, methodArgs=url, **ids(site, new())).code == 268
        assert refused(verb, methodArgs=url, volumeID=new(), **ids(site, img)).code == 201
        error = refused(verb, methodArgs=url, **ids(site, img))  # the leaf has a parent
        assert error.code == 261 and base in error.message
        error = refused(verb, methodArgs={**url, "method": "nfs"}, volumeID=base, **ids(site, img))
        assert "methodArgs.method" in error.message
    assert site.rpc.call("Host.getAllTasks") == tasks
    assert peer.headers_seen == []


def test_the_headers_of_method_args_reach_the_peer_and_are_stored_nowhere(site: Site, peer: Peer) -> None:
    img, vol, img2, vol2 = new(), new(), new(), new()
    site.create(img, vol, size=MiB, fmt="RAW")
    fill(volume_file(site, img, vol), MiB)
    secret = "s3cret-" + new()
    site.done("Image.upload", methodArgs=http_args(f"{peer.url}/store/tokened", Authorization=f"Bearer {secret}"),
              **ids(site, img))
    assert peer.headers_seen[-1]["Authorization"] == f"Bearer {secret}"
    site.create(img2, vol2, size=MiB, fmt="RAW")
    site.done("Image.download", methodArgs=http_args(f"{peer.url}/files/tokened", **{"X-Auth-Token": secret}),
              volumeID=vol2, **ids(site, img2))
    assert peer.headers_seen[-1]["X-Auth-Token"] == secret
    assert sha256(volume_file(site, img2, vol2)) == sha256(volume_file(site, img, vol))
    kept = [path for path in site.daemon.state_dir.rglob("*") if path.is_file()]
    assert kept, "pierd's state directory is empty"
    holding = [str(path) for path in kept if secret.encode() in path.read_bytes()]
    assert holding == [], "the secret header is stored in " + ", ".join(holding)
    assert not any(secret in line for line in site.daemon.log)
    audit = site.rpc.call("Host.getAuditLog", limit=1000, newest=True)
    assert secret not in str(audit)
