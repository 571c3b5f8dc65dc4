"""`pier vm migrate VM --to HOST:PORT`: live migration of a VM to another host's pierd.

It starts VM.migrate and prints its task. With --follow it shows the migration's progress until it
ends (VM.getMigrationStatus beside the task: a bar on stderr when that is a terminal, else a line
on stdout whenever the progress changes) and Ctrl-C cancels it (VM.migrateCancel): it waits for the
task to end and says where the VM runs. Exit status: 0 when the VM moved (or, without --follow,
the migration started), 1 when it failed or someone else cancelled it, 130 after Ctrl-C. The verbs
are the ones `pier call` reaches too (`CONVENIENCE_VERBS` in pier.cli).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from pier import cli
from pier import cli_format as fmt

POLL = 0.5  # seconds between two looks at a running migration
LINE_EVERY = 1.0  # without a terminal, at most one progress line a second
CANCEL_WAIT = 120.0  # how long a cancel is given to end the task
ENDED = ("succeeded", "failed", "cancelled")


class _Display:
    """The progress of one migration: a bar redrawn on a terminal's stderr, else a line on stdout
    when it changes (at most every LINE_EVERY s); nothing with --json."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar = not quiet and sys.stderr.isatty()
        self.shown: tuple[Any, ...] | None = None
        self.shown_at = 0.0
        self.drawn = False

    def show(self, task: dict[str, Any], status: dict[str, Any]) -> None:
        if self.quiet:
            return
        progress = int(status.get("progress") or task.get("progress") or 0)
        state = status.get("state") if status.get("state") not in (None, "none") else task.get("state", "")
        text = describe(progress, str(state), status)
        now = time.monotonic()
        if self.bar:
            sys.stderr.write(f"\r[{'#' * (progress * 30 // 100):<30}] {text}\x1b[K")
            sys.stderr.flush()
            self.drawn = True
        elif (progress, state) != self.shown and now - self.shown_at >= LINE_EVERY:
            cli._out(text)
            self.shown, self.shown_at = (progress, state), now

    def end(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.drawn = False


def describe(progress: int, state: str, status: dict[str, Any]) -> str:
    """`42% running, 120 of 256 MiB left, 31.5 MiB/s` from a MigrationStats."""
    text = f"{progress:3d}% {state}"
    total, left, rate = status.get("dataTotal"), status.get("dataRemaining"), status.get("bandwidth")
    if isinstance(total, int) and isinstance(left, int) and total > 0:
        text += f", {left / 2**20:.0f} of {total / 2**20:.0f} MiB left"
    if isinstance(rate, int) and rate > 0:
        text += f", {rate / 2**20:.1f} MiB/s"
    return text


def _status(client: cli.PierClient, vm_id: str) -> dict[str, Any]:
    try:
        found = client.call(cli.CONVENIENCE_VERBS["vm.migrationStatus"], {"vmID": vm_id})
    except cli.RpcError:  # the VM left this host's list in between: the task tells the end
        return {}
    return found if isinstance(found, dict) else {}


def _where(client: cli.PierClient, vm_id: str) -> str:
    """`Up` (or whatever status) of the VM here, as this host reports it now."""
    try:
        return str(client.call(cli.CONVENIENCE_VERBS["vm.info"], {"vmID": vm_id}).get("status", "unknown"))
    except cli.RpcError as exc:
        return f"unknown ({exc.message})"


def _follow(client: cli.PierClient, vm_id: str, task_id: str, display: _Display) -> dict[str, Any]:
    while True:
        task = client.call(cli.CONVENIENCE_VERBS["task.info"], {"taskID": task_id, "wait": POLL}, timeout=POLL + 30)
        if task.get("state") in ENDED:
            return task
        display.show(task, _status(client, vm_id))


def _cancel(client: cli.PierClient, args: argparse.Namespace, vm_id: str, task_id: str) -> int:
    cli._err(f"pier: interrupted: cancelling the migration of VM {vm_id} to {args.to}")
    try:
        client.call(cli.CONVENIENCE_VERBS["vm.migrateCancel"], {"vmID": vm_id})
    except cli.RpcError as exc:  # it ended meanwhile
        cli._err(fmt.error_line(exc.code, exc.name, exc.message))
    try:
        task = client.call(cli.CONVENIENCE_VERBS["task.info"], {"taskID": task_id, "wait": CANCEL_WAIT},
                           timeout=CANCEL_WAIT + 30)
    except KeyboardInterrupt:
        cli._err(f"pier: not waiting for the cancel; `pier task wait {task_id}` follows it")
        return cli.EXIT_INTERRUPTED
    if args.json:
        cli._out(fmt.compact_json(task))
    if task.get("state") == "succeeded":
        cli._err(f"pier: the migration ended before the cancel reached it: VM {vm_id} runs on {args.to}")
        return cli.EXIT_OK
    if task.get("state") not in ENDED:
        cli._err(f"pier: the migration's task {task_id} is still {task.get('state')} after {CANCEL_WAIT:g} s; "
                 f"`pier task wait {task_id}` follows it")
        return cli.EXIT_INTERRUPTED
    cli._err(f"pier: migration cancelled; VM {vm_id} stays on this host: {_where(client, vm_id)}")
    return cli.EXIT_INTERRUPTED


def _ended(client: cli.PierClient, args: argparse.Namespace, vm_id: str, task: dict[str, Any]) -> int:
    if args.json:
        cli._out(fmt.compact_json(task))
    if task.get("state") == "succeeded":
        found = task.get("result")
        result: dict[str, Any] = found if isinstance(found, dict) else {}
        facts = [f"{key} {result[key]} ms" for key in ("elapsedMs", "downtime") if key in result]
        if not args.json:
            cli._out(f"VM {vm_id} migrated to {args.to}" + (f" ({', '.join(facts)})" if facts else ""))
        return cli.EXIT_OK
    error = task.get("error") or {}
    cli._err(f"pier: the migration of VM {vm_id} to {args.to} {task.get('state')}")
    if error:
        cli._err(fmt.error_line(error.get("code"), error.get("name"), error.get("message", "")))
    cli._err(f"VM {vm_id} on this host: {_where(client, vm_id)}")
    return cli.EXIT_FAILED


def cmd_vm_migrate(client: cli.PierClient, args: argparse.Namespace) -> int:
    from pier.cli_console import vm_id_of

    vm_id = vm_id_of(client, args.vm)
    params: dict[str, Any] = {"dst": args.to}
    if args.max_bandwidth is not None:
        params["maxBandwidth"] = args.max_bandwidth
    if args.unsafe:
        params["unsafe"] = True
    task = client.call(cli.CONVENIENCE_VERBS["vm.migrate"], {"vmID": vm_id, "params": params})
    task_id = task["taskID"]
    if not args.follow:
        cli._out(fmt.compact_json(task) if args.json else
                 f"task {task_id} migrates VM {vm_id} to {args.to}; `pier task wait {task_id}` follows it")
        return cli.EXIT_OK
    if not args.json:
        cli._out(f"migrating VM {vm_id} to {args.to} (task {task_id}); Ctrl-C cancels")
    display = _Display(args.json)
    try:
        ended = _follow(client, vm_id, task_id, display)
    except KeyboardInterrupt:
        display.end()
        return _cancel(client, args, vm_id, task_id)
    display.end()
    return _ended(client, args, vm_id, ended)


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """`vm migrate` beside the other `vm` actions on the `pier` parser's subcommands."""
    vm_sub = cli.vm_actions(sub, common)
    migrate = vm_sub.add_parser("migrate", parents=[common], help="migrate a running VM live to another host's pierd")
    migrate.add_argument("vm", help="the VM's id or name")
    migrate.add_argument("--to", required=True, metavar="HOST:PORT", help="the destination pierd's HTTPS listener")
    migrate.add_argument("--follow", "-f", action="store_true",
                         help="show the progress until it ends; Ctrl-C cancels the migration")
    migrate.add_argument("--max-bandwidth", type=int, metavar="MIB", help="at most MIB MiB/s (default: no limit)")
    migrate.add_argument("--unsafe", action="store_true", help="the disks are on storage both hosts see that "
                         "libvirt cannot tell is shared (libvirt's VIR_MIGRATE_UNSAFE)")
    migrate.set_defaults(run=cmd_vm_migrate)
