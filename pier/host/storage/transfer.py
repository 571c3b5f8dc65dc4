"""Image transfer: tickets that open one volume over HTTPS, served by ovirt-imageio (pier.host.storage.imageio).

`ImageTransfers` is pier.host.services.TransferService. A ticket (VDSM's ImageTicket) names a
volume by a `file:` URL; it is accepted only when that path resolves (symlinks, `..` and all) to a
volume of a storage domain under the data-center root, and only within the limits set here; then
it goes to imageio's control socket unchanged but for the resolved path. imageio itself enforces
what a ticket allows: its ops (read, write), its expiry, and ranges beyond its size.

pierd's REST data route uses the same machinery: `open_data` adds a short-lived ticket of its own
for one volume and returns where imageio's local (unix-socket) service serves it. After each upload
to the data route the volume's first bytes are checked against its declared format (`check_header`):
a RAW volume must not start with another image format's header (qcow2 bytes in a RAW volume would
be read as qcow2 by whatever probes it), a COW volume must start with a qcow2 header without a
backing file or an external data file. A volume that fails is marked ILLEGAL, as VDSM marks a
volume whose copy failed, and the upload is answered ImageVerificationError.

imageio is started on the first ticket rather than with pierd: most pierds never transfer an image,
and until one does no HTTPS port is open to the network and no 25 MB process runs (measured here:
it starts in ~0.1 s of CPU, so the first ticket waits that long). Host.getAgentInfo says where it
serves once it runs.
"""

from __future__ import annotations

import logging
import os
import struct
import urllib.parse
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from pier.host.storage import layout
from pier.host.storage.imageio import Imageio
from pier.host.storage.volumes import Volume, Volumes
from pier.rpc.dataplane import HttpEndpoint
from pier.rpc.errors import (
    ImageVerificationError,
    InvalidParameterException,
    NoSuchImageTicket,
    PierError,
    VolumeDoesNotExist,
)

log = logging.getLogger("pier.transfer")

MAX_TICKET_TIMEOUT = 7 * 86400  # default limit on a ticket's timeout (a week; engines ask minutes)
DATA_TICKET_TIMEOUT = 300  # seconds a REST data request's own ticket lasts (imageio renews it on each use)
CHECKSUMS = ("blake2b", "sha1", "sha256", "sha512")  # what the data route offers (imageio's block hashes)


class ImageTransfers:
    """Image tickets over one imageio process, for the volumes under one data-center root."""

    def __init__(self, volumes: Volumes, imageio: Imageio, *, max_timeout: int = MAX_TICKET_TIMEOUT) -> None:
        self._volumes = volumes
        self._imageio = imageio
        self.max_timeout = max_timeout

    # -- VDSM's ticket verbs ----------------------------------------------------------------

    def add_ticket(self, ticket: dict[str, Any]) -> None:
        """Check `ticket` and hand it to imageio; nothing is added when it is refused."""
        self._check_timeout(ticket["timeout"], "ticket.timeout")
        if ticket["size"] < 0:
            raise InvalidParameterException(f"ticket.size: {ticket['size']} is negative",
                                            data={"field": "ticket.size"})
        volume = self.resolve_url(ticket["url"])
        sent = {**ticket, "url": "file://" + urllib.parse.quote(str(volume.path))}
        self._imageio.control("PUT", ticket["uuid"], sent)
        log.info("image ticket %s: %s of volume %s (image %s, domain %s), %d bytes, %d s", ticket["uuid"],
                 "/".join(ticket["ops"]), volume.vol, volume.img, volume.sd, ticket["size"], ticket["timeout"])

    def get_ticket(self, ticket_id: str) -> dict[str, Any]:
        if not self._imageio.running:
            raise NoSuchImageTicket(f"no such image ticket: {ticket_id}", data={"uuid": ticket_id})
        return self._imageio.control("GET", ticket_id) or {}

    def extend_ticket(self, ticket_id: str, timeout: int) -> None:
        self._check_timeout(timeout, "timeout")
        if not self._imageio.running:
            raise NoSuchImageTicket(f"no such image ticket: {ticket_id}", data={"uuid": ticket_id})
        self._imageio.control("PATCH", ticket_id, {"timeout": timeout})

    def remove_ticket(self, ticket_id: str) -> None:
        """Idempotent, as imageio's DELETE is: removing an absent ticket succeeds."""
        if self._imageio.running:
            self._imageio.control("DELETE", ticket_id)

    def _check_timeout(self, timeout: int, field: str) -> None:
        if timeout > self.max_timeout:
            raise InvalidParameterException(f"{field}: {timeout} s is beyond this host's limit of {self.max_timeout} s",
                                            data={"field": field, "limit": self.max_timeout})

    # -- which volume a URL names -----------------------------------------------------------

    def resolve_url(self, url: str) -> Volume:
        """The volume a `file:` URL names, after symlinks and `..`; InvalidParameterException for
        anything that is not a volume of a domain here, VolumeDoesNotExist for a volume path of a
        domain here where no such volume is."""
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost") or parsed.query or parsed.fragment:
            raise InvalidParameterException(f"ticket.url: {url!r} is not a file: URL of a volume (file:///path)",
                                            data={"field": "ticket.url"})
        path = urllib.parse.unquote(parsed.path)
        if "\0" in path or not path.startswith("/"):
            raise InvalidParameterException(f"ticket.url: {url!r} is not an absolute path", data={"field": "ticket.url"})
        real = Path(os.path.realpath(path))
        parts = real.parts
        if len(parts) < 5 or parts[-3] != layout.IMAGES:
            raise InvalidParameterException(f"ticket.url: {path} is not a volume of a storage domain on this host",
                                            data={"field": "ticket.url"})
        sd, img, vol = parts[-4], parts[-2], parts[-1]
        try:
            volume = self._volumes.volume(sd, img, vol)
        except PierError as exc:
            if layout.is_uuid(sd) and layout.is_uuid(img) and layout.is_uuid(vol):
                raise VolumeDoesNotExist(f"ticket.url: {path} names no volume: {exc.message}",
                                         data={"field": "ticket.url", "volUUID": vol}) from None
            raise InvalidParameterException(f"ticket.url: {path} is not a volume of a storage domain on this host",
                                            data={"field": "ticket.url"}) from None
        if os.path.realpath(volume.path) != str(real) or not volume.path.is_file():
            raise InvalidParameterException(f"ticket.url: {path} is not a volume of a storage domain on this host",
                                            data={"field": "ticket.url"})
        return volume

    # -- the REST data route ----------------------------------------------------------------

    def open_data(self, sd: str, img: str, vol: str, write: bool, checksum: str | None = None) -> HttpEndpoint:
        """A ticket of its own for one request on one volume, and where imageio's local service serves it."""
        volume = self._volumes.volume(sd, img, vol)
        size = upload_limit(volume) if write else volume.path.stat().st_size
        ticket_id = str(uuid.uuid4())
        self._imageio.control("PUT", ticket_id, {
            "uuid": ticket_id, "size": size, "timeout": DATA_TICKET_TIMEOUT, "ops": ["write" if write else "read"],
            "url": "file://" + urllib.parse.quote(str(volume.path)), "transfer_id": f"pier-rest-{ticket_id[:8]}"})
        path = f"/images/{ticket_id}"
        if checksum:
            path += f"/checksum?algorithm={checksum}"

        def release() -> None:
            try:
                self._imageio.control("DELETE", ticket_id)
            except PierError as exc:
                log.warning("could not remove data ticket %s of volume %s: %s", ticket_id, vol, exc.message)

        def written(moved: int, failure: Exception | None) -> None:
            if moved and failure is None:
                check_header(volume)

        endpoint = HttpEndpoint(self._imageio.local_socket, path, f"volume {vol} for {'writing' if write else 'reading'}",
                                release, {"X-Pier-Ticket": ticket_id, "X-Pier-Size": str(size)})
        return replace(endpoint, done=written) if write else endpoint

    # -- the process ------------------------------------------------------------------------

    def serving(self) -> dict[str, Any]:
        """Where imageio serves images now (for Host.getAgentInfo); empty before its first ticket."""
        if not self._imageio.running:
            return {}
        return {"url": self._imageio.url, "port": self._imageio.remote_port, "ca": self._imageio.tls.ca,
                "pid": self._imageio.pid}

    def stop(self) -> None:
        self._imageio.stop()


def upload_limit(volume: Volume) -> int:
    """The most bytes an upload may write to `volume`: its capacity for raw; for qcow2 the capacity
    plus room for qcow2's own tables (an image file is a little larger than what it holds)."""
    meta = volume.meta()
    if meta.format == "RAW":
        return meta.capacity
    return meta.capacity + meta.capacity // 64 + (16 << 20)


_FOREIGN_HEADERS = ((b"QFI\xfb", "qcow2"), (b"QED\x00", "qed"), (b"KDMV", "vmdk"), (b"vhdxfile", "vhdx"),
                    (b"LUKS\xba\xbe", "luks"), (b"conectix", "vpc"), (b"# Disk DescriptorFile", "vmdk"))
_QCOW2_HEADER = 104  # bytes of a qcow2 version 3 header, the fields read here included
_QCOW2_EXTERNAL_DATA = 1 << 2  # incompatible feature bit: the data lives in another file


def check_header(volume: Volume) -> None:
    """Whether the first bytes of `volume` are its declared format's; ImageVerificationError after
    marking it ILLEGAL when not."""
    meta = volume.meta()
    with open(volume.path, "rb") as stream:
        head = stream.read(4096)
    if meta.format == "RAW":
        found = next((name for magic, name in _FOREIGN_HEADERS if head.startswith(magic)), None)
        problem = None if found is None else (f"its bytes start with a {found} header: upload a raw image into a "
                                              "RAW volume, or a qcow2 image into a COW one")
    else:
        problem = _qcow2_problem(head)
    if problem is None:
        return
    volume.write(meta.with_(legality="ILLEGAL"))
    log.warning("upload into volume %s (%s) refused and the volume marked ILLEGAL: %s", volume.vol, meta.format,
                problem)
    raise ImageVerificationError(f"volume {volume.vol} is {meta.format} but {problem}; the volume is marked "
                                 "ILLEGAL: upload the whole image again from byte 0, or delete it",
                                 data={"volumeID": volume.vol, "format": meta.format, "legality": "ILLEGAL"})


def _qcow2_problem(head: bytes) -> str | None:
    if not head.startswith(b"QFI\xfb") or len(head) < _QCOW2_HEADER:
        shown = "all zeros" if not head.strip(b"\0") else f"{head[:8]!r}"
        return f"its bytes do not start with a qcow2 header (they start {shown})"
    version, backing_offset = struct.unpack(">IQ", head[4:16])
    if version not in (2, 3):
        return f"its qcow2 header has version {version}, not 2 or 3"
    if backing_offset:
        return "its qcow2 header names a backing file (an uploaded image must stand alone)"
    if version == 3 and struct.unpack(">Q", head[72:80])[0] & _QCOW2_EXTERNAL_DATA:
        return "its qcow2 header names an external data file"
    return None
