"""The `pier` CLI, run in-process against a real HTTP server on loopback over the real registry."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from pier import cli, cli_security, config
from pier.cli_format import parse_params
from pier.rpc.auth import Authenticator, Identity, fingerprint
from pier.rpc.errors import PierError, Unauthenticated
from pier.rpc.registry import CallContext
from pier.rpc.schema import Schema
from pier.tlsfiles import TlsFiles, init_tls
from pier.transports.http import HttpListener, WsgiApp, jsonrpc_app
from pier.transports.tls import ServerTls
from tests.unit.conftest import ADMIN, VM_ID, Stack

OTHER_VM = "6f1e3e4c-1111-4222-8333-777788889999"
UNKNOWN_VM = "6f1e3e4c-1111-4222-8333-000000000000"


def events_app(stack: Stack) -> WsgiApp:
    """A stand-in for the REST facade's events long-poll: GET /api/v1/events -> Events.poll."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ["PATH_INFO"] != "/api/v1/events":
            start_response("404 Not Found", [("Content-Type", "application/problem+json")])
            return [b'{"title": "not found", "status": 404}']
        query = parse_qs(environ.get("QUERY_STRING", ""))
        params: dict[str, Any] = {}
        if "after" in query:
            params["after"] = int(query["after"][0])
        if "types" in query:
            params["types"] = query["types"][0].split(",")
        if "wait" in query:
            params["wait"] = float(query["wait"][0])
        try:
            context = CallContext.for_wsgi(environ, "rest")
            body, status, kind = stack.registry.call("Events.poll", params, context), 200, "json"
        except PierError as exc:
            body = {"type": "about:blank", "title": exc.message, "status": exc.http_status, "detail": exc.message,
                    "code": exc.code, "name": exc.name, "data": exc.data}
            status, kind = exc.http_status, "problem+json"
        start_response(f"{status} X", [("Content-Type", f"application/{kind}")])
        return [json.dumps(body).encode()]

    return app


def test_net_tables_and_json(pier: Run, stack: Stack) -> None:
    code, out, _ = pier("net")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "no networks made by Pier on this host"
    assert lines[2].split() == ["DEVICE", "KIND", "MTU", "SPEED", "MEMBERS", "ADDRESSES"]
    assert lines[3].split() == ["eth0", "nic", "1500", "1000", "Mb/s", "-", "-"]
    stack.network.networks["pub"] = {"bridged": True, "iface": "pub", "southbound": "eth0", "mtu": "9000",
                                     "ipv4addrs": ["192.0.2.10/24"], "ipv6addrs": [], "gateway": "192.0.2.1"}
    code, out, _ = pier("net")
    assert [line.split() for line in out.splitlines()[:2]] == [
        ["NETWORK", "BRIDGED", "DEVICE", "ON", "MTU", "ADDRESSES", "GATEWAY"],
        ["pub", "yes", "pub", "eth0", "9000", "192.0.2.10/24", "192.0.2.1"]]
    code, out, _ = pier("net", "--json")
    assert json.loads(out)["networks"]["pub"]["southbound"] == "eth0"


class FakeAuthenticator:
    """Everyone is ADMIN, or (given a token) only callers with `Authorization: Bearer <token>`;
    remembers what the listener told it of the last caller."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.seen: dict[str, Any] = {}

    def identify(self, **seen: Any) -> Identity:
        self.seen = seen
        if self.token is None or seen.get("authorization") == f"Bearer {self.token}":
            return ADMIN
        raise Unauthenticated("no credentials: present a trusted client certificate or a bearer token")


class _CurrentStack:
    """Routes requests to the running test's stack (and authenticator), so one listener can serve
    the whole module."""

    stack: Stack
    authenticator: Any

    def identify(self, **seen: Any) -> Identity:
        return self.authenticator.identify(**seen)

    def jsonrpc(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return jsonrpc_app(self.stack.jsonrpc)(environ, start_response)

    def rest(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return events_app(self.stack)(environ, start_response)


@pytest.fixture(scope="module")
def listener() -> Iterator[tuple[HttpListener, _CurrentStack]]:
    current = _CurrentStack()
    server = HttpListener(("127.0.0.1", 0), {"/jsonrpc": current.jsonrpc}, current.rest, current)
    server.start()
    yield server, current
    server.stop()


@pytest.fixture
def gate(stack: Stack, listener: tuple[HttpListener, _CurrentStack]) -> _CurrentStack:
    """What the module's listener answers from: this test's stack and (by default) a fake
    authenticator that takes everyone as admin; a test may put another in `.authenticator`."""
    current = listener[1]
    current.stack, current.authenticator = stack, FakeAuthenticator()
    return current


@pytest.fixture
def pierd(gate: _CurrentStack, listener: tuple[HttpListener, _CurrentStack]) -> str:
    """The address of a real HTTP server answering from this test's stack."""
    return listener[0].address


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep this machine's pierd, sockets, CAs and PIER_* variables out of the tests; returns the
    state directory the CLI believes in (empty)."""
    for name in ("PIER_URL", "PIER_TOKEN", "PIER_CERT", "PIER_KEY", "PIER_CA"):
        monkeypatch.delenv(name, raising=False)
    state = tmp_path / "state"
    monkeypatch.setattr(cli_security, "ROOT_SOCKET", str(tmp_path / "run-pier.sock"))
    monkeypatch.setattr(cli_security, "ROOT_STATE_DIR", str(tmp_path / "root-state"))
    monkeypatch.setattr(cli_security, "default_state_dir", lambda: str(state))
    monkeypatch.setattr(cli_security, "default_unix_socket", lambda state_dir: str(Path(state_dir) / "pier.sock"))
    return state


@pytest.fixture(autouse=True)
def fast_schema(schema: Schema, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI loads the same schema; reuse the session's copy so each test stays quick."""
    monkeypatch.setattr(cli, "_load_schema", lambda: schema)


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def pier(pierd: str, capsys: pytest.CaptureFixture[str]) -> Run:
    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(["--url", pierd, *argv])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return code, out, err

    return run


def with_vm(stack: Stack, vm_id: str = VM_ID, name: str = "a") -> None:
    stack.call("VM.create", vmID=vm_id, vmParams={"vmName": name, "memSize": 64})


# -- verbs, help ---------------------------------------------------------------------------------


def test_verbs_table_lists_every_declared_verb(pier: Run, schema: Schema) -> None:
    code, out, _ = pier("verbs")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["VERB", "ROLE", "TASK", "SUMMARY"]
    assert [line.split()[0] for line in lines[1:]] == list(schema.verbs)
    shutdown = next(line for line in lines if line.startswith("VM.shutdown "))
    assert shutdown.split()[1:3] == ["operator", "task"]
    assert lines[0].index("SUMMARY") == shutdown.index(schema.verbs["VM.shutdown"].summary)


def test_verbs_json(pier: Run, schema: Schema) -> None:
    code, out, _ = pier("verbs", "--json")
    listed = json.loads(out)
    assert code == 0 and [verb["name"] for verb in listed] == list(schema.verbs)
    assert next(verb for verb in listed if verb["name"] == "VM.shutdown")["task"] is True


@pytest.fixture
def offline(capsys: pytest.CaptureFixture[str]) -> Run:
    """Runs commands that need no pierd (help) against an address nothing listens on."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(["--url", "http://127.0.0.1:9", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.mark.parametrize("verb_name", list(Schema.load().verbs))
def test_call_help_describes_the_verb_from_the_schema(offline: Run, schema: Schema, verb_name: str) -> None:
    verb = schema.verbs[verb_name]
    code, out, _ = offline("call", verb_name, "--help")
    assert code == 0
    assert out.startswith(f"{verb_name} - {verb.summary}")
    params_table = out.split("params:", 1)[-1].splitlines()
    for name, spec in verb.params.items():
        row = next(line for line in params_table if line.split()[:1] == [name])
        assert spec.get("description", "") in row
        assert ("required" in row) == (name in verb.required)
    for route in verb.rest:
        assert f"{route.method} /api/v1{route.path}" in out
    assert offline("help", verb_name)[1] == out


def test_help_shows_types_and_defaults(offline: Run) -> None:
    out = offline("help", "VM.shutdown")[1]
    assert "timeout  integer (0 to 86400)  default 120" in out
    assert "vmID     UUID                  required" in out
    assert "POST /api/v1/vms/{vmID}/shutdown (answers 202)" in out
    assert "errors          1 noVM, 6 down, 40 unavail" in out


def test_help_of_an_unknown_verb_suggests_close_names(offline: Run) -> None:
    code, _, err = offline("help", "VM.shutdwn")
    assert code == 1 and "unknown verb VM.shutdwn; did you mean VM.shutdown?" in err


def test_convenience_commands_only_use_declared_verbs_and_params(schema: Schema) -> None:
    for verb_name in cli.CONVENIENCE_VERBS.values():
        assert verb_name in schema.verbs
    assert "fullStatus" in schema.verbs[cli.CONVENIENCE_VERBS["vms"]].params
    assert {"taskID", "wait"} <= set(schema.verbs[cli.CONVENIENCE_VERBS["task.info"]].params)
    for action in ("task.stop", "task.clear"):
        assert schema.verbs[cli.CONVENIENCE_VERBS[action]].required == ["taskID"]


# -- call ------------------------------------------------------------------------------------------


def test_call_with_a_json_object(pier: Run, stack: Stack) -> None:
    params = json.dumps({"vmID": VM_ID, "vmParams": {"vmName": "web", "memSize": 64}})
    code, out, _ = pier("call", "VM.create", params)
    assert code == 0 and json.loads(out)["vmName"] == "web"
    assert out.startswith("{\n  ")  # pretty for people
    assert stack.vms.records[VM_ID]["vmName"] == "web"


def test_call_with_key_value_pairs(pier: Run, stack: Stack) -> None:
    code, _, _ = pier("call", "VM.create", f"vmID={VM_ID}", "vmParams.vmName=db", "vmParams.memSize=64")
    assert code == 0 and stack.vms.records[VM_ID]["vmName"] == "db"
    code, out, _ = pier("call", "VM.pause", f"vmID={VM_ID}", "--json")
    assert code == 0 and json.loads(out)["status"] == "Paused" and "\n" not in out.strip()
    code, out, _ = pier("call", "--json", "Host.getVMList", "onlyUUID=true")
    assert json.loads(out) == [VM_ID]


def test_call_reads_params_from_stdin(pier: Run, stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    with_vm(stack)
    monkeypatch.setattr("sys.stdin", io.StringIO('{"onlyUUID": true}'))
    code, out, _ = pier("call", "Host.getVMList", "-")
    assert code == 0 and json.loads(out) == [VM_ID]


def test_key_value_types_follow_the_schema(schema: Schema) -> None:
    verb = schema.verbs["VM.shutdown"]
    params = parse_params([f"vmID={VM_ID}", "message=42", "timeout=5", "force=true", "reboot=no"], schema, verb)
    assert params == {"vmID": VM_ID, "message": "42", "timeout": 5, "force": True, "reboot": "no"}
    nested = parse_params(['{"vmID": "x"}', "vmParams.vmName=1", "vmParams.memSize=64"], schema,
                          schema.verbs["VM.create"])
    assert nested == {"vmID": "x", "vmParams": {"vmName": "1", "memSize": 64}}


def test_bad_params_on_the_command_line_are_a_usage_error(offline: Run) -> None:
    code, _, err = offline("call", "VM.pause", "vmID")
    assert code == 2 and "expected key=value or a JSON object, got 'vmID'" in err
    code, _, err = offline("call", "VM.pause", "{not json")
    assert code == 2 and "params are not valid JSON" in err


def test_unknown_vm_prints_the_vdsm_error(pier: Run) -> None:
    code, out, err = pier("call", "VM.getInfo", f"vmID={UNKNOWN_VM}")
    assert code == 1 and out == ""
    assert err.startswith(f"error 1 noVM: Virtual machine does not exist: {UNKNOWN_VM}")


def test_unknown_verb_prints_method_not_found(pier: Run) -> None:
    code, _, err = pier("call", "VM.fly", f"vmID={VM_ID}")
    assert code == 1
    assert err.splitlines()[0] == "error -32601 MethodNotFound: Method not found: VM.fly"


def test_invalid_params_name_the_field(pier: Run) -> None:
    code, _, err = pier("call", "VM.getInfo", "vmID=not-a-uuid")
    assert code == 1 and err.startswith("error -32602 InvalidParams: ") and "vmID" in err


def test_unreachable_pierd_says_so_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    assert cli.main(["--url", url, "vms"]) == 3
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"pier: cannot reach pierd at {url}: connection refused — is pierd running? "
                   "(start it with: pierd)\n")


def test_url_comes_from_the_environment(pierd: str, stack: Stack, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with_vm(stack)
    monkeypatch.setenv("PIER_URL", pierd)
    assert cli.main(["vms", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["vmId"] == VM_ID


def test_unix_socket_url(stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with_vm(stack)
    authenticator = FakeAuthenticator()
    listener = HttpListener(str(tmp_path / "pier.sock"), {"/jsonrpc": jsonrpc_app(stack.jsonrpc)}, events_app(stack),
                            authenticator)
    listener.start()
    try:
        assert listener.address == f"http+unix://{tmp_path / 'pier.sock'}"
        assert cli.main(["--url", listener.address, "vms", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)[0]["vmId"] == VM_ID
        assert authenticator.seen["peer_uid"] == os.getuid()  # pierd knows who is calling, without a token
        assert cli.main(["--url", listener.address, "events", "--json"]) == 0
        assert json.loads(capsys.readouterr().out.splitlines()[-1])["name"].startswith("|virt|VM_status|")
    finally:
        listener.stop()


# -- vms, host ---------------------------------------------------------------------------------


def test_vms_table_and_json(pier: Run, stack: Stack) -> None:
    assert pier("vms")[1].strip() == "no VMs on this host"
    with_vm(stack, VM_ID, "web")
    with_vm(stack, OTHER_VM, "db")
    code, out, _ = pier("vms")
    assert code == 0
    assert [line.split() for line in out.splitlines()] == [
        ["VM", "ID", "NAME", "STATUS"], [OTHER_VM, "db", "Up"], [VM_ID, "web", "Up"]]
    code, out, _ = pier("vms", "--json")
    assert {vm["vmId"]: vm["vmName"] for vm in json.loads(out)} == {VM_ID: "web", OTHER_VM: "db"}


def test_host_summary_and_json(pier: Run, stack: Stack) -> None:
    with_vm(stack)
    code, out, _ = pier("host")
    assert code == 0
    facts = {line[:9].strip(): line[9:].strip() for line in out.splitlines()}
    assert facts["host id"] == stack.host.uuid()
    assert facts["memory"] == "1024 MiB" and facts["kvm"] == "enabled" and facts["vms"] == "1"
    code, out, _ = pier("--json", "host")
    assert json.loads(out)["capabilities"]["cpuCores"] == "2" and json.loads(out)["stats"]["vmCount"] == 1


# -- events --------------------------------------------------------------------------------------


def test_events_listing_with_after_and_types(pier: Run, stack: Stack) -> None:
    with_vm(stack)
    marker = stack.events.publish("|test|marker|1", {"note": "hello"})
    code, out, _ = pier("events")
    lines = out.splitlines()
    assert code == 0 and len(lines) == stack.events.last_seq
    assert lines[-1].split(None, 4)[0] == str(marker.seq) and lines[-1].split()[3] == "|test|marker|1"
    assert lines[-1].endswith('{"note":"hello","notify_time":' + str(marker.params["notify_time"]) + "}")
    code, out, _ = pier("events", "--types", "virt.VM_status", "--json")
    statuses = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and statuses and all(e["name"] == f"|virt|VM_status|{VM_ID}" for e in statuses)
    code, out, _ = pier("events", "--after", str(marker.seq - 1), "--json")
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [marker.seq]
    assert pier("events", "--after", str(marker.seq)) == (0, "", "")


def test_events_warn_when_some_were_lost(pier: Run, stack: Stack) -> None:
    stack.events.max_events = 2
    for number in range(5):
        stack.events.publish(f"|test|n|{number}", {})
    stack.events.prune()
    code, out, err = pier("events", "--after", "0")
    assert code == 0
    assert f"events after 0 were lost (no longer kept); the oldest kept is {stack.events.oldest_seq}" in err
    assert [line.split()[3] for line in out.splitlines()] == ["|test|n|3", "|test|n|4"]


def test_events_follow_keeps_polling_until_interrupted(pier: Run, stack: Stack,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "EVENTS_FOLLOW_WAIT", 0.2)
    first = stack.events.publish("|test|first|1", {})
    seen: list[str] = []

    def out(text: str) -> None:
        seen.append(text)
        if len(seen) == 1:  # the next one arrives while the CLI is waiting
            threading.Timer(0.5, stack.events.publish, ("|test|later|1", {})).start()
        else:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_out", out)
    code, _, _ = pier("events", "--follow", "--after", str(first.seq - 1), "--types", "test")
    assert code == 130
    assert [line.split()[3] for line in seen] == ["|test|first|1", "|test|later|1"]


# -- tasks -----------------------------------------------------------------------------------------


def start_shutdown(pier: Run, *params: str) -> str:
    code, out, _ = pier("call", "VM.shutdown", f"vmID={VM_ID}", *params, "--json")
    assert code == 0
    return json.loads(out)["taskID"]


def test_task_wait_on_a_forced_shutdown_succeeds(pier: Run, stack: Stack) -> None:
    with_vm(stack)
    task_id = start_shutdown(pier, "timeout=0", "force=true")
    code, out, _ = pier("task", "wait", task_id)
    assert code == 0
    assert f"task {task_id} succeeded" in out and '"status": "Down"' in out
    assert re.match(r" *\d+% \S", out.splitlines()[0])  # progress first
    code, out, _ = pier("task", "wait", task_id, "--json")
    assert code == 0 and json.loads(out)["state"] == "succeeded"


def test_task_wait_on_a_failed_shutdown_prints_the_error(pier: Run, stack: Stack) -> None:
    with_vm(stack)
    task_id = start_shutdown(pier, "timeout=0")
    code, _, err = pier("task", "wait", task_id)
    assert code == 1
    assert f"pier: task {task_id} failed" in err and "error 19 nonresp: the guest of VM" in err


def test_call_wait_follows_the_task(pier: Run, stack: Stack) -> None:
    with_vm(stack)
    code, out, _ = pier("call", "VM.shutdown", f"vmID={VM_ID}", "timeout=0", "force=true", "--wait")
    assert code == 0
    assert out.splitlines()[0].endswith("(VM.shutdown) started") and "succeeded" in out
    assert stack.vms.records[VM_ID]["status"] == "Down"


def test_task_wait_times_out_then_stop_cancels(pier: Run, stack: Stack) -> None:
    with_vm(stack)
    task_id = start_shutdown(pier, "delay=30")
    code, out, err = pier("task", "wait", task_id, "--timeout", "0.3")
    assert code == 2 and f"task {task_id} is still running after 0.3 s" in err
    assert "waiting 30 s before asking the guest" in out
    code, out, _ = pier("task", "stop", task_id)
    assert code == 0 and json.loads(out)["taskID"] == task_id
    code, _, err = pier("task", "wait", task_id, "--timeout", "5")
    assert code == 1 and f"task {task_id} cancelled" in err


def test_task_list_show_and_clear(pier: Run, stack: Stack) -> None:
    assert pier("task", "list")[1].strip() == "no tasks"
    with_vm(stack)
    task_id = start_shutdown(pier, "timeout=0", "force=true")
    assert pier("task", "wait", task_id)[0] == 0
    code, out, _ = pier("task", "list")
    header, row = out.splitlines()
    assert header.split()[:5] == ["TASK", "ID", "VERB", "TARGET", "STATE"]
    assert row.split()[:5] == [task_id, "VM.shutdown", VM_ID, "succeeded", "100%"]
    assert task_id in json.loads(pier("task", "list", "--json")[1])
    assert json.loads(pier("task", "show", task_id)[1])["verb"] == "VM.shutdown"
    assert pier("task", "clear", task_id) == (0, f"task {task_id} cleared\n", "")
    code, _, err = pier("task", "show", task_id)
    assert code == 1 and err.startswith("error 401 UnknownTask")


def test_wait_on_a_verb_that_is_not_a_task_just_prints_the_result(pier: Run) -> None:
    code, out, err = pier("call", "Host.ping2", "--wait")
    assert code == 0 and out == "true\n" and "Host.ping2 is not a task verb" in err


def test_a_url_that_is_not_http_is_a_usage_error(offline: Run) -> None:
    code, _, err = offline("--url", "ftp://example.org", "vms")
    assert code == 2 and "it must start with http://, https:// or http+unix://" in err


# -- where pier connects ---------------------------------------------------------------------------


def bound_socket(path: Path) -> socket.socket:
    """A unix socket file at `path` that nobody accepts on (connecting to it is refused)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    return sock


def test_default_url_is_the_environment_then_the_local_socket_then_tcp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # pier.config's own rules for a user who is not root: STATE_DIR is $XDG_STATE_HOME/pier
    monkeypatch.setattr(cli_security, "default_state_dir", config.default_state_dir)
    monkeypatch.setattr(cli_security, "default_unix_socket", config.default_unix_socket)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    root_socket, user_socket = tmp_path / "run-pier.sock", tmp_path / "xdg" / "pier" / "pier.sock"
    assert cli_security.default_url() == cli.DEFAULT_URL == "http://127.0.0.1:8042"
    user_socket.parent.mkdir(parents=True)
    user_socket.write_text("not a socket")
    assert cli_security.default_url() == cli.DEFAULT_URL
    user_socket.unlink()
    with bound_socket(user_socket), bound_socket(root_socket):
        assert cli_security.default_url() == f"http+unix://{root_socket}"
        root_socket.unlink()
        assert cli_security.default_url() == f"http+unix://{user_socket}"
        monkeypatch.setenv("PIER_URL", "https://node1:8042")
        assert cli_security.default_url() == "https://node1:8042"


def test_unreachable_names_the_url_it_chose(isolated: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        monkeypatch.setattr(cli, "DEFAULT_URL", f"http://127.0.0.1:{probe.getsockname()[1]}")
    assert cli.main(["vms"]) == 3
    assert f"pier: cannot reach pierd at {cli.DEFAULT_URL}: connection refused" in capsys.readouterr().err
    with bound_socket(isolated / "pier.sock"):
        assert cli.main(["vms"]) == 3
    assert capsys.readouterr().err.startswith(
        f"pier: cannot reach pierd at http+unix://{isolated / 'pier.sock'}: connection refused — is pierd running?")


def test_local_socket_is_used_by_default(stack: Stack, isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with_vm(stack)
    isolated.mkdir()
    listener = HttpListener(str(isolated / "pier.sock"), {"/jsonrpc": jsonrpc_app(stack.jsonrpc)},
                            events_app(stack), FakeAuthenticator())
    listener.start()
    try:
        assert cli.main(["vms", "--json"]) == 0
    finally:
        listener.stop()
    assert json.loads(capsys.readouterr().out)[0]["vmId"] == VM_ID


# -- credentials -----------------------------------------------------------------------------------

TOKEN = "pier_0123456789ab_sEcReT"
NO_CREDENTIALS = ("pier: pierd refused the call: no credentials: present a trusted client certificate or a bearer "
                  "token — pass --token (an admin makes one with 'pier token create --role viewer') or use the "
                  "local socket as root\n")


def test_the_refusal_does_not_repeat_pierds_advice(pier: Run, gate: _CurrentStack, stack: Stack) -> None:
    gate.authenticator = Authenticator(stack.credentials)
    code, _, err = pier("vms")
    assert code == 4 and err == (
        "pier: pierd refused the call: no credentials: present a trusted client certificate or a bearer token (an "
        "admin makes one with 'pier token create --role viewer') — pass --token (see above) or use the local socket "
        "as root\n")


def test_the_token_goes_with_every_request(pier: Run, gate: _CurrentStack, stack: Stack,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    with_vm(stack)
    gate.authenticator = FakeAuthenticator(TOKEN)
    assert pier("vms") == (4, "", NO_CREDENTIALS)
    assert pier("events")[0] == 4  # the REST long-poll too
    assert pier("--token", TOKEN, "vms")[0] == 0
    code, out, _ = pier("vms", "--token", TOKEN, "--json")
    assert code == 0 and json.loads(out)[0]["vmId"] == VM_ID
    assert pier("events", "--token", TOKEN)[0] == 0
    monkeypatch.setenv("PIER_TOKEN", TOKEN)
    assert pier("call", "Host.ping2")[:2] == (0, "true\n")
    assert pier("--token", "pier_0123456789ab_wrong", "vms")[0] == 4  # the option wins over the variable
    code, _, err = pier("--token", "two words", "vms")
    assert code == 2 and "a token is one word" in err


def admin_token(stack: Stack) -> str:
    made = stack.call("Token.create", role="admin", name="first admin")
    assert isinstance(made, dict)
    return str(made["token"])


def test_token_create_list_revoke_against_the_real_authenticator(pier: Run, gate: _CurrentStack,
                                                                 stack: Stack) -> None:
    gate.authenticator = Authenticator(stack.credentials)
    admin = admin_token(stack)
    code, out, _ = pier("--token", admin, "token", "create", "--role", "viewer", "--name", "ci", "--expires", "30")
    assert code == 0
    viewer = re.search(r"^    (pier_\S+)$", out, re.M).group(1)  # type: ignore[union-attr]
    viewer_id = viewer.split("_")[1]
    assert f"token {viewer_id} \"ci\", role viewer, expires " in out
    assert f"export PIER_TOKEN={viewer}" in out and "the only time it is shown" in out
    assert pier("--token", viewer, "vms")[0] == 0
    code, _, err = pier("--token", viewer, "token", "list")
    assert code == 4 and err.startswith("pier: pierd refused the call: Token.list needs the admin role")
    assert "pass a --token or --cert that has it (an admin makes one with 'pier token create --role admin')" in err
    code, out, _ = pier("--token", admin, "token", "list")
    header, *rows = out.splitlines()
    assert code == 0 and header.split() == ["TOKEN", "ID", "ROLE", "CREATED", "EXPIRES", "STATE", "NAME"]
    assert [row.split()[0] for row in rows] == [admin.split("_")[1], viewer_id]
    assert rows[0].split()[-4:] == ["never", "active", "first", "admin"] and rows[1].endswith("active  ci")
    assert pier("--token", admin, "token", "revoke", viewer) == (0, f"token {viewer_id} revoked\n", "")
    code, _, err = pier("--token", viewer, "vms")
    assert code == 4 and err.startswith(f"pier: pierd refused the call: token {viewer_id} was revoked — "
                                        "pass a valid --token")
    listed = json.loads(pier("--token", admin, "token", "list", "--json")[1])
    assert [t["revoked"] is not None for t in listed] == [False, True]
    assert "revoked" in pier("--token", admin, "token", "list")[1].splitlines()[2]
    code, _, err = pier("--token", admin, "token", "revoke", viewer_id)
    assert code == 1 and f"no active token '{viewer_id}'" in err
    code, out, _ = pier("--token", admin, "token", "create", "--role", "operator", "--json")
    assert code == 0 and json.loads(out)["token"].startswith("pier_") and json.loads(out)["expires"] is None
    code, _, err = pier("--token", admin, "token", "create", "--role", "root")
    assert code == 1 and err.startswith("error -32602 InvalidParams: ") and "role" in err
    # The audit log holds the ID, never a whole token pasted on the command line.
    assert viewer not in json.dumps(stack.audit.read(0, 100))


# -- trust -----------------------------------------------------------------------------------------


def test_trust_add_list_remove(pier: Run, stack: Stack, tmp_path: Path) -> None:
    files = init_tls(tmp_path / "tls", "node1.example")
    expected = fingerprint(ssl.PEM_cert_to_DER_cert(files.client.read_text()))
    code, out, _ = pier("trust", "add", str(files.client), "--role", "operator", "--name", "bob")
    assert code == 0 and out.splitlines()[0] == "trusted bob as operator"
    assert f"fingerprint  {expected}" in out and "CN=pier-admin" in out
    assert stack.credentials.certificate_identity(ssl.PEM_cert_to_DER_cert(files.client.read_text())).role == "operator"
    code, out, _ = pier("trust", "list")
    header, row = out.splitlines()
    assert header.split() == ["FINGERPRINT", "ROLE", "VALID", "UNTIL", "ADDED", "NAME"]
    assert row.split()[:2] == [expected, "operator"] and row.endswith("bob")
    assert json.loads(pier("trust", "list", "--json")[1])[0]["fingerprint"] == expected
    code, _, err = pier("trust", "remove", "00:11")
    assert code == 1 and "no trusted certificate starts with 00:11" in err
    assert pier("trust", "remove", expected[:8]) == (0, f"certificate {expected} is no longer trusted\n", "")
    assert pier("trust", "list")[1] == "no trusted certificates\n"
    code, _, err = pier("trust", "remove", expected.replace(":", "").lower())
    assert code == 1 and "no trusted certificate" in err


def test_trust_add_sends_the_certificate_and_never_the_key(pier: Run, stack: Stack, tmp_path: Path) -> None:
    files = init_tls(tmp_path / "tls")
    both = tmp_path / "both.pem"
    both.write_text(files.client_key.read_text() + files.client.read_text())
    code, out, _ = pier("trust", "add", str(both), "--role", "admin", "--json")
    assert code == 0 and json.loads(out)["role"] == "admin" and json.loads(out)["name"] == "CN=pier-admin,O=Pier"
    logged = json.dumps(stack.audit.read(0, 100))
    assert "Trust.add" in logged and "PRIVATE KEY" not in logged
    code, _, err = pier("trust", "add", str(files.client_key), "--role", "admin")
    assert code == 2 and "holds no PEM certificate" in err
    code, _, err = pier("trust", "add", str(tmp_path / "missing.pem"), "--role", "admin")
    assert code == 2 and "cannot read" in err and "No such file" in err


# -- audit -----------------------------------------------------------------------------------------


def test_audit_table_and_json(pier: Run, stack: Stack) -> None:
    assert pier("audit") == (0, "no audit entries\n", "")
    assert pier("call", "VM.create", f"vmID={VM_ID}", "vmParams.vmName=web", "vmParams.memSize=64")[0] == 0
    assert pier("call", "VM.pause", f"vmID={VM_ID}")[0] == 0
    assert pier("call", "VM.pause", f"vmID={UNKNOWN_VM}")[0] == 1
    assert pier("vms")[0] == 0  # reads are not audited
    code, out, _ = pier("audit")
    header, *rows = out.splitlines()
    assert code == 0 and header.split() == ["SEQ", "TIME", "WHO", "VIA", "PEER", "VERB", "TARGET", "OUTCOME"]
    cells = [re.split(r"\s{2,}", row.strip()) for row in rows]
    assert [(c[0], c[2], c[3], c[5], c[6]) for c in cells] == [
        ("1", "test admin", "http", "VM.create", VM_ID), ("2", "test admin", "http", "VM.pause", VM_ID),
        ("3", "test admin", "http", "VM.pause", UNKNOWN_VM)]
    assert cells[0][7] == "ok" and cells[2][7].startswith("noVM: Virtual machine does not exist")
    assert [len(row.split(VM_ID)[0]) for row in rows[:2]] == [header.index("TARGET")] * 2  # columns line up
    code, out, _ = pier("audit", "--json", "--verb", "VM.pause", "--after", "2")
    entries = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [(e["seq"], e["outcome"]) for e in entries] == [(3, "noVM")]
    assert entries[0]["params"] == {"vmID": UNKNOWN_VM} and entries[0]["role"] == "admin"
    assert [json.loads(line)["seq"] for line in pier("audit", "--json", "--limit", "2")[1].splitlines()] == [1, 2]
    with pytest.raises(SystemExit) as usage:
        pier("audit", "--limit", "0")
    assert usage.value.code == 2
    assert [json.loads(line)["seq"] for line in pier("audit", "--json", "--last", "2")[1].splitlines()] == [2, 3]
    code, out, _ = pier("audit", "--last", "1", "--verb", "VM.create")
    assert code == 0 and len(out.splitlines()) == 2 and VM_ID in out.splitlines()[1]
    with pytest.raises(SystemExit) as usage:
        pier("audit", "--last", "2", "--limit", "2")
    assert usage.value.code == 2
    assert pier("audit", "--refused")[:2] == (0, "no audit entries\n")
    for _ in range(3):
        assert pier("call", "VM.pause", "vmID=not-a-uuid")[0] != 0
    code, out, _ = pier("audit", "--refused", "--json")
    refused = [json.loads(line) for line in out.splitlines()]
    assert [(e["verb"], e["outcome"], e["count"], e["refused"]) for e in refused] == [
        ("VM.pause", "InvalidParams", 3, True)]
    row = pier("audit", "--refused")[1].splitlines()[1]
    assert "refused 3x InvalidParams: " in row


def test_audit_limit_must_be_positive(offline: Run, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as usage:
        offline("audit", "--limit", "0")
    assert usage.value.code == 2 and "'0' is not a whole number above 0" in capsys.readouterr().err


def test_audit_pages_through_everything(pier: Run, stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_security, "AUDIT_PAGE", 2)
    for number in range(5):
        stack.audit.record(who="w", role="admin", via="test", peer="", verb=f"V.{number}", target=None,
                           params={}, outcome="ok")
    assert [json.loads(line)["seq"] for line in pier("audit", "--json")[1].splitlines()] == [1, 2, 3, 4, 5]
    assert [json.loads(line)["seq"] for line in pier("audit", "--json", "--limit", "3")[1].splitlines()] == [1, 2, 3]


@pytest.mark.parametrize("args, made, then, shown", [
    (["--follow"], ["VM.create"], "VM.pause", ["VM.create", "VM.pause"]),
    (["--last", "1", "--follow"], ["VM.create", "VM.pause"], "VM.cont", ["VM.pause", "VM.cont"]),
], ids=["follow", "last then follow"])
def test_audit_follow_polls_from_the_last_entry(pier: Run, stack: Stack, monkeypatch: pytest.MonkeyPatch,
                                                 args: list[str], made: list[str], then: str,
                                                 shown: list[str]) -> None:
    monkeypatch.setattr(cli_security, "AUDIT_FOLLOW_INTERVAL", 0.05)
    for verb in made:
        stack.call(verb, vmID=VM_ID, **({"vmParams": {"vmName": "a", "memSize": 64}} if verb == "VM.create" else {}))
    seen: list[str] = []

    def out(text: str) -> None:
        seen.append(text)
        if len(seen) == 2:  # the header and the first entry: the next call comes while following
            threading.Timer(0.2, stack.call, (then,), {"vmID": VM_ID}).start()
        elif len(seen) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_out", out)
    assert pier("audit", *args)[0] == 130
    assert seen[0].split()[0] == "SEQ"
    assert [re.split(r"\s{2,}", line.strip())[5] for line in seen[1:]] == shown


# -- init-tls --------------------------------------------------------------------------------------


def test_init_tls_writes_the_files_and_does_not_overwrite_them(offline: Run, tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    code, out, _ = offline("init-tls", "--dir", str(directory), "--hostname", "node1.example")
    files = TlsFiles(directory)
    assert code == 0
    for path in (files.ca, files.server, files.server_key, files.client, files.client_key):
        assert path.exists() and str(path) in out
    assert (files.client_key.stat().st_mode & 0o777) == 0o600
    assert f"pier trust add {files.client} --role admin" in out
    assert f"--cert {files.client} --key {files.client_key} --ca {files.ca}" in out
    assert "for node1.example, localhost" in out
    before = files.server.read_bytes()
    code, _, err = offline("init-tls", "--dir", str(directory))
    assert code == 1 and err == f"pier: {files.server} already exists (use --force to replace it)\n"
    assert files.server.read_bytes() == before
    code, out, _ = offline("init-tls", "--dir", str(directory), "--force", "--json")
    assert code == 0 and json.loads(out)["client"] == str(files.client) and files.server.read_bytes() != before


def test_init_tls_defaults_to_the_state_directory(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["init-tls", "--hostname", "h"]) == 0
    assert TlsFiles(isolated / "tls").exist() and f"in {isolated / 'tls'}:" in capsys.readouterr().out


# -- TLS -------------------------------------------------------------------------------------------


@pytest.fixture
def https(stack: Stack, tmp_path: Path) -> Iterator[tuple[str, TlsFiles, FakeAuthenticator]]:
    """pierd's HTTP listener with TLS (mutual TLS optional), as pierd sets it up from init-tls files."""
    files = init_tls(tmp_path / "server-tls", "localhost")
    tls = ServerTls(str(files.server), str(files.server_key), str(files.ca))
    authenticator = FakeAuthenticator(TOKEN)
    listener = HttpListener(("127.0.0.1", 0), {"/jsonrpc": jsonrpc_app(stack.jsonrpc)}, events_app(stack),
                            authenticator, tls=tls)
    listener.start()
    yield listener.address, files, authenticator
    listener.stop()


def pier_lines(capsys: pytest.CaptureFixture[str]) -> str:
    """What pier wrote to stderr, without what cheroot logs there about refused handshakes."""
    return "".join(line for line in capsys.readouterr().err.splitlines(True) if line.startswith("pier:"))


def test_https_with_a_client_certificate_and_a_ca(https: tuple[str, TlsFiles, FakeAuthenticator], stack: Stack,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    url, files, authenticator = https
    authenticator.token = None
    with_vm(stack)
    client = ["--cert", str(files.client), "--key", str(files.client_key)]
    assert cli.main(["--url", url, "--ca", str(files.ca), *client, "vms", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["vmId"] == VM_ID
    assert authenticator.seen["certificate"] == ssl.PEM_cert_to_DER_cert(files.client.read_text())
    assert cli.main(["--url", url, "--ca", str(files.ca), "vms"]) == 0  # no certificate: none is presented
    assert authenticator.seen["certificate"] is None
    capsys.readouterr()
    assert cli.main(["--url", url, "vms"]) == 3
    err = pier_lines(capsys)
    assert err.startswith(f"pier: cannot trust pierd's certificate at {url}: ") and "— pass --ca FILE" in err
    assert cli.main(["--url", url, "--ca", str(files.client_key), "vms"]) == 2
    assert pier_lines(capsys).startswith(f"pier: cannot use --ca {files.client_key}: ")
    assert cli.main(["--url", url, "--ca", str(files.ca), "--cert", str(files.ca), "vms"]) == 2
    assert pier_lines(capsys).startswith(f"pier: cannot use --cert {files.ca}: ")
    assert cli.main(["--url", url, "--key", str(files.client_key), "vms"]) == 2
    assert pier_lines(capsys) == "pier: --key goes with --cert\n"


def test_a_client_certificate_pierd_does_not_know_is_refused(https: tuple[str, TlsFiles, FakeAuthenticator],
                                                             tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, files, _ = https
    stranger = init_tls(tmp_path / "elsewhere", "elsewhere.example")
    argv = ["--url", url, "--ca", str(files.ca), "--cert", str(stranger.client), "--key", str(stranger.client_key)]
    assert cli.main([*argv, "vms"]) == 4
    err = pier_lines(capsys)  # TLS 1.3: an alert, or the connection closed, after the client's handshake ends
    assert err.startswith("pier: pierd refused the call: the TLS handshake failed (")
    assert err.endswith("— pierd takes client certificates signed by its CA or trusted with "
                        "'pier trust add CERT.pem --role ROLE'\n")


def test_https_trusts_pierds_own_ca_and_takes_the_options_from_the_environment(
        https: tuple[str, TlsFiles, FakeAuthenticator], isolated: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    url, files, authenticator = https
    (isolated / "tls").mkdir(parents=True)
    (isolated / "tls" / "ca.pem").write_bytes(files.ca.read_bytes())  # as pierd leaves it at its first start
    assert cli.main(["--url", url, "vms"]) == 4
    assert pier_lines(capsys) == NO_CREDENTIALS
    monkeypatch.setenv("PIER_URL", url)
    monkeypatch.setenv("PIER_TOKEN", TOKEN)
    assert cli.main(["vms"]) == 0
    authenticator.token = None
    monkeypatch.setenv("PIER_CERT", str(files.client))
    monkeypatch.setenv("PIER_KEY", str(files.client_key))
    assert cli.main(["vms"]) == 0 and authenticator.seen["certificate"]


def test_plain_http_to_a_tls_port_says_so(https: tuple[str, TlsFiles, FakeAuthenticator],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    url = https[0]
    plain = url.replace("https://", "http://")
    assert cli.main(["--url", plain, "vms"]) == 3
    err = pier_lines(capsys)  # pierd answers in plain text that the port speaks HTTPS
    assert err.startswith(f"pier: pierd at {plain} speaks TLS: use --url {url}") or (
        err.startswith(f"pier: cannot reach pierd at {plain}: ") and err.endswith(f"use --url {url}\n"))


def test_tls_to_a_plain_port_says_so(pierd: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = pierd.replace("http://", "https://")
    assert cli.main(["--url", url, "vms"]) == 3
    assert capsys.readouterr().err == f"pier: pierd at {url} does not speak TLS: use http://\n"


def test_storage_table_shows_an_invalid_domain_and_why(pier: Run, stack: Stack, tmp_path: Path) -> None:
    assert pier("storage") == (0, "no storage domains on this host's connections\n", "")
    local = tmp_path / "sd"
    local.mkdir()
    stack.storage.connect_storage_server(4, [{"id": "c", "connection": str(local)}])
    good, bad = "11111111-0000-4000-8000-000000000001", "22222222-0000-4000-8000-000000000002"
    stack.storage.create_domain(good, 4, str(local), "good", 1)
    other = tmp_path / "other"
    other.mkdir()
    stack.storage.connect_storage_server(4, [{"id": "c", "connection": str(other)}])
    stack.storage.create_domain(bad, 4, str(other), "bad", 2)
    metadata = other / bad / "dom_md" / "metadata"
    metadata.write_text(metadata.read_text().replace("CLASS=Iso", "CLASS=Isx"))
    code, out, _ = pier("storage")
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == ["DOMAIN", "NAME", "TYPE", "CLASS", "ROLE", "POOL", "FREE", "STATE"]
    assert lines[1].split()[:6] == [bad, "-", "-", "-", "-", "-"] and lines[1].split()[-1] == "INVALID"
    assert lines[2].split()[:6] == [good, "good", "LOCALFS", "Data", "Regular", "-"]
    assert lines[2].split()[-1] == "valid"
    assert lines[4].startswith(f"{bad}: error 752 MetaDataSealIsBroken: ")
    assert f"{bad}/dom_md/metadata: checksum" in lines[4]
    code, out, _ = pier("storage", "--json")
    assert {row["uuid"]: row["valid"] for row in json.loads(out)} == {good: True, bad: False}
