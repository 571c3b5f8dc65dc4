"""VDSM's image sharing over HTTP (Image.upload, Image.download): one volume's bytes sent to a URL.

`ImageSharing` is pier.host.services.ImageSharingService. Upload PUTs the volume's file (the raw
data, or the qcow2 image itself) to `methodArgs.url`; download GETs the URL and writes what comes
into the volume's file, as VDSM's curl-and-dd did. Only an image of one volume is shared (VDSM's
rule: a volume with a parent would need its chain), the image's leaf when no volume is named.

The bytes are streamed in 1 MiB chunks through the standard library's http.client, never held
whole; a transfer stops between chunks when its task is cancelled. A download marks the volume
ILLEGAL before its first byte is written and LEGAL once all of it is there and checked: a failed or
interrupted download leaves it ILLEGAL (nothing is restored; the engine deletes or retries). A
stream longer than a raw volume's capacity, or shorter than its own Content-Length, fails the task;
a downloaded qcow2 must be one qemu-img reads, with neither a backing file nor an external data
file, and no larger than the volume's capacity (a smaller one is grown to it).
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pier.host.storage import qemuimg
from pier.host.storage.qemuimg import QemuImgError
from pier.host.storage.volume_md import BLANK_UUID
from pier.host.storage.volumes import Volume, Volumes
from pier.rpc.errors import (
    CopyImageError,
    DestinationVolumeTooSmall,
    ImageDoesNotExistInSD,
    ImageSharingRefused,
    ImageVerificationError,
    InvalidParameterException,
    TaskCancelled,
)

log = logging.getLogger("pier.sharing")

Progress = Callable[[int, str], None]
CHUNK = 1 << 20  # bytes read and written at a time (VDSM's dd used 2 MiB, its socket reads 64 KiB)
TIMEOUT = 60.0  # seconds a connect, or one read or write of the peer, may take
REPORT_EVERY = 0.5  # seconds between progress reports (each is a task record written)
_RESERVED_HEADERS = frozenset({"content-length", "transfer-encoding"})  # the transfer's own framing
_TOKEN = re.compile(r"[0-9A-Za-z!#%&'*+.^_`|~-]+")  # an HTTP token (RFC 9110) less '$', as the schema says


@dataclass(frozen=True)
class Remote:
    """Where methodArgs point: a parsed http(s) URL and the headers to send."""

    scheme: str
    host: str
    port: int | None
    target: str  # path and query, as the request line carries them
    headers: dict[str, str]

    @property
    def shown(self) -> str:
        """The URL without its query (which may carry a signature or token), for messages and logs."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port else ""
        return f"{self.scheme}://{host}{port}{self.target.split('?', 1)[0]}"

    def connect(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=TIMEOUT,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)


def remote(method_args: dict[str, Any]) -> Remote:
    """methodArgs checked: method 'http', an http:// or https:// URL with a host and no credentials,
    headers that are HTTP tokens with values on one line; InvalidParameterException naming the field."""
    method = method_args.get("method")
    if method != "http":
        raise InvalidParameterException(f"methodArgs.method: {method!r} is not a sharing method this host has; "
                                        "only 'http' (VDSM's only one)", data={"field": "methodArgs.method"})
    url = str(method_args.get("url") or "")
    field = {"field": "methodArgs.url"}
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidParameterException(f"methodArgs.url: {exc}", data=field) from None
    if parts.scheme not in ("http", "https"):
        raise InvalidParameterException(f"methodArgs.url: {parts.scheme or 'no'} scheme; only http:// and https://",
                                        data=field)
    if not parts.hostname:
        raise InvalidParameterException("methodArgs.url: names no host", data=field)
    if parts.username is not None or parts.password is not None:
        raise InvalidParameterException("methodArgs.url: credentials in the URL are not sent; put them in "
                                        "methodArgs.headers (Authorization)", data=field)
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise InvalidParameterException("methodArgs.url: has white space or control characters", data=field)
    headers: dict[str, str] = {}
    for name, value in (method_args.get("headers") or {}).items():
        where = {"field": f"methodArgs.headers.{name}"}
        if not _TOKEN.fullmatch(name):
            raise InvalidParameterException(f"methodArgs.headers: {name!r} is not an HTTP header name", data=where)
        if name.lower() in _RESERVED_HEADERS:
            raise InvalidParameterException(f"methodArgs.headers.{name}: set by the transfer itself", data=where)
        if "\r" in str(value) or "\n" in str(value):
            raise InvalidParameterException(f"methodArgs.headers.{name}: a value must be one line", data=where)
        headers[name] = str(value)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Remote(parts.scheme, parts.hostname, port, target, headers)


class _Meter:
    """Progress in bytes, reported as a percent of `total` (when known) at most every REPORT_EVERY s."""

    def __init__(self, progress: Progress, verb: str, total: int | None) -> None:
        self._progress, self._verb, self.total = progress, verb, total
        self._last = 0.0

    def __call__(self, done: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < REPORT_EVERY:
            return
        self._last = now
        if self.total:
            self._progress(min(99, done * 100 // self.total), f"{self._verb} {done} of {self.total} bytes")
        else:
            self._progress(1, f"{self._verb} {done} bytes")


class ImageSharing:
    """Image.upload and Image.download for the volumes of the domains under one data-center root."""

    def __init__(self, volumes: Volumes) -> None:
        self._volumes = volumes

    def check(self, sp: str, sd: str, img: str, vol: str | None, method_args: dict[str, Any]) -> str:
        """The volume a transfer would move (the image's leaf when `vol` is None), refusing what cannot
        be done: an unknown pool, domain, image or volume, a volume with a parent, bad methodArgs."""
        self._volumes.check_pool(sp)
        volume = self._volume(sd, img, vol)
        remote(method_args)
        return volume.vol

    def _volume(self, sd: str, img: str, vol: str | None) -> Volume:
        image_dir = self._volumes.image(sd, img)
        if vol is None:
            ids = self._volumes.volume_ids(image_dir)
            if not ids:
                raise ImageDoesNotExistInSD(f"Image does not exist in domain: image={img} has no volumes, domain={sd}",
                                            data={"imgUUID": img, "sdUUID": sd})
            parents = {self._volumes.volume(sd, img, v).meta().parent for v in ids}
            leaves = [v for v in ids if v not in parents]
            if len(leaves) != 1:
                raise ImageSharingRefused(f"image {img} has {len(leaves)} leaf volumes ({', '.join(leaves)}): "
                                          "name one with volumeID", data={"imgUUID": img, "leaves": leaves})
            vol = leaves[0]
        volume = self._volumes.volume(sd, img, vol)
        parent = volume.meta().parent
        if parent != BLANK_UUID:
            raise ImageSharingRefused(
                f"volume {vol} of image {img} has parent {parent}: only an image of one volume is shared "
                "(copy the image with its chain collapsed first)", data={"volUUID": vol, "parent": parent})
        return volume

    # -- upload: the volume's bytes PUT to the URL ---------------------------------------------

    def upload(self, sd: str, img: str, vol: str | None, method_args: dict[str, Any], *,
               progress: Progress, cancelled: threading.Event) -> int:
        """PUT the volume's file to the URL; the bytes sent."""
        volume = self._volume(sd, img, vol)
        peer = remote(method_args)
        size = os.path.getsize(volume.path)
        meter = _Meter(progress, "uploaded", size)
        done = 0
        conn = peer.connect()
        try:
            try:
                conn.putrequest("PUT", peer.target, skip_host="host" in {k.lower() for k in peer.headers},
                                skip_accept_encoding=True)
                for name, value in peer.headers.items():
                    conn.putheader(name, value)
                if "content-type" not in {k.lower() for k in peer.headers}:
                    conn.putheader("Content-Type", "application/octet-stream")
                conn.putheader("Content-Length", str(size))
                conn.endheaders()
                with open(volume.path, "rb") as source:
                    buffer = memoryview(bytearray(CHUNK))
                    while done < size:
                        if cancelled.is_set():
                            raise TaskCancelled(f"the upload of volume {volume.vol} was stopped after {done} of "
                                                f"{size} bytes")
                        count = source.readinto(buffer[:min(CHUNK, size - done)])
                        if not count:
                            raise CopyImageError(f"volume {volume.vol} shrank to {done} bytes while it was uploaded")
                        conn.send(buffer[:count])
                        done += count
                        meter(done)
            except OSError as exc:  # a peer that answers early (a 4xx) and closes: say what it answered
                answer = _early_answer(conn)
                raise CopyImageError(f"PUT {peer.shown} failed after {done} of {size} bytes: "
                                     f"{answer or _why(exc)}") from None
            try:
                response = conn.getresponse()
                body = response.read(512)
            except (OSError, http.client.HTTPException) as exc:
                raise CopyImageError(f"PUT {peer.shown}: no answer after {size} bytes: {_why(exc)}") from None
            if not 200 <= response.status < 300:
                raise CopyImageError(f"PUT {peer.shown} answered {response.status} {response.reason}"
                                     f"{_excerpt(body)}", data={"status": response.status})
        finally:
            conn.close()
        meter(done, final=True)
        log.info("uploaded volume %s (image %s, domain %s) to %s: %d bytes", volume.vol, img, sd, peer.shown, size)
        return size

    # -- download: the URL's bytes written into the volume -------------------------------------

    def download(self, sd: str, img: str, vol: str | None, method_args: dict[str, Any], *,
                 progress: Progress, cancelled: threading.Event) -> int:
        """GET the URL into the volume's file; the bytes written."""
        volume = self._volume(sd, img, vol)
        peer = remote(method_args)
        meta = volume.meta()
        raw = meta.format == "RAW"
        conn = peer.connect()
        try:
            try:
                conn.request("GET", peer.target, headers=peer.headers)
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                raise CopyImageError(f"GET {peer.shown} failed: {_why(exc)}") from None
            if response.status != 200:
                raise CopyImageError(f"GET {peer.shown} answered {response.status} {response.reason}"
                                     f"{_excerpt(response.read(512))}", data={"status": response.status})
            encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
            if encoding != "identity":
                raise CopyImageError(f"GET {peer.shown} answered Content-Encoding {encoding}: the image is wanted "
                                     "as it is (identity)")
            length = response.length  # None when chunked or read to the close
            if raw and length is not None and length > meta.capacity:
                raise DestinationVolumeTooSmall(
                    f"GET {peer.shown} has {length} bytes, more than raw volume {volume.vol}'s capacity of "
                    f"{meta.capacity}: extend the volume first", data={"volUUID": volume.vol, "needed": length})
            volume.write(meta.with_(legality="ILLEGAL"))
            written = self._receive(response, volume, meta.capacity if raw else None, length, peer,
                                    _Meter(progress, "downloaded", length or (meta.capacity if raw else None)),
                                    cancelled)
        finally:
            conn.close()
        with open(volume.path, "r+b") as out:
            if raw:  # the rest of the volume reads as zeros, and stays allocated when it was
                out.truncate(written)
                out.truncate(meta.capacity)
                if meta.type == "PREALLOCATED" and meta.capacity > written:
                    os.posix_fallocate(out.fileno(), written, meta.capacity - written)
            else:
                out.truncate(written)
            os.fsync(out.fileno())
        if not raw:
            self._check_qcow2(volume, meta.capacity)
        volume.write(volume.meta().with_(legality="LEGAL"))
        log.info("downloaded %s into volume %s (image %s, domain %s): %d bytes", peer.shown, volume.vol, img, sd,
                 written)
        return written

    def _receive(self, response: http.client.HTTPResponse, volume: Volume, limit: int | None, length: int | None,
                 peer: Remote, meter: _Meter, cancelled: threading.Event) -> int:
        """Write the body into the volume's file from offset 0; the bytes written."""
        done = 0
        buffer = memoryview(bytearray(CHUNK))
        with open(volume.path, "r+b") as out:
            while True:
                if cancelled.is_set():
                    raise TaskCancelled(f"the download into volume {volume.vol} was stopped after {done} bytes; "
                                        "the volume is left ILLEGAL")
                try:
                    count = response.readinto(buffer)
                except http.client.IncompleteRead as exc:
                    raise CopyImageError(f"GET {peer.shown}: the stream ended after {done + len(exc.partial)} of "
                                         f"{length} bytes; volume {volume.vol} is left ILLEGAL") from None
                except (OSError, http.client.HTTPException) as exc:
                    raise CopyImageError(f"GET {peer.shown} failed after {done} bytes: {_why(exc)}; volume "
                                         f"{volume.vol} is left ILLEGAL") from None
                if not count:
                    break
                if limit is not None and done + count > limit:
                    raise DestinationVolumeTooSmall(
                        f"GET {peer.shown}: the stream is longer than raw volume {volume.vol}'s capacity of {limit} "
                        "bytes; the volume is left ILLEGAL", data={"volUUID": volume.vol})
                out.write(buffer[:count])
                done += count
                meter(done)
            out.flush()
        if length is not None and done != length:
            raise CopyImageError(f"GET {peer.shown}: the stream ended after {done} of {length} bytes; volume "
                                 f"{volume.vol} is left ILLEGAL")
        meter(done, final=True)
        return done

    def _check_qcow2(self, volume: Volume, capacity: int) -> None:
        """A downloaded COW volume must be a qcow2 that refers to no other file, and fit the capacity."""
        vol = volume.vol
        try:
            found = qemuimg.info(volume.path)  # qemu-img's own probe: the bytes came from outside
        except QemuImgError as exc:
            raise ImageVerificationError(f"the download into COW volume {vol} is not an image: {exc.stderr}; "
                                         "the volume is left ILLEGAL") from None
        if found.get("format") != "qcow2":
            raise ImageVerificationError(f"the download into COW volume {vol} is {found.get('format')}, not qcow2; "
                                         "the volume is left ILLEGAL")
        if found.get("backing-filename"):
            raise ImageVerificationError(f"the download into volume {vol} has a backing file "
                                         f"{found['backing-filename']!r}; the volume is left ILLEGAL")
        if found.get("format-specific", {}).get("data", {}).get("data-file"):
            raise ImageVerificationError(f"the download into volume {vol} keeps its data in another file; the "
                                         "volume is left ILLEGAL")
        virtual = int(found.get("virtual-size", 0))
        if virtual > capacity:
            raise DestinationVolumeTooSmall(f"the downloaded image's virtual size {virtual} is more than volume "
                                            f"{vol}'s capacity of {capacity}; the volume is left ILLEGAL")
        try:
            qemuimg.check(volume.path, "COW")
            if virtual < capacity:
                qemuimg.resize(volume.path, "COW", capacity)
        except QemuImgError as exc:
            raise ImageVerificationError(f"the download into volume {vol} is corrupt: {exc.stderr}; the volume is "
                                         "left ILLEGAL") from None


def _early_answer(conn: http.client.HTTPConnection) -> str | None:
    with contextlib.suppress(Exception):
        response = conn.getresponse()
        return f"answered {response.status} {response.reason}{_excerpt(response.read(512))}"
    return None


def _excerpt(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    return f": {text[:200]}" if text else ""


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__

