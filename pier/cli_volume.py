"""`pier volume`: make and list volumes of a storage domain (the verbs `pier call` reaches too,
with human sizes and defaults: a sparse qcow2 in a new image of the blank pool)."""

from __future__ import annotations

import argparse
import re
import uuid
from typing import Any

from pier import cli
from pier import cli_format as fmt

BLANK_UUID = "00000000-0000-0000-0000-000000000000"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from `10G`, `512M`, `1048576` (binary units)."""
    found = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not found:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 10G, 512M or 1048576")
    return int(found.group(1)) * _UNITS[found.group(2).upper()]


def cmd_volume(client: cli.PierClient, args: argparse.Namespace) -> int:
    ids = {"storagepoolID": args.pool, "storagedomainID": args.domain}
    if args.volume_command == "list":
        if args.json:
            listed = client.call(cli.CONVENIENCE_VERBS["volume.list"], {**ids, "imageID": args.image or BLANK_UUID})
            cli._out(fmt.compact_json(listed))
        else:
            cli._out(fmt.volumes_table(_volume_infos(client, ids, args.image)))
        return cli.EXIT_OK
    image = args.image or str(uuid.uuid4())
    volume = args.id or str(uuid.uuid4())
    params: dict[str, Any] = {
        **ids, "imageID": image, "volumeID": volume, "size": str(args.size),
        "volFormat": "COW" if args.format == "qcow2" else "RAW",
        "preallocate": "PREALLOCATED" if args.preallocated else "SPARSE", "diskType": "DATA",
        "desc": args.description, "srcImgUUID": image if args.parent else BLANK_UUID,
        "srcVolUUID": args.parent or BLANK_UUID}
    task = client.call(cli.CONVENIENCE_VERBS["volume.create"], params)
    if not args.json:
        cli._out(f"volume {volume} of image {image}: task {task['taskID']}")
    if args.no_wait:
        if args.json:
            cli._out(fmt.compact_json({"imageID": image, "volumeID": volume, "taskID": task["taskID"]}))
        return cli.EXIT_OK
    return cli.wait_for_task(client, task["taskID"], args.timeout, args.json)


def _volume_infos(client: cli.PierClient, ids: dict[str, Any], image: str | None) -> list[dict[str, Any]]:
    """Volume.getInfo of every volume of `image` (every image of the domain when None)."""
    images = [image] if image else client.call(cli.CONVENIENCE_VERBS["domain.images"],
                                              {"storagedomainID": ids["storagedomainID"]})
    infos = []
    for img in images:
        for vol in client.call(cli.CONVENIENCE_VERBS["image.volumes"], {**ids, "imageID": img}):
            infos.append(client.call(cli.CONVENIENCE_VERBS["volume.info"], {**ids, "imageID": img, "volumeID": vol}))
    return infos


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """`volume create` and `volume list` on the `pier` parser's subcommands."""
    volume = sub.add_parser("volume", parents=[common], help="make and list volumes of a storage domain")
    volume_sub = volume.add_subparsers(dest="volume_command", metavar="ACTION", required=True)
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--domain", required=True, metavar="SD_UUID", help="the storage domain")
    where.add_argument("--pool", default=BLANK_UUID, metavar="SP_UUID", help="its pool (default: none)")
    create = volume_sub.add_parser("create", parents=[common, where], help="make a volume (a task; waits for it)")
    create.add_argument("--size", required=True, type=parse_size, help="virtual size: 10G, 512M, bytes")
    create.add_argument("--format", choices=["qcow2", "raw"], default="qcow2")
    create.add_argument("--preallocated", action="store_true", help="allocate every byte now (default sparse)")
    create.add_argument("--image", metavar="IMG_UUID", help="the image (default: a new one)")
    create.add_argument("--id", metavar="VOL_UUID", help="the volume's id (default: a new one)")
    create.add_argument("--parent", metavar="VOL_UUID", help="a volume of the same image to layer on (a snapshot)")
    create.add_argument("--description", default="")
    create.add_argument("--no-wait", action="store_true", help="print the task and return at once")
    create.add_argument("--timeout", type=float, metavar="S", help="give up waiting after S seconds (exit 2)")
    listing = volume_sub.add_parser("list", parents=[common, where], help="the volumes of an image or a domain")
    listing.add_argument("--image", metavar="IMG_UUID", help="only this image's (default: the whole domain)")
    volume.set_defaults(run=cmd_volume)
