"""`pier console VM` (the serial console in this terminal) and `pier vm screenshot VM FILE`.

The console is the REST route's WebSocket (GET /api/v1/vms/{vmID}/console), reached the way the
other commands reach pierd (its local socket, or https with a token or certificate). On a terminal
it runs in raw mode, so every key goes to the guest, until Ctrl-] (or until the VM stops or another
client takes the console over); the terminal is restored whatever happens. Without a terminal
(a pipe) it copies stdin to the console until Ctrl-] or the end of stdin, then waits
`--linger` seconds for the guest's last output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import sys
import threading
import urllib.parse
import uuid
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect, unix_connect

from pier import cli
from pier.cli import EXIT_FAILED, EXIT_OK, PierClient, RpcError, Unreachable

LEAVE = b"\x1d"  # Ctrl-]
NORMAL, TAKEN_OVER = 1000, 4001


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """`console` and `vm screenshot` on the `pier` parser's subcommands."""
    console = sub.add_parser("console", parents=[common], help="the serial console of a VM (Ctrl-] leaves)")
    console.add_argument("vm", help="the VM's id or name")
    console.add_argument("--force", action="store_true", help="take the console over from the client that has it")
    console.add_argument("--linger", type=float, default=1.0, metavar="S",
                         help="without a terminal: seconds to wait for output after stdin ends (default 1)")
    console.set_defaults(run=cmd_console)
    vm = sub.add_parser("vm", parents=[common], help="a VM's screen")
    vm_sub = vm.add_subparsers(dest="vm_command", metavar="ACTION", required=True)
    shot = vm_sub.add_parser("screenshot", parents=[common], help="save a PNG of the VM's screen (- for stdout)")
    shot.add_argument("vm", help="the VM's id or name")
    shot.add_argument("file")
    shot.set_defaults(run=cmd_screenshot)


def vm_id_of(client: PierClient, vm: str) -> str:
    """The id of the VM given by id or by name."""
    try:
        return str(uuid.UUID(vm))
    except ValueError:
        pass
    found = [v["vmId"] for v in client.call(cli.CONVENIENCE_VERBS["vms"], {"fullStatus": True})
             if v.get("vmName") == vm]
    if len(found) != 1:
        raise RpcError(1, "noVM", f"no VM is called {vm!r}" if not found else f"{len(found)} VMs are called {vm!r}")
    return found[0]


def cmd_screenshot(client: PierClient, args: argparse.Namespace) -> int:
    vm_id = vm_id_of(client, args.vm)
    path = f"/api/v1/vms/{vm_id}/screenshot"
    status, kind, raw = client.request("GET", path)
    if status != 200 or not kind.startswith("image/png"):
        raise_problem(status, raw)
    if args.file == "-":
        sys.stdout.buffer.write(raw)
        sys.stdout.flush()
    else:
        with open(args.file, "wb") as out:
            out.write(raw)
        cli._err(f"saved {len(raw)} bytes of PNG to {args.file}")
    return EXIT_OK


def raise_problem(status: int, raw: bytes) -> None:
    """Raise what the CLI raises for a problem+json answer."""
    try:
        problem = json.loads(raw)
    except ValueError:
        problem = {}
    problem = problem if isinstance(problem, dict) else {}
    data = problem.get("data") if isinstance(problem.get("data"), dict) else {}
    message = str(problem.get("detail") or f"HTTP {status}")
    refused = cli._refused(status, problem.get("code"), message, data)
    if refused is not None:
        raise refused
    raise RpcError(problem.get("code", status), problem.get("name"), message, data)


def open_websocket(client: PierClient, path: str) -> ClientConnection:
    """A WebSocket to pierd's `path`, over its local socket or TCP, with the client's credentials."""
    parts = urllib.parse.urlsplit(client.url)
    headers = {"Authorization": f"Bearer {client.token}"} if client.token else None
    options: dict[str, Any] = {"additional_headers": headers, "compression": None, "max_size": None,
                               "open_timeout": client.timeout}
    try:
        if parts.scheme == "http+unix":
            socket_path = urllib.parse.unquote(parts.netloc + parts.path)
            return unix_connect(socket_path, f"ws://localhost{path}", **options)
        scheme = "wss" if parts.scheme == "https" else "ws"
        tls = client.tls if scheme == "wss" else None
        return connect(f"{scheme}://{parts.netloc}{parts.path}{path}", ssl=tls, **options)
    except InvalidStatus as exc:
        raise_problem(exc.response.status_code, bytes(exc.response.body or b""))
        raise  # not reached
    except (OSError, TimeoutError) as exc:
        raise Unreachable(f"cannot reach pierd at {client.url}: {exc}") from None


def cmd_console(client: PierClient, args: argparse.Namespace) -> int:
    vm_id = vm_id_of(client, args.vm)
    query = "?force=true" if args.force else ""
    stdin = sys.stdin.fileno()
    terminal = os.isatty(stdin)
    closed: dict[str, Any] = {}
    with open_websocket(client, f"/api/v1/vms/{vm_id}/console{query}") as websocket, _raw_mode(stdin, terminal):
        if terminal:
            _say(f"connected to the serial console of VM {vm_id}; Ctrl-] leaves")
        printer = threading.Thread(target=_print_output, args=(websocket, closed), daemon=True)
        printer.start()
        _send_input(websocket, stdin, printer)
        if not terminal and printer.is_alive():
            printer.join(args.linger)
        with contextlib.suppress(Exception):
            websocket.close()
        printer.join(5)
    code, reason = closed.get("code"), closed.get("reason", "")
    if code is None or code == NORMAL and not reason:
        return EXIT_OK
    cli._err(f"pier: the console closed: {reason or code}")
    return EXIT_OK if code == NORMAL else EXIT_FAILED


def _send_input(websocket: ClientConnection, stdin: int, printer: threading.Thread) -> None:
    """Copy stdin to the console until Ctrl-], its end, or the console closes."""
    while printer.is_alive():
        ready, _, _ = select.select([stdin], [], [], 0.2)
        if not ready:
            continue
        data = os.read(stdin, 4096)
        if not data:
            return
        leave = data.find(LEAVE)
        if leave >= 0:
            data = data[:leave]
        try:
            if data:
                websocket.send(data)
        except ConnectionClosed:
            return
        if leave >= 0:
            return


def _print_output(websocket: ClientConnection, closed: dict[str, Any]) -> None:
    out = sys.stdout.buffer
    try:
        for message in websocket:
            out.write(message if isinstance(message, bytes) else message.encode())
            out.flush()
    except ConnectionClosed:
        pass
    received = websocket.close_code
    if received is not None:
        closed["code"], closed["reason"] = received, websocket.close_reason or ""


@contextlib.contextmanager
def _raw_mode(fd: int, terminal: bool) -> Any:
    """The terminal in raw mode (every key goes to the guest) inside; restored after, whatever happens."""
    if not terminal:
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        _say("")


def _say(text: str) -> None:
    sys.stderr.write(f"\r\n[pier] {text}\r\n" if text else "\r\n")
    sys.stderr.flush()

