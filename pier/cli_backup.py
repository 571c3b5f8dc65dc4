"""`pier backup VM --to FILE.qcow2`: a running VM's disks written to qcow2 files, full or incremental.

It asks pierd for a pull-mode backup (VM.start_backup) of the VM's disks that are volumes, reads
each NBD export from its unix socket (so it runs on the VM's host, as root), and always stops
the backup (VM.stop_backup), which removes the scratch files. A full backup is `qemu-img convert`
of the export. An incremental one (--from-checkpoint) copies only the dirty extents the export's
bitmap reports, with ovirt-imageio's NBD client and copier (what imageio's own incremental
download runs), into a new qcow2 whose backing file is the previous backup (--backing) when given.
--checkpoint ID makes a checkpoint the next incremental backup starts from.

One disk goes to FILE; with several, disk IMG goes to FILE's name with `.IMG` before `.qcow2`.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pier import cli
from pier import cli_format as fmt

_UUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_VOLUME_PATH = re.compile(f"/({_UUID})/images/({_UUID})/({_UUID})$")
WORKERS = 4


def volume_disks(devices: list[dict[str, Any]], wanted: list[str] | None = None) -> list[dict[str, str]]:
    """The backup config's disks: each disk of the VM whose path is a volume (…/SD/images/IMG/VOL),
    only those of the images `wanted` when given."""
    disks = []
    for device in devices:
        found = _VOLUME_PATH.search(str(device.get("path") or ""))
        if device.get("type", device.get("deviceType")) == "disk" and device.get("device", "disk") == "disk" and found:
            sd, img, vol = found.groups()
            if not wanted or img in wanted:
                disks.append({"domainID": sd, "imageID": img, "volumeID": vol})
    return disks


def target_for(to: Path, img: str, count: int) -> Path:
    return to if count == 1 else to.with_name(f"{to.stem}.{img}{to.suffix or '.qcow2'}")


def nbd_uri(url: str) -> str:
    """qemu's NBD URI for VDSM's "nbd:unix:<socket>:exportname=<export>"."""
    socket, _, export = url.removeprefix("nbd:unix:").partition(":exportname=")
    return f"nbd+unix:///{export}?socket={socket}"


def copy_full(url: str, target: Path) -> int:
    """qemu-img convert of the whole export into a new qcow2; the bytes the export holds as data."""
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", nbd_uri(url), str(target)],
                   check=True, capture_output=True, text=True)
    return target.stat().st_size


def copy_dirty(url: str, target: Path, backing: Path | None) -> int:
    """The dirty extents of an incremental export into a new qcow2 (over `backing` when given);
    the bytes copied."""
    from ovirt_imageio._internal.backends import nbd as nbd_backend  # type: ignore[import-untyped]
    from ovirt_imageio.client import _api, _io  # type: ignore[import-untyped]

    with closing(nbd_backend.open(urlparse(url), "r", dirty=True)) as src:
        dirty = sum(extent.length for extent in src.extents("dirty") if extent.dirty)
        create = ["qemu-img", "create", "-q", "-f", "qcow2"]
        if backing is not None:
            create += ["-b", str(backing.resolve()), "-F", "qcow2"]
        subprocess.run([*create, str(target), str(src.size())], check=True, capture_output=True, text=True)
        with _api._open_nbd(str(target), "qcow2", shared=WORKERS) as dst:
            _io.copy(src, dst, dirty=True, max_workers=WORKERS, zero=backing is not None, hole=False,
                     name="backup")
    return dirty


def cmd_backup(client: cli.PierClient, args: argparse.Namespace) -> int:
    definition = client.call(cli.CONVENIENCE_VERBS["vm.info"], {"vmID": args.vm})
    disks = volume_disks(definition.get("devices") or [], args.disk)
    if not disks:
        cli._err(f"pier: VM {args.vm} has no disk on a volume{' of the images asked' if args.disk else ''}")
        return cli.EXIT_USAGE
    if args.backing and not args.from_checkpoint:
        cli._err("pier: --backing goes with --from-checkpoint (an incremental backup)")
        return cli.EXIT_USAGE
    backup_id = str(uuid.uuid4())
    config: dict[str, Any] = {"backup_id": backup_id, "disks": disks}
    if args.from_checkpoint:
        config["from_checkpoint_id"] = args.from_checkpoint
    if args.checkpoint:
        config["to_checkpoint_id"] = args.checkpoint
    started = time.monotonic()
    info = client.call(cli.CONVENIENCE_VERBS["backup.start"], {"vmID": args.vm, "config": config})
    written: list[dict[str, Any]] = []
    try:
        for img, url in sorted(info["disks"].items()):
            target = target_for(Path(args.to), img, len(info["disks"]))
            copied = copy_dirty(url, target, args.backing) if args.from_checkpoint else copy_full(url, target)
            written.append({"image": img, "file": str(target), "bytes": copied})
    except subprocess.CalledProcessError as exc:
        cli._err(f"pier: {' '.join(exc.cmd[:2])} failed: {(exc.stderr or '').strip()}")
        return cli.EXIT_FAILED
    finally:
        client.call(cli.CONVENIENCE_VERBS["backup.stop"], {"vmID": args.vm, "backup_id": backup_id})
    seconds = time.monotonic() - started
    summary = {"backup_id": backup_id, "incremental": bool(args.from_checkpoint), "checkpoint": args.checkpoint,
               "disks": written, "seconds": round(seconds, 3)}
    if args.json:
        cli._out(fmt.compact_json(summary))
    else:
        for disk in written:
            cli._out(f"image {disk['image']}: {disk['bytes']} bytes to {disk['file']}")
        cli._out(f"backup {backup_id} {'(incremental) ' if args.from_checkpoint else ''}done in {seconds:.1f} s"
                 + (f"; checkpoint {args.checkpoint}" if args.checkpoint else ""))
    return cli.EXIT_OK


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """`backup` on the `pier` parser's subcommands."""
    backup = sub.add_parser("backup", parents=[common],
                            help="back a running VM's volume disks up into qcow2 files (on the VM's host)")
    backup.add_argument("vm", metavar="VM_UUID")
    backup.add_argument("--to", required=True, metavar="FILE.qcow2",
                        help="where the disk goes (with several disks, FILE.IMG_UUID.qcow2 each)")
    backup.add_argument("--from-checkpoint", metavar="CHECKPOINT_UUID",
                        help="incremental: only what changed since this checkpoint")
    backup.add_argument("--checkpoint", metavar="CHECKPOINT_UUID",
                        help="make this checkpoint, for the next incremental backup")
    backup.add_argument("--backing", type=Path, metavar="PREVIOUS.qcow2",
                        help="with --from-checkpoint: the previous backup, the new file's backing file")
    backup.add_argument("--disk", action="append", metavar="IMG_UUID",
                        help="back up only this image's disk (repeatable; default: every volume disk)")
    backup.set_defaults(run=cmd_backup)
