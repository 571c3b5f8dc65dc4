"""`pier vm snapshot VM`: a live snapshot of a VM's volume disks in one step, as an engine takes
it: for each disk a new qcow2 volume over its leaf (Volume.create), then VM.snapshot onto them all
(all or none). `pier vm hibernate VM`: new memory and memory-config volumes (RAW, as an engine
makes them), then VM.hibernate into them; it prints the handle VM.create restores from. The verbs
are the ones `pier call` reaches too."""

from __future__ import annotations

import argparse
import re
import uuid
from typing import Any

from pier import cli
from pier import cli_format as fmt

BLANK_UUID = "00000000-0000-0000-0000-000000000000"
MiB = 1 << 20
STATE_OVERHEAD_MIB = 512  # beside the RAM: 200 MiB of device state and the video RAM VM.hibernate requires room for (sparse)
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_VOLUME_PATH = re.compile(rf"/(?P<sd>{_UUID})/images/(?P<img>{_UUID})/(?P<vol>{_UUID})$")


def volume_disks(devices: list[dict[str, Any]], names: list[str] | None) -> list[dict[str, str]]:
    """The VM's disks that are volumes of a storage domain (name, domain, image, leaf volume),
    only those named in `names` when given."""
    found = []
    for device in devices:
        if device.get("deviceType") != "disk" or device.get("device", "disk") != "disk":
            continue
        match = _VOLUME_PATH.search(str(device.get("path") or ""))
        if match and (not names or device.get("name") in names):
            found.append({"name": str(device.get("name")), "sd": match["sd"], "img": match["img"],
                          "vol": match["vol"]})
    return found


def cmd_vm_snapshot(client: cli.PierClient, args: argparse.Namespace) -> int:
    from pier.cli_console import vm_id_of

    args.vm = vm_id_of(client, args.vm)
    devices = client.call(cli.CONVENIENCE_VERBS["vm.devices"], {"vmID": args.vm})
    disks = volume_disks(devices, args.disk)
    if not disks:
        cli._err(f"VM {args.vm} has no disk that is a storage volume" + (f" named {', '.join(args.disk)}"
                                                                        if args.disk else ""))
        return cli.EXIT_FAILED
    snap_drives = []
    for disk in disks:
        ids = {"storagepoolID": args.pool, "storagedomainID": disk["sd"], "imageID": disk["img"]}
        info = client.call(cli.CONVENIENCE_VERBS["volume.info"], {**ids, "volumeID": disk["vol"]})
        new = str(uuid.uuid4())
        task = client.call(cli.CONVENIENCE_VERBS["volume.create"], {
            **ids, "volumeID": new, "size": info["capacity"], "volFormat": "COW", "preallocate": "SPARSE",
            "diskType": info.get("disktype") or "DATA", "desc": args.description, "srcImgUUID": disk["img"],
            "srcVolUUID": disk["vol"]})
        if cli.wait_for_task(client, task["taskID"], args.timeout, args.json) != cli.EXIT_OK:
            cli._err(f"could not make the snapshot volume of {disk['name']}: task {task['taskID']}")
            return cli.EXIT_FAILED
        snap_drives.append({"domainID": disk["sd"], "imageID": disk["img"], "baseVolumeID": disk["vol"],
                            "volumeID": new, "name": disk["name"]})
    ended = client.call(cli.CONVENIENCE_VERBS["vm.snapshot"], {"vmID": args.vm, "snapDrives": snap_drives, "frozen": False})
    if args.json:
        cli._out(fmt.compact_json({"task": ended, "snapDrives": snap_drives}))
    else:
        for drive in snap_drives:
            cli._out(f"{drive['name']}: {drive['baseVolumeID']} -> {drive['volumeID']}")
        result = ended.get("result") if isinstance(ended, dict) else None
        quiesced = isinstance(result, dict) and result.get("quiesce")
        cli._out("quiesced through the guest agent" if quiesced else "not quiesced (no guest agent answered)")
    return cli.EXIT_OK if not isinstance(ended, dict) or ended.get("state", "succeeded") == "succeeded" \
        else cli.EXIT_FAILED


def _new_raw_volume(client: cli.PierClient, args: argparse.Namespace, sd: str, size: int, content: str) -> str:
    """A new RAW volume in a new image of domain `sd`; its "image,volume" ids."""
    img, vol = str(uuid.uuid4()), str(uuid.uuid4())
    task = client.call(cli.CONVENIENCE_VERBS["volume.create"], {
        "storagepoolID": args.pool, "storagedomainID": sd, "imageID": img, "volumeID": vol, "size": str(size),
        "volFormat": "RAW", "preallocate": "SPARSE", "diskType": content, "desc": f"{content} of VM {args.vm}",
        "srcImgUUID": BLANK_UUID, "srcVolUUID": BLANK_UUID})
    if cli.wait_for_task(client, task["taskID"], args.timeout, args.json) != cli.EXIT_OK:
        raise RuntimeError(f"could not make the {content} volume: task {task['taskID']}")
    return f"{img},{vol}"


def cmd_vm_hibernate(client: cli.PierClient, args: argparse.Namespace) -> int:
    from pier.cli_console import vm_id_of

    args.vm = vm_id_of(client, args.vm)
    definition = client.call(cli.CONVENIENCE_VERBS["vm.info"], {"vmID": args.vm})
    sd = args.domain
    if not sd:
        disks = volume_disks(definition.get("devices") or [], None)
        if not disks:
            cli._err(f"VM {args.vm} has no disk on a storage domain: name the domain for its memory with --domain")
            return cli.EXIT_FAILED
        sd = disks[0]["sd"]
    try:
        state = _new_raw_volume(client, args, sd, (int(definition.get("memSize") or 0) + STATE_OVERHEAD_MIB) * MiB,
                                "MEMD")
        config = _new_raw_volume(client, args, sd, MiB, "MEMM")
    except RuntimeError as exc:
        cli._err(str(exc))
        return cli.EXIT_FAILED
    handle = f"{sd},{args.pool},{state},{config}"
    task = client.call(cli.CONVENIENCE_VERBS["vm.hibernate"], {"vmID": args.vm, "hibernationVolHandle": handle})
    code = cli.wait_for_task(client, task["taskID"], args.timeout, args.json)
    if code == cli.EXIT_OK and not args.json:
        cli._out(f"hibernationVolHandle: {handle}")
        cli._out("bring it back (after VM.destroy): pier call VM.create vmParams='" + fmt.compact_json(
            {"vmId": args.vm, "hiberVolHandle": handle}) + "'")
    return code


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """`vm snapshot` beside the other `vm` actions on the `pier` parser's subcommands."""
    vm_sub = cli.vm_actions(sub, common)
    snapshot = vm_sub.add_parser("snapshot", parents=[common],
                                 help="a live snapshot of the VM's volume disks onto new volumes (all or none)")
    snapshot.add_argument("vm", help="the VM's id or name")
    snapshot.add_argument("--disk", action="append", metavar="NAME", help="only this disk (vda); repeatable")
    snapshot.add_argument("--pool", default=BLANK_UUID, metavar="SP_UUID", help="the pool (default: none)")
    snapshot.add_argument("--description", default="snapshot")
    snapshot.add_argument("--timeout", type=float, metavar="S", help="give up waiting for a volume after S seconds")
    snapshot.set_defaults(run=cmd_vm_snapshot)
    hibernate = vm_sub.add_parser("hibernate", parents=[common],
                                  help="save the VM's memory into new volumes and stop it (VM.create restores it)")
    hibernate.add_argument("vm", help="the VM's id or name")
    hibernate.add_argument("--domain", metavar="SD_UUID", help="the storage domain for the memory volumes "
                           "(default: that of the VM's first volume disk)")
    hibernate.add_argument("--pool", default=BLANK_UUID, metavar="SP_UUID", help="the pool (default: none)")
    hibernate.add_argument("--timeout", type=float, metavar="S", help="give up waiting after S seconds")
    hibernate.set_defaults(run=cmd_vm_hibernate)
