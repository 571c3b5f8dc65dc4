"""The `pier` CLI, run in-process against a real HTTP server on loopback over the real registry."""

from __future__ import annotations

import io
import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from pier import cli
from pier.cli_format import parse_params
from pier.rpc.errors import PierError
from pier.rpc.registry import CallContext
from pier.rpc.schema import Schema
from pier.transports.http import HttpListener, WsgiApp, jsonrpc_app
from tests.unit.conftest import VM_ID, Stack

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
            body, status, kind = stack.registry.call("Events.poll", params, CallContext("rest")), 200, "json"
        except PierError as exc:
            body = {"type": "about:blank", "title": exc.message, "status": exc.http_status, "detail": exc.message,
                    "code": exc.code, "name": exc.name, "data": exc.data}
            status, kind = exc.http_status, "problem+json"
        start_response(f"{status} X", [("Content-Type", f"application/{kind}")])
        return [json.dumps(body).encode()]

    return app


class _CurrentStack:
    """Routes requests to the running test's stack, so one listener can serve the whole module."""

    stack: Stack

    def jsonrpc(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return jsonrpc_app(self.stack.jsonrpc)(environ, start_response)

    def rest(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return events_app(self.stack)(environ, start_response)


@pytest.fixture(scope="module")
def listener() -> Iterator[tuple[HttpListener, _CurrentStack]]:
    current = _CurrentStack()
    server = HttpListener(("127.0.0.1", 0), {"/jsonrpc": current.jsonrpc}, current.rest)
    server.start()
    yield server, current
    server.stop()


@pytest.fixture
def pierd(stack: Stack, listener: tuple[HttpListener, _CurrentStack]) -> str:
    """The address of a real HTTP server answering from this test's stack."""
    server, current = listener
    current.stack = stack
    return server.address


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
    stack.call("VM.create", vmID=vm_id, vmParams={"vmName": name})


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
    for name, spec in verb.params.items():
        row = next(line for line in out.splitlines() if line.split()[:1] == [name])
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
    params = json.dumps({"vmID": VM_ID, "vmParams": {"vmName": "web"}})
    code, out, _ = pier("call", "VM.create", params)
    assert code == 0 and json.loads(out)["vmName"] == "web"
    assert out.startswith("{\n  ")  # pretty for people
    assert stack.node.vms[VM_ID]["vmName"] == "web"


def test_call_with_key_value_pairs(pier: Run, stack: Stack) -> None:
    code, _, _ = pier("call", "VM.create", f"vmID={VM_ID}", "vmParams.vmName=db", "vmParams.memSize=64")
    assert code == 0 and stack.node.vms[VM_ID]["vmName"] == "db"
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
    listener = HttpListener(str(tmp_path / "pier.sock"), {"/jsonrpc": jsonrpc_app(stack.jsonrpc)}, events_app(stack))
    listener.start()
    try:
        assert cli.main(["--url", listener.address, "vms", "--json"]) == 0
    finally:
        listener.stop()
    assert json.loads(capsys.readouterr().out)[0]["vmId"] == VM_ID


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
    assert facts["host id"] == stack.node.host_uuid()
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
    assert stack.node.vms[VM_ID]["status"] == "Down"


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
