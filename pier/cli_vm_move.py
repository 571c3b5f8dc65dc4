"""`pier vm move-disk VM --drive vda --to-domain SD`: a live storage move in one step, as VDSM's
engine makes it: the image's structure on the destination domain (Image.cloneStructure, unless
it is there already), VM.diskReplicateStart, the parents' data (Image.syncData INTERNAL) while
QEMU mirrors the guest's writes, a wait for the copy to be ready (the VM's vmJobs), then
VM.diskReplicateFinish onto the destination. A failure after the start stops the copy: the disk
stays on its domain. The verbs are the ones `pier call` reaches too."""

from __future__ import annotations

import argparse
import time
from typing import Any

from pier import cli
from pier import cli_format as fmt
from pier.cli_vm_snapshot import BLANK_UUID, volume_disks

POLL_SECONDS = 0.5


def _copy_of(client: cli.PierClient, vm_id: str, drive: str) -> dict[str, Any] | None:
    """The VM's vmJobs entry of the drive's copy, None when it has none."""
    stats = client.call(cli.CONVENIENCE_VERBS["vm.stats"], {"vmID": vm_id})
    jobs = (stats[0] if stats else {}).get("vmJobs") or {}
    return next((job for job in jobs.values() if job.get("blockJobType") == "copy" and job.get("drive") == drive),
                None)


def _task(client: cli.PierClient, verb: str, params: dict[str, Any], args: argparse.Namespace) -> bool:
    task = client.call(cli.CONVENIENCE_VERBS[verb], params)
    return cli.wait_for_task(client, task["taskID"], args.timeout, bool(args.json)) == cli.EXIT_OK


def _wait_ready(client: cli.PierClient, vm_id: str, drive: str, args: argparse.Namespace) -> bool:
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    shown = None
    while True:
        job = _copy_of(client, vm_id, drive)
        if job is None:
            cli._err(f"pier: the copy of {drive} is gone from the VM's jobs (libvirt ended it)")
            return False
        if job.get("ready"):
            return True
        end = int(job.get("end") or 0)
        percent = int(job.get("cur") or 0) * 100 // end if end else 0
        if not args.json and percent != shown:
            cli._out(f"copying {drive}: {percent} %")
            shown = percent
        if deadline is not None and time.monotonic() >= deadline:
            cli._err(f"pier: the copy of {drive} is not ready after {args.timeout:g} s")
            return False
        time.sleep(POLL_SECONDS)


def cmd_vm_move_disk(client: cli.PierClient, args: argparse.Namespace) -> int:
    from pier.cli_console import vm_id_of

    vm_id = vm_id_of(client, args.vm)
    disks = volume_disks(client.call(cli.CONVENIENCE_VERBS["vm.devices"], {"vmID": vm_id}), [args.drive])
    if not disks:
        cli._err(f"VM {vm_id} has no disk {args.drive} that is a storage volume")
        return cli.EXIT_FAILED
    disk = disks[0]
    if disk["sd"] == args.to_domain.lower():
        cli._err(f"{args.drive} is on domain {args.to_domain} already")
        return cli.EXIT_FAILED
    source = {"poolID": args.pool, "domainID": disk["sd"], "imageID": disk["img"], "volumeID": disk["vol"]}
    dest = {**source, "domainID": args.to_domain}
    image = {"imageID": disk["img"], "storagepoolID": args.pool, "storagedomainID": disk["sd"],
             "dstSdUUID": args.to_domain}
    there = client.call(cli.CONVENIENCE_VERBS["domain.images"], {"storagedomainID": args.to_domain})
    if disk["img"] not in there and not _task(client, "image.clone", image, args):
        cli._err(f"pier: could not make image {disk['img']} on domain {args.to_domain}")
        return cli.EXIT_FAILED
    client.call(cli.CONVENIENCE_VERBS["vm.replicate.start"], {"vmID": vm_id, "srcDisk": source, "dstDisk": dest})
    finish_on = source  # until the copy can pivot, a failure stops it and the disk stays where it is
    try:
        if _task(client, "image.sync", {**image, "syncType": "INTERNAL"}, args) \
                and _wait_ready(client, vm_id, args.drive, args):
            finish_on = dest
    finally:
        ended = client.call(cli.CONVENIENCE_VERBS["vm.replicate.finish"],
                            {"vmID": vm_id, "srcDisk": source, "dstDisk": finish_on})
    if args.json:
        cli._out(fmt.compact_json(ended))
    elif ended.get("pivoted"):
        cli._out(f"{args.drive}: domain {disk['sd']} -> {ended['domainID']} ({ended['path']})")
    else:
        cli._err(f"pier: the copy of {args.drive} was stopped; it stays on domain {disk['sd']}")
    return cli.EXIT_OK if ended.get("pivoted") else cli.EXIT_FAILED


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """`vm move-disk` beside the other `vm` actions on the `pier` parser's subcommands."""
    vm_sub = cli.vm_actions(sub, common)
    move = vm_sub.add_parser("move-disk", parents=[common],
                             help="move a running VM's volume disk to another storage domain, live")
    move.add_argument("vm", help="the VM's id or name")
    move.add_argument("--drive", required=True, metavar="NAME", help="the disk (vda)")
    move.add_argument("--to-domain", required=True, metavar="SD_UUID", help="the destination storage domain")
    move.add_argument("--pool", default=BLANK_UUID, metavar="SP_UUID", help="the pool (default: none)")
    move.add_argument("--timeout", type=float, metavar="S", help="give up (and stay on the source) after S seconds "
                      "for each step")
    move.set_defaults(run=cmd_vm_move_disk)
