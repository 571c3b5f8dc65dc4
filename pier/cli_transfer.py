"""`pier upload` and `pier download`: a disk image into a volume and back, over the REST data route.

An upload sends the file in CHUNK-sized PUTs, each saying with Content-Range where it goes; a chunk
whose connection breaks is sent again from its start (up to --retries times), so a broken
connection costs at most one chunk. Without --volume it first makes a volume of the file's format
and virtual size (read with qemu-img, or raw of the file's size where qemu-img is missing), and
afterwards asks pierd to check that the volume holds the format its metadata says
(Volume.verify_untrusted). A download writes FILE.part and resumes it with Range after a break; once
all of it is there it is fsynced and renamed to FILE.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from pier import cli
from pier import cli_format as fmt
from pier.cli_volume import BLANK_UUID, parse_size

CHUNK = 256 << 20  # each PUT costs pierd a ticket, a task and a format check (~30 ms on 2 busy cores)
BLOCK = 4 << 20


def _data_path(args: argparse.Namespace, image: str, volume: str) -> str:
    return f"/api/v1/storage-domains/{args.domain}/images/{image}/volumes/{volume}/data"


class _Progress:
    """A one-line progress bar on stderr when it is a terminal (nothing otherwise)."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.started, self.shown = total, time.monotonic(), 0.0
        self.enabled = not quiet and sys.stderr.isatty()

    def show(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self.shown < 0.2):
            return
        self.shown = now
        rate = done / max(now - self.started, 1e-6) / (1 << 20)
        percent = 100 * done // max(self.total, 1)
        bar = "#" * (percent * 30 // 100)
        sys.stderr.write(f"\r[{bar:<30}] {percent:3d}% {done >> 20}/{self.total >> 20} MiB {rate:.0f} MiB/s")
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _image_facts(path: Path) -> tuple[str, int]:
    """(format, virtual size) of an image file: qcow2 or raw."""
    if shutil.which("qemu-img"):
        found = json.loads(subprocess.run(["qemu-img", "info", "--output", "json", "-U", str(path)],
                                          capture_output=True, text=True, check=True).stdout)
        if found["format"] not in ("qcow2", "raw"):
            raise ValueError(f"{path} is {found['format']}; upload takes qcow2 or raw (convert it with qemu-img)")
        return found["format"], int(found["virtual-size"])
    return "raw", path.stat().st_size


def _send(client: cli.PierClient, method: str, path: str, headers: dict[str, str], body: Any = None,
          length: int = 0) -> tuple[int, dict[str, str], http.client.HTTPResponse, http.client.HTTPConnection]:
    connection = client.open_connection(300.0)
    sent = dict(headers)
    if client.token:
        sent["Authorization"] = f"Bearer {client.token}"
    connection.putrequest(method, client.prefix + path)
    for name, value in sent.items():
        connection.putheader(name, value)
    connection.endheaders()
    if body is not None:
        left = length
        while left > 0:
            piece = body.read(min(BLOCK, left))
            if not piece:
                raise OSError("the file ended early")
            connection.send(piece)
            left -= len(piece)
    response = connection.getresponse()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response, connection


def _refusal(status: int, response: http.client.HTTPResponse) -> cli.RpcError:
    try:
        problem = json.loads(response.read())
    except ValueError:
        problem = {}
    return cli.RpcError(problem.get("code", status), problem.get("name"),
                        str(problem.get("detail") or problem.get("message") or f"HTTP {status}"), problem.get("data"))


def cmd_upload(client: cli.PierClient, args: argparse.Namespace) -> int:
    source = Path(args.file)
    size = source.stat().st_size
    image, volume = args.image or str(uuid.uuid4()), args.volume
    if volume is None:
        image_format, virtual = _image_facts(source)
        volume = str(uuid.uuid4())
        task = client.call(cli.CONVENIENCE_VERBS["volume.create"], {
            "storagepoolID": args.pool, "storagedomainID": args.domain, "imageID": image, "volumeID": volume,
            "size": str(virtual), "volFormat": "COW" if image_format == "qcow2" else "RAW", "preallocate": "SPARSE",
            "diskType": "DATA", "desc": args.description or source.name, "srcImgUUID": BLANK_UUID,
            "srcVolUUID": BLANK_UUID})
        ended = client.get_json(f"/api/v1/tasks/{task['taskID']}", {"wait": 300})
        if ended.get("state") != "succeeded":
            cli._err(f"pier: could not make the volume: {ended.get('error') or ended.get('state')}")
            return cli.EXIT_FAILED
    path = _data_path(args, image, volume)
    progress = _Progress(size, args.json)
    started = time.monotonic()
    retried = 0
    with open(source, "rb") as stream:
        offset = 0
        while offset < size:
            length = min(args.chunk, size - offset)
            stream.seek(offset)
            try:
                status, _, response, connection = _send(client, "PUT", path, {
                    "Content-Length": str(length), "Content-Range": f"bytes {offset}-{offset + length - 1}/*",
                    "Content-Type": "application/octet-stream"}, stream, length)
            except (OSError, http.client.HTTPException) as exc:
                retried += 1
                if retried > args.retries:
                    cli._err(f"\npier: upload broke at byte {offset} and did not resume after {args.retries} tries: "
                             f"{exc}; run it again with --image {image} --volume {volume}")
                    return cli.EXIT_FAILED
                time.sleep(min(2 ** retried * 0.25, 5))
                continue  # the same chunk again, from its start
            try:
                if status != 200:
                    raise _refusal(status, response)
                response.read()
            finally:
                connection.close()
            offset += length
            progress.show(offset)
    progress.show(size, final=True)
    if args.volume is None:
        client.call(cli.CONVENIENCE_VERBS["volume.verify"], {"storagepoolID": args.pool, "storagedomainID": args.domain,
                                                "imageID": image, "volumeID": volume})
    seconds = time.monotonic() - started
    summary = {"imageID": image, "volumeID": volume, "bytes": size, "seconds": round(seconds, 3), "retries": retried}
    cli._out(fmt.compact_json(summary) if args.json else
             f"uploaded {size} bytes into volume {volume} of image {image} in {seconds:.1f} s"
             + (f" ({retried} resumed)" if retried else ""))
    return cli.EXIT_OK


def cmd_download(client: cli.PierClient, args: argparse.Namespace) -> int:
    target = Path(args.file)
    partial = target.with_name(target.name + ".part")
    path = _data_path(args, args.image, args.volume)
    retried, started, total = 0, time.monotonic(), 0
    progress: _Progress | None = None
    while True:
        have = partial.stat().st_size if partial.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            status, answer, response, connection = _send(client, "GET", path, headers)
            try:
                if status not in (200, 206):
                    raise _refusal(status, response)
                total = int(answer["content-range"].rsplit("/", 1)[1]) if status == 206 else int(
                    answer.get("content-length", 0))
                progress = progress or _Progress(total, args.json)
                with open(partial, "ab" if status == 206 else "wb") as out:
                    done = have if status == 206 else 0
                    while piece := response.read(BLOCK):
                        out.write(piece)
                        done += len(piece)
                        progress.show(done)
                    if done >= total:
                        os.fsync(out.fileno())  # on disk before it is renamed into place
                if done < total:
                    raise OSError(f"the answer ended at byte {done} of {total}")
            finally:
                connection.close()
            break
        except (OSError, http.client.HTTPException) as exc:
            retried += 1
            if retried > args.retries:
                cli._err(f"\npier: download broke and did not resume after {args.retries} tries: {exc}; "
                         f"{partial} holds what arrived: run the same command to resume")
                return cli.EXIT_FAILED
            time.sleep(min(2 ** retried * 0.25, 5))
    os.replace(partial, target)
    if progress is not None:
        progress.show(total, final=True)
    seconds = time.monotonic() - started
    summary = {"file": str(target), "bytes": total, "seconds": round(seconds, 3), "retries": retried}
    cli._out(fmt.compact_json(summary) if args.json else f"downloaded {total} bytes to {target} in {seconds:.1f} s")
    return cli.EXIT_OK


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """`upload` and `download` on the `pier` parser's subcommands."""
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--domain", required=True, metavar="SD_UUID", help="the storage domain")
    where.add_argument("--retries", type=int, default=5, help="times a broken connection is resumed (default 5)")
    upload = sub.add_parser("upload", parents=[common, where],
                            help="upload a qcow2 or raw image into a (new) volume, resuming after a broken connection")
    upload.add_argument("file", metavar="FILE")
    upload.add_argument("--pool", default=BLANK_UUID, metavar="SP_UUID", help="its pool (default: none)")
    upload.add_argument("--image", metavar="IMG_UUID", help="the image (default: a new one)")
    upload.add_argument("--volume", metavar="VOL_UUID", help="an existing volume to write into (default: a new "
                        "volume of the file's format and virtual size)")
    upload.add_argument("--description", default="", help="the new volume's description (default: the file name)")
    upload.add_argument("--chunk", type=parse_size, default=CHUNK, help="bytes per request (default 256M): what a "
                        "broken connection costs")
    upload.set_defaults(run=cmd_upload)
    download = sub.add_parser("download", parents=[common, where],
                              help="download a volume's bytes into FILE (FILE.part until complete; run again to resume)")
    download.add_argument("file", metavar="FILE")
    download.add_argument("--image", required=True, metavar="IMG_UUID")
    download.add_argument("--volume", required=True, metavar="VOL_UUID")
    download.set_defaults(run=cmd_download)
