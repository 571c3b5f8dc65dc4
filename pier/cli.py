"""`pier`: the node admin's client of pierd's API, over HTTP.

Any verb can be called (`pier call VERB key=value ...`); the verb list, help texts and param typing
come from the schema, never from this file. A few convenience commands (`vms`, `host`, `events`,
`task ...`, `token ...`, `trust ...`, `audit`) call specific verbs: their names are in
`CONVENIENCE_VERBS` below and nowhere else. Verbs go through JSON-RPC 2.0 at `POST <url>/jsonrpc`;
events through the REST long-poll. Only the standard library is used for HTTP, so the CLI starts
fast; the schema (YAML) is loaded only by the commands that need it.

Where and how it connects: `--url` or `$PIER_URL`, else pierd's local unix socket when there is
one (local root and pier-admin are admins there), else `DEFAULT_URL`; credentials (`--token`,
`--cert/--key`, `--ca`) and the security commands are in `pier.cli_security`.

Exit status: 0 done, 1 the call or the task failed, 2 usage error or `task wait` timed out,
3 pierd could not be reached, 4 pierd refused the caller (credentials or role), 130 interrupted.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import ssl
import sys
import time
import urllib.parse
from typing import Any

from pier import cli_format as fmt
from pier.config import DEFAULT_HTTP

# The verbs the convenience commands call; everything else goes through `pier call`.
CONVENIENCE_VERBS = {
    "vms": "Host.getVMList",
    "capabilities": "Host.getCapabilities",
    "stats": "Host.getStats",
    "net": "Host.getNetworkCapabilities",
    "storage": "Host.listStorageDomains",
    "task.info": "Task.getInfo",
    "task.list": "Host.getAllTasks",
    "volume.create": "Volume.create",
    "volume.list": "StorageDomain.getVolumes",
    "volume.info": "Volume.getInfo",
    "domain.images": "StorageDomain.getImages",
    "image.volumes": "Image.getVolumes",
    "volume.verify": "Volume.verify_untrusted",
    "vm.info": "VM.getInfo",
    "vm.devices": "VM.getDevices",
    "vm.snapshot": "VM.snapshot",
    "vm.migrate": "VM.migrate",
    "vm.migrationStatus": "VM.getMigrationStatus",
    "vm.migrateCancel": "VM.migrateCancel",
    "vm.hibernate": "VM.hibernate",
    "vm.stats": "VM.getStats",
    "vm.replicate.start": "VM.diskReplicateStart",
    "vm.replicate.finish": "VM.diskReplicateFinish",
    "image.clone": "Image.cloneStructure",
    "image.sync": "Image.syncData",
    "backup.start": "VM.start_backup",
    "backup.stop": "VM.stop_backup",
    "task.stop": "Task.stop",
    "task.clear": "Task.clear",
    "token.create": "Token.create",
    "token.list": "Token.list",
    "token.revoke": "Token.revoke",
    "trust.add": "Trust.add",
    "trust.list": "Trust.list",
    "trust.remove": "Trust.remove",
    "audit": "Host.getAuditLog",
}
EVENTS_PATH = "/api/v1/events"
TASK_POLL_SLICE = 5.0
EVENTS_FOLLOW_WAIT = 25.0
DEFAULT_URL = f"http://{DEFAULT_HTTP}"
UNAUTHENTICATED, FORBIDDEN = -32001, -32003

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_UNREACHABLE, EXIT_REFUSED, EXIT_INTERRUPTED = \
    0, 1, 2, 2, 3, 4, 130


# -- talking to pierd --------------------------------------------------------------------------


class Unreachable(Exception):
    """pierd did not answer at all."""


class RpcError(Exception):
    """A JSON-RPC error answer (or a REST problem), with VDSM's code and name."""

    def __init__(self, code: Any, name: str | None, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.name, self.message, self.data = code, name, message, data


class Refused(Exception):
    """pierd would not take the call from this caller: no or bad credentials, or too small a role."""

    def __init__(self, message: str, forbidden: bool = False, needs: str | None = None, hint: str = "") -> None:
        super().__init__(message)
        self.message, self.forbidden, self.needs, self.hint = message, forbidden, needs, hint


def _refused(status: int, code: Any, message: str, data: Any) -> Refused | None:
    if status not in (401, 403) and code not in (UNAUTHENTICATED, FORBIDDEN):
        return None
    needs = data.get("needs") if isinstance(data, dict) else None
    return Refused(message or f"HTTP {status}", status == 403 or code == FORBIDDEN, needs)


class HttpProblem(Exception):
    """pierd answered with something that is neither a result nor an error object."""


class EventsExpired(Exception):
    """The events cursor is older than what pierd keeps; `oldest` is the oldest seq kept."""

    def __init__(self, oldest: int) -> None:
        super().__init__(f"events expired; oldest kept {oldest}")
        self.oldest = oldest


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class PierClient:
    """JSON-RPC calls and REST reads against pierd at `url` (http://, https:// or http+unix:///path),
    with `token` as `Authorization: Bearer` on every request and `tls` as the context for https."""

    def __init__(self, url: str, timeout: float = 30.0, *, token: str | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.token = token
        self._tls = tls
        parts = urllib.parse.urlsplit(self.url)
        self._scheme = parts.scheme
        self._netloc = parts.netloc
        self._prefix = "" if parts.scheme == "http+unix" else parts.path
        self._socket_path = urllib.parse.unquote(parts.netloc + parts.path) if parts.scheme == "http+unix" else ""
        if parts.scheme not in ("http", "https", "http+unix"):
            raise ValueError(f"cannot use --url {url}: it must start with http://, https:// or http+unix://")

    @property
    def tls(self) -> ssl.SSLContext | None:
        """The TLS context for https (None: the default one)."""
        return self._tls

    @property
    def prefix(self) -> str:
        """What goes before /api/v1 in a request's path (the --url's path)."""
        return self._prefix

    def open_connection(self, timeout: float) -> http.client.HTTPConnection:
        """A connection to pierd for a request the caller streams itself (pier upload, download)."""
        return self._connection(timeout)

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._scheme == "http+unix":
            return _UnixConnection(self._socket_path, timeout)
        if self._scheme == "https":
            return http.client.HTTPSConnection(self._netloc, timeout=timeout,
                                               context=self._tls or ssl.create_default_context())
        return http.client.HTTPConnection(self._netloc, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None,
                timeout: float | None = None) -> tuple[int, str, bytes]:
        """(status, content type, body) of one request; raises Unreachable when pierd does not answer."""
        timeout = self.timeout if timeout is None else timeout
        connection = self._connection(timeout)
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            connection.request(method, self._prefix + path, body=body, headers=headers)
            response = connection.getresponse()
            status, kind, raw = response.status, response.getheader("Content-Type", ""), response.read()
        except ConnectionRefusedError:
            raise Unreachable(self._down("connection refused")) from None
        except FileNotFoundError:
            raise Unreachable(self._down("no such socket")) from None
        except PermissionError:
            raise Refused(f"no permission to use the socket {self._socket_path}", hint="run pier as root or a "
                          f"member of pier-admin, or pass --token with --url https://{DEFAULT_HTTP}") from None
        except ssl.SSLError as exc:
            from pier.cli_security import tls_failure

            raise tls_failure(exc, self.url) from None
        except TimeoutError:
            raise Unreachable(f"pierd at {self.url} did not answer within {timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            if self._scheme == "http" and isinstance(exc, (ConnectionResetError, http.client.BadStatusLine)):
                reason += f" — if pierd speaks TLS there (its default), use --url https://{self._netloc}"
            raise Unreachable(f"cannot reach pierd at {self.url}: {reason}") from None
        finally:
            connection.close()
        if status == 400 and self._scheme == "http" and b"HTTPS" in raw and b"plain HTTP" in raw:
            raise Unreachable(f"pierd at {self.url} speaks TLS: use --url https://{self._netloc}")
        return status, kind, raw

    def _down(self, reason: str) -> str:
        return f"cannot reach pierd at {self.url}: {reason} — is pierd running? (start it with: pierd)"

    def call(self, verb: str, params: Any, timeout: float | None = None) -> Any:
        """The result of JSON-RPC `verb(params)`; raises RpcError with the error pierd answered."""
        message = {"jsonrpc": "2.0", "method": verb, "params": params, "id": 1}
        status, _, raw = self.request("POST", "/jsonrpc", json.dumps(message).encode(), timeout)
        try:
            reply = json.loads(raw)
        except ValueError:
            reply = None
        error = reply["error"] if isinstance(reply, dict) and isinstance(reply.get("error"), dict) else {}
        refused = _refused(status, error.get("code"), error.get("message", ""), error.get("data"))
        if refused is not None:
            raise refused
        if reply is None:
            raise HttpProblem(f"pierd answered HTTP {status} without JSON at {self.url}/jsonrpc")
        if error:
            raise RpcError(error.get("code"), _mapping(error.get("data")).get("name"), error.get("message", ""),
                           error.get("data"))
        if not isinstance(reply, dict) or "result" not in reply:
            raise HttpProblem(f"pierd answered HTTP {status} with no JSON-RPC result")
        return reply["result"]

    def get_json(self, path: str, query: dict[str, Any], timeout: float | None = None) -> Any:
        """GET a REST resource as JSON; raises EventsExpired on 410, RpcError on a problem answer."""
        status, _, raw = self.request("GET", f"{path}?{urllib.parse.urlencode(query)}", None, timeout)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if status == 200 and body is not None:
            return body
        problem = _mapping(body)
        data = _mapping(problem.get("data"))
        message = problem.get("detail") or problem.get("message")
        refused = _refused(status, problem.get("code"), message or "", data)
        if refused is not None:
            raise refused
        oldest = data.get("oldest", problem.get("oldest"))
        if status == 410 and isinstance(oldest, int):
            raise EventsExpired(oldest)
        if message:
            raise RpcError(problem.get("code", status), problem.get("name") or data.get("name") or problem.get("title"),
                           str(message), data)
        raise HttpProblem(f"GET {self.url}{path} answered HTTP {status}")


def _mapping(value: Any) -> dict[str, Any]:
    """`value` when an answer's JSON has an object there, else an empty one."""
    return value if isinstance(value, dict) else {}


def _load_schema() -> Any:
    from pier.rpc.schema import Schema

    return Schema.load()


def _out(text: str) -> None:
    print(text, flush=True)


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- verbs, help, call -------------------------------------------------------------------------


def cmd_verbs(client: PierClient, args: argparse.Namespace) -> int:
    verbs = list(_load_schema().verbs.values())
    if args.json:
        _out(fmt.compact_json([
            {"name": v.name, "summary": v.summary, "role": v.role, "readonly": v.readonly, "task": v.task,
             "params": list(v.params), "required": v.required,
             "rest": [{"method": r.method, "path": "/api/v1" + r.path} for r in v.rest],
             "legacy": [legacy.name for legacy in v.legacy]} for v in verbs]))
    else:
        _out(fmt.verbs_table(verbs))
    return EXIT_OK


def _resolve_or_explain(schema: Any, name: str) -> Any:
    verb = schema.resolve(name)
    if verb is None:
        import difflib

        close = difflib.get_close_matches(name, list(schema.verbs), n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        _err(f"pier: unknown verb {name}{hint} (`pier verbs` lists them)")
    return verb


def cmd_help(client: PierClient, args: argparse.Namespace) -> int:
    verb = _resolve_or_explain(_load_schema(), args.verb)
    if verb is None:
        return EXIT_FAILED
    _out(fmt.verb_help(verb))
    return EXIT_OK


def cmd_call(client: PierClient, args: argparse.Namespace) -> int:
    if args.help or not args.verb:
        if not args.verb:
            _out(args.parser.format_help())
            return EXIT_OK if args.help else EXIT_USAGE
        return cmd_help(client, args)
    need_schema = args.wait or any("=" in word for word in args.params)
    schema = _load_schema() if need_schema else None
    verb = schema.resolve(args.verb) if schema is not None else None
    try:
        params = fmt.parse_params(args.params, schema, verb, sys.stdin)
    except ValueError as exc:
        _err(f"pier: {exc}")
        return EXIT_USAGE
    result = client.call(args.verb, params)
    if args.wait and verb is not None and verb.task and isinstance(result, dict) and "taskID" in result:
        if not args.json:
            _out(f"task {result['taskID']} ({verb.name}) started")
        return wait_for_task(client, result["taskID"], args.timeout, args.json)
    if args.wait:
        _err(f"pier: {args.verb} is not a task verb; nothing to wait for")
    _out(fmt.compact_json(result) if args.json else fmt.pretty_json(result))
    return EXIT_OK


# -- convenience commands ----------------------------------------------------------------------


def cmd_vms(client: PierClient, args: argparse.Namespace) -> int:
    vms = client.call(CONVENIENCE_VERBS["vms"], {"fullStatus": True})
    _out(fmt.compact_json(vms) if args.json else fmt.vms_table(vms))
    return EXIT_OK


def cmd_storage(client: PierClient, args: argparse.Namespace) -> int:
    domains = client.call(CONVENIENCE_VERBS["storage"], {})
    _out(fmt.compact_json(domains) if args.json else fmt.storage_table(domains))
    return EXIT_OK


def cmd_net(client: PierClient, args: argparse.Namespace) -> int:
    caps = client.call(CONVENIENCE_VERBS["net"], {})
    _out(fmt.compact_json(caps) if args.json else fmt.networks_table(caps))
    return EXIT_OK


def cmd_host(client: PierClient, args: argparse.Namespace) -> int:
    caps = client.call(CONVENIENCE_VERBS["capabilities"], {})
    stats = client.call(CONVENIENCE_VERBS["stats"], {})
    _out(fmt.compact_json({"capabilities": caps, "stats": stats}) if args.json else fmt.host_summary(caps, stats))
    return EXIT_OK


def cmd_events(client: PierClient, args: argparse.Namespace) -> int:
    after = args.after
    wait = EVENTS_FOLLOW_WAIT if args.follow else 0.0
    while True:
        query: dict[str, Any] = {"wait": wait}
        if after is not None:
            query["after"] = after
        if args.types:
            query["types"] = args.types
        try:
            batch = client.get_json(EVENTS_PATH, query, timeout=wait + 30)
        except EventsExpired as exc:
            _err(f"pier: warning: events after {after} were lost (no longer kept); "
                 f"the oldest kept is {exc.oldest}; continuing from there")
            after = exc.oldest - 1
            continue
        events = batch.get("events", [])
        for event in events:
            _out(fmt.compact_json(event) if args.json else fmt.event_line(event))
        after = batch.get("last", after)
        if not events and not args.follow:
            return EXIT_OK


def wait_for_task(client: PierClient, task_id: str, timeout: float | None, as_json: bool) -> int:
    """Poll Task.getInfo (with `wait`) until the task ends: 0 succeeded, 1 failed/cancelled, 2 timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    shown = None
    while True:
        left = TASK_POLL_SLICE if deadline is None else max(0.0, min(TASK_POLL_SLICE, deadline - time.monotonic()))
        task = client.call(CONVENIENCE_VERBS["task.info"], {"taskID": task_id, "wait": round(left, 3)},
                           timeout=left + 30)
        progress = (task.get("progress"), task.get("message"), task.get("state"))
        if not as_json and progress != shown:
            _out(fmt.progress_line(task))
            shown = progress
        if task.get("state") not in ("pending", "running"):
            break
        if deadline is not None and time.monotonic() >= deadline:
            if as_json:
                _out(fmt.compact_json(task))
            _err(f"pier: task {task_id} is still {task.get('state')} after {timeout:g} s")
            return EXIT_TIMEOUT
    if as_json:
        _out(fmt.compact_json(task))
    if task["state"] == "succeeded":
        if not as_json:
            _out(f"task {task_id} succeeded")
            if task.get("result") not in (None, True):
                _out(fmt.pretty_json(task["result"]))
        return EXIT_OK
    error = task.get("error") or {}
    _err(f"pier: task {task_id} {task['state']}")
    if error:
        _err(fmt.error_line(error.get("code"), error.get("name"), error.get("message", "")))
    return EXIT_FAILED


def cmd_task(client: PierClient, args: argparse.Namespace) -> int:
    if args.task_command == "wait":
        return wait_for_task(client, args.id, args.timeout, args.json)
    if args.task_command == "list":
        tasks = client.call(CONVENIENCE_VERBS["task.list"], {})
        _out(fmt.compact_json(tasks) if args.json else fmt.tasks_table(tasks))
        return EXIT_OK
    verb = CONVENIENCE_VERBS["task.info" if args.task_command == "show" else f"task.{args.task_command}"]
    result = client.call(verb, {"taskID": args.id})
    if args.json:
        _out(fmt.compact_json(result))
    elif args.task_command == "clear":
        _out(f"task {args.id} cleared")
    else:
        _out(fmt.pretty_json(result))
    return EXIT_OK


# -- the command line --------------------------------------------------------------------------


def vm_actions(sub: Any, common: argparse.ArgumentParser) -> Any:
    """The `pier vm` parser's ACTION subparsers, made on first use: where the hand-written VM
    commands (snapshot, hibernate, migrate, move-disk) add themselves."""
    vm = sub.choices.get("vm") or sub.add_parser("vm", parents=[common], help="act on one VM")
    found = next((action for action in vm._actions if isinstance(action, argparse._SubParsersAction)), None)
    return found or vm.add_subparsers(dest="vm_command", metavar="ACTION", required=True)


def build_parser() -> argparse.ArgumentParser:
    from pier import cli_security, cli_transfer, cli_vm_snapshot, cli_volume

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help=f"pierd's address (default {cli_security.URL_HELP})")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output (compact JSON)")
    cli_security.add_credential_options(common, argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="pier", description="Talk to pierd, this node's agent.", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every command takes --url URL (http://, https:// or http+unix:///path/to/socket) and --json\n"
               f"(machine-readable output). --url defaults to {cli_security.URL_HELP}.\n"
               "Credentials: --token ($PIER_TOKEN); for https, --cert/--key ($PIER_CERT, $PIER_KEY), --ca ($PIER_CA).\n"
               "`pier verbs` lists the verbs; `pier help VERB` describes one.\n"
               "Exit status: 0 done, 1 failed, 2 usage error or timeout, 3 pierd unreachable, 4 refused.")
    parser.add_argument("--url", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", default=False, help=argparse.SUPPRESS)
    cli_security.add_credential_options(parser, None, hidden=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sub.add_parser("verbs", parents=[common], help="list every verb").set_defaults(run=cmd_verbs)
    helper = sub.add_parser("help", parents=[common], help="describe a verb: params, routes, errors")
    helper.add_argument("verb", nargs="?")
    helper.set_defaults(run=cmd_help)

    call = sub.add_parser("call", parents=[common], add_help=False, help="call any verb",
                          usage="pier call VERB [JSON | -] [key=value ...] [--wait [--timeout S]] [--json]")
    call.add_argument("verb", nargs="?")
    call.add_argument("params", nargs="*", help="a JSON object of params (- reads stdin), then key=value pairs")
    call.add_argument("-h", "--help", action="store_true", help="describe VERB (from the schema)")
    call.add_argument("--wait", action="store_true", help="for a task verb: wait for the task to end")
    call.add_argument("--timeout", type=float, metavar="S", help="with --wait: give up after S seconds (exit 2)")
    call.set_defaults(run=cmd_call, parser=call)

    sub.add_parser("vms", parents=[common], help="the VMs on this host").set_defaults(run=cmd_vms)
    sub.add_parser("host", parents=[common], help="a summary of this host").set_defaults(run=cmd_host)
    sub.add_parser("net", parents=[common], help="the host's networks, and its NICs, bonds, VLANs and bridges"
                   ).set_defaults(run=cmd_net)
    sub.add_parser("storage", parents=[common], help="the storage domains on this host's connections: type, "
                   "class, pool, free space, and whether each is valid").set_defaults(run=cmd_storage)

    events = sub.add_parser("events", parents=[common], help="print events (--follow to keep going)")
    events.add_argument("--after", type=int, metavar="SEQ", help="only events after this sequence number "
                        "(default: every event still kept)")
    events.add_argument("--types", metavar="T,...", help="only events whose name starts with one of these")
    events.add_argument("--follow", "-f", action="store_true", help="keep waiting for new events until Ctrl-C")
    events.set_defaults(run=cmd_events)

    task = sub.add_parser("task", parents=[common], help="list, show, wait for and stop tasks")
    task_sub = task.add_subparsers(dest="task_command", metavar="ACTION", required=True)
    wait = task_sub.add_parser("wait", parents=[common], help="wait for a task to end, showing its progress")
    wait.add_argument("id")
    wait.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds (exit 2)")
    task_sub.add_parser("list", parents=[common], help="every task pierd keeps")
    for action, text in (("show", "a task's state and result"), ("stop", "cancel a task"),
                         ("clear", "forget an ended task")):
        task_sub.add_parser(action, parents=[common], help=text).add_argument("id")
    task.set_defaults(run=cmd_task)
    cli_security.add_commands(sub, common)
    from pier import cli_console

    cli_console.add_commands(sub, common)
    cli_volume.add_commands(sub, common)
    cli_transfer.add_commands(sub, common)
    cli_vm_snapshot.add_commands(sub, common)
    from pier import cli_vm_move

    cli_vm_move.add_commands(sub, common)
    from pier import cli_backup

    cli_backup.add_commands(sub, common)
    from pier import cli_vm_migrate

    cli_vm_migrate.add_commands(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `pier` with `argv` (default: the process's arguments); returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "call":
        args.params += [word for word in extra if word == "-" or not word.startswith("-")]
        extra = [word for word in extra if word.startswith("-") and word != "-"]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None or (args.command == "help" and not args.verb):
        parser.print_help()
        return EXIT_OK if args.command == "help" else EXIT_USAGE
    if getattr(args, "local", False):  # needs no pierd (init-tls)
        return args.run(None, args)
    from pier import cli_security

    args.url = args.url or cli_security.default_url()
    try:
        client = PierClient(args.url, token=cli_security.token_of(args), tls=cli_security.tls_context(args))
    except ValueError as exc:
        _err(f"pier: {exc}")
        return EXIT_USAGE
    try:
        return args.run(client, args)
    except Refused as exc:
        sent = bool(client.token or cli_security.option(args, "cert"))
        _err("pier: " + fmt.refusal_line(exc.message, exc.forbidden, exc.needs, sent, exc.hint))
        return EXIT_REFUSED
    except RpcError as exc:
        _err(fmt.error_line(exc.code, exc.name, exc.message))
        if exc.code == -32601:
            _err("(`pier verbs` lists the verbs pierd serves)")
        return EXIT_FAILED
    except HttpProblem as exc:
        _err(f"pier: {exc}")
        return EXIT_FAILED
    except Unreachable as exc:
        _err(f"pier: {exc}")
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        _err("")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `pier events | head`: the reader is gone; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
