"""Image transfer through a real pierd, its real ovirt-imageio child, real HTTPS and the real qemu-img.

A client here is what an engine's user has: http.client with ssl, trusting the CA that pierd says
signed imageio's certificate (Host.getAgentInfo's `imageio.ca`). Images are made at test time with
qemu-img and qemu-io; what arrives is checked with `qemu-img compare` and checksums.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.integration.clients import HttpRpcClient, JsonRpcError
from tests.integration.conftest import Pierd
from tests.integration.test_volumes import Site, make_domain, new

MiB = 1 << 20
IMAGE_SIZE = 256 * MiB


def start_transfer_site(tmp_path: Path, test_uri: str, *extra: str) -> Site:
    dc, pool, sd, sd2 = tmp_path / "dc", str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    for domain in (sd, sd2):
        make_domain(dc, domain, pool)
    (dc / pool / "mastersd").symlink_to(dc / "mnt" / "_data" / sd)
    daemon = Pierd(tmp_path / "state", test_uri, "--data-center", str(dc), "--imageio-remote", "127.0.0.1:0",
                   "--max-ticket-timeout", "3600", *extra)
    return Site(daemon, HttpRpcClient(daemon.http), dc, pool, sd, sd2)


@pytest.fixture
def site(tmp_path: Path, test_uri: str) -> Iterator[Site]:
    made = start_transfer_site(tmp_path, test_uri)
    yield made
    assert made.daemon.stop() == 0, "".join(made.daemon.log[-30:])


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 256 MiB qcow2 with data in a few places (and holes between)."""
    path = tmp_path_factory.mktemp("images") / "source.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(IMAGE_SIZE)], check=True)
    for pattern, offset, length in ((0xAB, 0, 48 * MiB), (0xCD, 100 * MiB, 30 * MiB), (0x11, 250 * MiB, 6 * MiB)):
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset} {length}", str(path)],
                       check=True, capture_output=True)
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


class Imageio:
    """Where the site's imageio serves, and a plain HTTPS client of it."""

    def __init__(self, site: Site) -> None:
        info = site.rpc.call("Host.getAgentInfo")["imageio"]
        split = urlsplit(info["url"])
        self.host, self.port = split.hostname or "", split.port or 0
        self.context = ssl.create_default_context(cafile=info["ca"])
        self.pid: int = info["pid"]

    def connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=60)

    def request(self, method: str, ticket: str, body: Any = None, headers: dict[str, str] | None = None,
                path: str = "") -> tuple[int, dict[str, str], bytes]:
        connection = self.connect()
        try:
            connection.request(method, f"/images/{ticket}{path}", body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def upload(self, ticket: str, source: Path, offset: int = 0, length: int | None = None) -> int:
        size = source.stat().st_size
        length = size - offset if length is None else length
        with open(source, "rb") as stream:
            stream.seek(offset)
            headers = {"Content-Length": str(length)}
            if offset:
                headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/*"
            status, _, body = self.request("PUT", ticket, _Limited(stream, length), headers)
        assert status == 200, body
        return status

    def download(self, ticket: str, target: Path) -> None:
        connection = self.connect()
        try:
            connection.request("GET", f"/images/{ticket}")
            response = connection.getresponse()
            assert response.status == 200, response.read()
            with open(target, "wb") as out:
                while chunk := response.read(MiB):
                    out.write(chunk)
        finally:
            connection.close()


class _Limited:
    """`length` bytes of a file, read in pieces (http.client sends a file-like body chunk by chunk)."""

    def __init__(self, stream: Any, length: int) -> None:
        self.stream, self.left = stream, length

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        data = self.stream.read(size)
        self.left -= len(data)
        return data


def ticket(site: Site, vol_path: Path, ops: list[str], size: int, timeout: int = 300) -> str:
    made = str(uuid.uuid4())
    site.rpc.call("Host.add_image_ticket", ticket={"uuid": made, "size": size, "url": f"file://{vol_path}",
                                                   "timeout": timeout, "ops": ops})
    return made


def new_volume(site: Site, fmt: str = "COW", size: int = IMAGE_SIZE) -> tuple[str, str, Path]:
    """A fresh volume, and its path through the pool's link (as an engine names it)."""
    img, vol = new(), new()
    site.create(img, vol, size=size, fmt=fmt)
    return img, vol, site.dc / site.pool / site.sd / "images" / img / vol


def compare(a: Path, b: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", "compare", "-U", str(a), str(b)], capture_output=True, text=True)


# -- tickets through imageio --------------------------------------------------------------------


def test_an_image_uploaded_and_downloaded_through_tickets_arrives_whole(site: Site, image: Path,
                                                                         tmp_path: Path) -> None:
    _, vol, path = new_volume(site)
    writer = ticket(site, path, ["write"], image.stat().st_size)
    imageio = Imageio(site)
    imageio.upload(writer, image)
    info = site.rpc.call("Host.get_image_ticket", uuid=writer)
    assert (info["uuid"], info["ops"], info["active"], info["transferred"]) == (
        writer, ["write"], False, image.stat().st_size)
    site.rpc.call("Host.remove_image_ticket", uuid=writer)
    assert compare(image, path).returncode == 0, compare(image, path).stdout

    reader = ticket(site, path, ["read"], path.stat().st_size)
    downloaded = tmp_path / "downloaded.qcow2"
    imageio.download(reader, downloaded)
    assert sha256(downloaded) == sha256(image)
    assert compare(image, downloaded).returncode == 0


def test_an_upload_killed_half_way_resumes_where_imageio_stopped_writing(site: Site, image: Path) -> None:
    _, _, path = new_volume(site)
    size = image.stat().st_size
    writer = ticket(site, path, ["write"], size)
    imageio = Imageio(site)
    raw = socket.create_connection((imageio.host, imageio.port))
    conn = imageio.context.wrap_socket(raw, server_hostname=imageio.host)
    conn.sendall(f"PUT /images/{writer} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode())
    with open(image, "rb") as stream:
        conn.sendall(stream.read(size // 2))
    conn.close()  # killed half-way: imageio keeps what it wrote
    deadline = time.monotonic() + 30
    while (info := site.rpc.call("Host.get_image_ticket", uuid=writer))["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    done = info["transferred"]
    assert 0 < done <= size // 2
    assert compare(image, path).returncode != 0  # not there yet
    imageio.upload(writer, image, offset=done)
    assert compare(image, path).returncode == 0
    assert sha256(path) == sha256(image)


def test_imageio_enforces_what_a_ticket_allows(site: Site, image: Path) -> None:
    _, vol_a, path_a = new_volume(site, fmt="RAW", size=16 * MiB)
    _, vol_b, path_b = new_volume(site, fmt="RAW", size=16 * MiB)
    before_b = sha256(path_b)

    reader = ticket(site, path_a, ["read"], 16 * MiB)
    client = Imageio(site)
    status, _, body = client.request("PUT", reader, b"x" * 4096, {"Content-Length": "4096"})
    assert status == 403 and b"forbids write" in body

    writer = ticket(site, path_a, ["write"], 16 * MiB)
    assert client.request("PUT", writer, b"\x5a" * MiB, {"Content-Length": str(MiB)})[0] == 200
    assert path_a.read_bytes()[:MiB] == b"\x5a" * MiB
    assert sha256(path_b) == before_b  # a ticket for one volume cannot touch another
    assert client.request("PUT", str(uuid.uuid4()), b"x", {"Content-Length": "1"})[0] == 403

    status, headers, _ = client.request("GET", reader, headers={"Range": f"bytes={16 * MiB}-{17 * MiB - 1}"})
    assert status == 416
    status, _, _ = client.request("PUT", writer, b"x" * 4096,
                                  {"Content-Length": "4096", "Content-Range": f"bytes {16 * MiB - 1024}-*/*"})
    assert status == 416
    status, headers, body = client.request("GET", reader, headers={"Range": "bytes=0-1023"})
    assert (status, headers["content-range"], body) == (206, f"bytes 0-1023/{16 * MiB}", b"\x5a" * 1024)

    short = ticket(site, path_a, ["read"], 16 * MiB, timeout=1)
    time.sleep(2.2)
    status, _, body = client.request("GET", short, headers={"Range": "bytes=0-1"})
    assert status == 403 and b"expired" in body
    site.rpc.call("Host.extend_image_ticket", uuid=short, timeout=60)
    assert client.request("GET", short, headers={"Range": "bytes=0-1"})[0] == 206

    site.rpc.call("Host.remove_image_ticket", uuid=writer)
    assert client.request("PUT", writer, b"x", {"Content-Length": "1"})[0] == 403
    site.rpc.call("Host.remove_image_ticket", uuid=writer)  # again: nothing to remove, no error
    with pytest.raises(JsonRpcError) as missing:
        site.rpc.call("Host.get_image_ticket", uuid=writer)
    assert missing.value.code == 482


def test_bad_tickets_are_refused_and_nothing_is_added(site: Site, tmp_path: Path) -> None:
    img, vol, path = new_volume(site, fmt="RAW", size=MiB)
    outside = tmp_path / "outside"
    outside.write_bytes(b"secret")
    (path.parent / "escape").symlink_to(outside)
    cases = {
        f"file://{path.parent / new()}": 201,  # an unknown volume of a real image
        f"file://{site.dc}/{site.pool}/{site.sd}/images/{new()}/{new()}": 201,  # an unknown image
        f"file://{outside}": 1000,  # not a volume at all
        f"file://{path}.meta": 1000,
        f"file://{path.parent / 'escape'}": 1000,  # a symlink out of the domain
        f"file://{path.parent}/../{img}/{vol}/../../../../../../{outside}": 1000,
        f"nbd:unix:/tmp/x.sock:exportname={vol}": 1000,
        f"http://example.com/{vol}": 1000,
    }
    for url, code in cases.items():
        made = str(uuid.uuid4())
        with pytest.raises(JsonRpcError) as refused:
            site.rpc.call("Host.add_image_ticket",
                          ticket={"uuid": made, "size": MiB, "url": url, "timeout": 60, "ops": ["read"]})
        assert refused.value.code == code, (url, refused.value)
        assert "ticket.url" in refused.value.message
    good = {"uuid": str(uuid.uuid4()), "size": MiB, "url": f"file://{path}", "timeout": 60, "ops": ["read"]}
    with pytest.raises(JsonRpcError) as negative:
        site.rpc.call("Host.add_image_ticket", ticket={**good, "size": -1})
    assert negative.value.code == -32602 and "size" in negative.value.message
    with pytest.raises(JsonRpcError) as too_long:
        site.rpc.call("Host.add_image_ticket", ticket={**good, "timeout": 3601})
    assert too_long.value.code == 1000 and "ticket.timeout" in too_long.value.message and "3600" in too_long.value.message
    with pytest.raises(JsonRpcError) as missing:
        site.rpc.call("Host.get_image_ticket", uuid=good["uuid"])
    assert missing.value.code == 482
    site.rpc.call("Host.add_image_ticket", ticket=good)
    with pytest.raises(JsonRpcError) as extend:
        site.rpc.call("Host.extend_image_ticket", uuid=good["uuid"], timeout=3601)
    assert extend.value.code == 1000
    assert site.rpc.call("Host.get_image_ticket", uuid=good["uuid"])["timeout"] == 60


def test_imageio_is_started_on_the_first_ticket_and_stopped_with_pierd(tmp_path: Path, test_uri: str) -> None:
    site = start_transfer_site(tmp_path, test_uri)
    try:
        assert site.rpc.call("Host.getAgentInfo")["imageio"] == {}
        _, _, path = new_volume(site, fmt="RAW", size=MiB)
        ticket(site, path, ["read"], MiB)
        pid = Imageio(site).pid
        os.kill(pid, 0)  # it runs
    finally:
        assert site.daemon.stop() == 0
    assert site.daemon.logged(f"ovirt-imageio (pid {pid}) stopped")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not Path(f"/proc/{pid}").exists()


# -- the REST data route --------------------------------------------------------------------------


def rest(site: Site, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
         token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    split = urlsplit(site.daemon.http)
    connection = http.client.HTTPConnection(split.hostname or "", split.port, timeout=60)
    try:
        sent = {"Authorization": f"Bearer {token or site.daemon.token}", **(headers or {})}
        if method == "PUT":
            sent.setdefault("Content-Length", str(len(body)))
        connection.request(method, "/api/v1" + path, body=body if method == "PUT" else None, headers=sent)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_the_rest_data_route_uploads_in_ranges_resumes_and_downloads(site: Site, tmp_path: Path) -> None:
    from ovirt_imageio import client as imageio_client

    img, vol, path = new_volume(site, fmt="RAW", size=24 * MiB)
    data_path = f"/storage-domains/{site.sd}/images/{img}/volumes/{vol}/data"
    source = tmp_path / "source.raw"
    source.write_bytes(os.urandom(8 * MiB) + bytes(8 * MiB) + os.urandom(8 * MiB))
    data = source.read_bytes()
    chunk = 8 * MiB
    for start in (0, chunk):
        status, _, body = rest(site, "PUT", data_path, data[start:start + chunk],
                               {"Content-Range": f"bytes {start}-{start + chunk - 1}/*"})
        assert status == 200, body
    # the last chunk breaks off half-way: the client closes the connection
    split = urlsplit(site.daemon.http)
    broken = socket.create_connection((split.hostname, split.port))
    broken.sendall((f"PUT /api/v1{data_path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {site.daemon.token}\r\n"
                    f"Content-Range: bytes {2 * chunk}-{3 * chunk - 1}/*\r\nContent-Length: {chunk}\r\n\r\n").encode())
    broken.sendall(data[2 * chunk:2 * chunk + chunk // 2])
    broken.close()
    # resumed: that chunk again, from where its range starts
    status, _, body = rest(site, "PUT", data_path, data[2 * chunk:], {"Content-Range": f"bytes {2 * chunk}-*/*"})
    assert status == 200, body
    assert path.read_bytes() == data

    status, headers, body = rest(site, "GET", data_path)
    assert (status, hashlib.sha256(body).hexdigest()) == (200, hashlib.sha256(data).hexdigest())
    status, headers, body = rest(site, "GET", data_path, headers={"Range": "bytes=1000-1999"})
    assert (status, headers["content-range"], body) == (206, f"bytes 1000-1999/{24 * MiB}", data[1000:2000])
    status, headers, body = rest(site, "GET", data_path + "?checksum=sha256")
    assert status == 200
    assert json.loads(body)["checksum"] == imageio_client.checksum(str(source), algorithm="sha256")["checksum"]

    status, headers, body = rest(site, "GET", data_path, headers={"Range": f"bytes={24 * MiB}-{25 * MiB}"})
    assert status == 416 and headers["content-type"] == "application/problem+json"
    status, _, body = rest(site, "PUT", data_path, b"x" * 10, {"Content-Range": f"bytes {24 * MiB - 5}-*/*"})
    assert status == 416, body
    assert path.read_bytes() == data  # nothing written

    unknown = f"/storage-domains/{site.sd}/images/{img}/volumes/{new()}/data"
    status, _, body = rest(site, "GET", unknown)
    assert status == 404 and json.loads(body)["code"] == 201
    viewer = site.daemon.make_token("viewer")
    assert rest(site, "GET", data_path, token=viewer)[0] == 403
    assert rest(site, "PUT", data_path, b"x", token=viewer)[0] == 403
    with pytest.raises(JsonRpcError) as rpc:
        site.rpc.call("Volume.readData", storagedomainID=site.sd, imageID=img, volumeID=vol)
    assert rpc.value.code == 75 and data_path in rpc.value.message
    # each request's own ticket is gone once it ended
    log = (site.dc.parent / "state" / "imageio" / "daemon.log").read_text()
    assert log.count("ADD transfer") == log.count("REMOVE transfer")


class SlowPut:
    """A PUT to the data route sent by hand over a socket, so a test can stop half-way through its body."""

    def __init__(self, site: Site, path: str, length: int, query: str = "") -> None:
        split = urlsplit(site.daemon.http)
        self.sock = socket.create_connection((split.hostname, split.port), timeout=60)
        self.sock.sendall((f"PUT /api/v1{path}{query} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                           f"{site.daemon.token}\r\nContent-Length: {length}\r\n\r\n").encode())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        response = http.client.HTTPResponse(self.sock)
        response.begin()
        try:
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            self.sock.close()


def wait_for_task(site: Site, task_id: str, until: Any, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            info: dict[str, Any] = site.rpc.call("Task.getInfo", taskID=task_id)
        except JsonRpcError:
            info = {}
        if until(info) or time.monotonic() > deadline:
            return info
        time.sleep(0.05)


def test_a_rest_transfer_is_a_task_another_client_watches_and_stops(site: Site) -> None:
    img, vol, path = new_volume(site, fmt="RAW", size=16 * MiB)
    data_path = f"/storage-domains/{site.sd}/images/{img}/volumes/{vol}/data"
    data = os.urandom(16 * MiB)
    task_id = str(uuid.uuid4())
    upload = SlowPut(site, data_path, len(data), f"?taskID={task_id}")
    upload.send(data[:8 * MiB])
    running = wait_for_task(site, task_id, lambda info: "bytes written" in info.get("message", ""))
    assert (running["state"], running["verb"], running["target"]) == ("running", "Volume.writeData", vol), running
    moved, _, rest_of_message = running["message"].partition(" of ")
    assert 0 < int(moved) <= 8 * MiB and rest_of_message == f"{16 * MiB} bytes written", running
    assert task_id in site.rpc.call("Host.getAllTasks")
    upload.send(data[8 * MiB:])
    status, headers, body = upload.answer()
    assert (status, headers["x-pier-task"]) == (200, task_id), body
    ended = wait_for_task(site, task_id, lambda info: info.get("state") != "running")
    assert (ended["state"], ended["progress"], ended["result"]) == ("succeeded", 100, {"bytes": 16 * MiB}), ended
    assert path.read_bytes() == data

    status, headers, body = rest(site, "GET", data_path, headers={"Range": "bytes=0-1048575"})
    assert status == 206 and body == data[:MiB]
    read = wait_for_task(site, headers["x-pier-task"], lambda info: info.get("state") != "running")
    assert (read["verb"], read["state"], read["result"]) == ("Volume.readData", "succeeded", {"bytes": MiB}), read

    status, _, body = rest(site, "PUT", data_path + f"?taskID={task_id}", data[:MiB])
    assert status == 409 and json.loads(body)["name"] == "JobExists"

    stopped_id = str(uuid.uuid4())
    upload = SlowPut(site, data_path, len(data), f"?taskID={stopped_id}")
    upload.send(data[:8 * MiB])
    wait_for_task(site, stopped_id, lambda info: "bytes written" in info.get("message", ""))
    site.rpc.call("Task.stop", taskID=stopped_id)
    try:
        upload.send(data[8 * MiB:])
        status, headers, body = upload.answer()
        assert status == 409 and json.loads(body)["name"] == "TaskAborted", body
    except OSError:  # pierd may close the connection before the rest of the body is sent
        pass
    stopped = wait_for_task(site, stopped_id, lambda info: info.get("state") != "running")
    assert stopped["state"] == "cancelled", stopped


def test_an_upload_of_the_wrong_format_is_refused_and_leaves_the_volume_illegal(site: Site, tmp_path: Path) -> None:
    qcow2, backed = tmp_path / "small.qcow2", tmp_path / "backed.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), str(4 * MiB)], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(qcow2), "-F", "qcow2", str(backed)],
                   check=True)
    for fmt, body, said in (("RAW", qcow2.read_bytes(), "qcow2 header"),
                            ("COW", os.urandom(MiB), "do not start with a qcow2 header"),
                            ("COW", backed.read_bytes(), "backing file")):
        img, vol, _ = new_volume(site, fmt=fmt, size=4 * MiB)
        data_path = f"/storage-domains/{site.sd}/images/{img}/volumes/{vol}/data"
        status, headers, answer = rest(site, "PUT", data_path, body)
        problem = json.loads(answer)
        assert (status, headers["content-type"], problem["name"]) == (
            422, "application/problem+json", "ImageVerificationError"), answer
        assert said in problem["detail"] and "ILLEGAL" in problem["detail"], problem
        info = site.rpc.call("Volume.getInfo", storagepoolID=site.pool, storagedomainID=site.sd, imageID=img,
                             volumeID=vol)
        assert info["legality"] == "ILLEGAL", (fmt, said)
        task = site.rpc.call("Task.getInfo", taskID=headers["x-pier-task"])
        assert task["state"] == "failed" and task["error"]["code"] == 484, task
    img, vol, _ = new_volume(site, fmt="COW", size=4 * MiB)
    status, _, answer = rest(site, "PUT", f"/storage-domains/{site.sd}/images/{img}/volumes/{vol}/data",
                             qcow2.read_bytes())
    assert status == 200, answer
    info = site.rpc.call("Volume.getInfo", storagepoolID=site.pool, storagedomainID=site.sd, imageID=img, volumeID=vol)
    assert info["legality"] == "LEGAL"


# -- pier upload / download ------------------------------------------------------------------------


class CuttingProxy:
    """A TCP proxy to pierd that breaks the first connection carrying more than `cut` bytes upstream
    (a real broken connection, half-way through a request), and relays every other one whole."""

    def __init__(self, upstream: tuple[str, int], cut: int) -> None:
        self.upstream, self.cut, self.cuts = upstream, cut, 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = self.server.getsockname()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, counting: bool) -> None:
        sent = 0
        try:
            while data := source.recv(1 << 20):
                sent += len(data)
                if counting and sent > self.cut and self.cuts == 0:
                    self.cuts += 1
                    break
                target.sendall(data)
        except OSError:
            pass
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.server.close()


def test_pier_upload_resumes_after_a_broken_connection_and_download_gets_it_back(
        site: Site, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pier import cli

    split = urlsplit(site.daemon.http)
    proxy = CuttingProxy((split.hostname or "", split.port or 0), cut=8 * MiB)
    try:
        base = ["--url", f"http://127.0.0.1:{proxy.address[1]}", "--token", site.daemon.token, "--domain", site.sd]
        capsys.readouterr()
        assert cli.main(["upload", str(image), *base, "--pool", site.pool, "--chunk", "16M", "--json"]) == 0
        done = json.loads(capsys.readouterr().out)
        assert proxy.cuts == 1 and done["retries"] == 1 and done["bytes"] == image.stat().st_size
        img, vol = done["imageID"], done["volumeID"]
        info = site.rpc.call("Volume.getInfo", volumeID=vol, storagepoolID=site.pool, storagedomainID=site.sd,
                             imageID=img)
        assert (info["format"], info["capacity"]) == ("COW", str(IMAGE_SIZE))
        path = site.domain_dir(site.sd) / "images" / img / vol
        assert compare(image, path).returncode == 0

        target = tmp_path / "back.qcow2"
        assert cli.main(["download", str(target), *base, "--image", img, "--volume", vol, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["bytes"] == path.stat().st_size
        assert sha256(target) == sha256(path) and compare(image, target).returncode == 0
        assert cli.main(["download", str(tmp_path / "none"), *base, "--image", img, "--volume", new()]) != 0
        assert not (tmp_path / "none").exists()
    finally:
        proxy.close()
