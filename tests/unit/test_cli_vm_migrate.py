"""`pier vm migrate` against a scripted pierd (the unit stack serves no live migration; the real
one is in tests/integration/test_migration.py): what it calls, prints and exits with."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from typing import Any

import pytest

from pier import cli, cli_vm_migrate

VM = "6f1e3e4c-1111-4222-8333-777788889999"
TASK = "6f1e3e4c-1111-4222-8333-000000000001"
DST = "10.0.0.2:54321"


class ScriptedPierd:
    """A PierClient stand-in answering each verb from `answers` (a value, or a callable of the params)."""

    def __init__(self, **answers: Any) -> None:
        self.answers = answers
        self.calls: list[tuple[str, Any]] = []

    def call(self, verb: str, params: Any, timeout: float | None = None) -> Any:
        self.calls.append((verb, params))
        answer = self.answers[verb.replace(".", "_")]
        return answer(params) if callable(answer) else answer

    def verbs(self) -> list[str]:
        return [verb for verb, _ in self.calls]


def run(client: ScriptedPierd, monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    monkeypatch.setattr(cli, "PierClient", lambda *args, **kwargs: client)
    return cli.main(["vm", "migrate", VM, "--to", DST, "--url", "http://127.0.0.1:1", *argv])


def tasks(*states: str, error: dict[str, Any] | None = None, result: Any = None) -> Callable[[Any], Any]:
    """Task.getInfo answering these states one after the other (the last one from then on)."""
    left = list(states)

    def answer(params: Any) -> dict[str, Any]:
        state = left.pop(0) if len(left) > 1 else left[0]
        return {"taskID": TASK, "verb": "VM.migrate", "state": state, "progress": 50, "error": error,
                "result": result}
    return answer


RUNNING = {"status": {"code": 0, "message": "Migration in progress"}, "progress": 40, "state": "running",
           "dst": DST, "dataTotal": 256 << 20, "dataRemaining": 150 << 20, "bandwidth": 3 << 20}


def test_without_follow_it_starts_the_migration_and_prints_its_task(monkeypatch, capsys) -> None:
    client = ScriptedPierd(VM_migrate={"taskID": TASK, "state": "pending", "progress": 0})
    assert run(client, monkeypatch, "--max-bandwidth", "5", "--unsafe") == 0
    assert client.calls == [("VM.migrate", {"vmID": VM, "params": {"dst": DST, "maxBandwidth": 5, "unsafe": True}})]
    assert f"task {TASK} migrates VM {VM} to {DST}" in capsys.readouterr().out


def test_follow_shows_progress_and_the_outcome(monkeypatch, capsys) -> None:
    client = ScriptedPierd(VM_migrate={"taskID": TASK}, VM_getMigrationStatus=RUNNING,
                           Task_getInfo=tasks("running", "succeeded", result={"elapsedMs": 2100, "downtime": 40}))
    monkeypatch.setattr(cli_vm_migrate, "LINE_EVERY", 0.0)
    assert run(client, monkeypatch, "--follow") == 0
    out = capsys.readouterr().out
    assert " 40% running, 150 of 256 MiB left, 3.0 MiB/s" in out
    assert f"VM {VM} migrated to {DST} (elapsedMs 2100 ms, downtime 40 ms)" in out
    assert "VM.migrateCancel" not in client.verbs()


def test_a_failed_migration_exits_1_with_the_error_and_where_the_vm_is(monkeypatch, capsys) -> None:
    error = {"code": 10, "name": "noConPeer", "message": f"Could not connect to peer VDS at {DST}: refused"}
    client = ScriptedPierd(VM_migrate={"taskID": TASK}, VM_getMigrationStatus=RUNNING,
                           Task_getInfo=tasks("failed", error=error), VM_getInfo={"status": "Up"})
    assert run(client, monkeypatch, "--follow") == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert f"the migration of VM {VM} to {DST} failed" in err
    assert f"error 10 noConPeer: Could not connect to peer VDS at {DST}" in err
    assert f"VM {VM} on this host: Up" in err


def test_ctrl_c_cancels_the_migration_and_says_the_vm_stays(monkeypatch, capsys) -> None:
    looks = iter([RUNNING])

    def status(params: Any) -> dict[str, Any]:
        for found in looks:
            return found
        raise KeyboardInterrupt  # the second look: the user pressed Ctrl-C

    def task(params: Any) -> dict[str, Any]:  # it runs until cancelled
        return tasks("cancelled" if "VM.migrateCancel" in client.verbs() else "running")(params)

    client = ScriptedPierd(VM_migrate={"taskID": TASK}, VM_getMigrationStatus=status, Task_getInfo=task,
                           VM_migrateCancel=True, VM_getInfo={"status": "Up"})
    assert run(client, monkeypatch, "--follow") == cli.EXIT_INTERRUPTED
    after = client.calls[client.calls.index(("VM.migrateCancel", {"vmID": VM})):]
    assert after[1] == ("Task.getInfo", {"taskID": TASK, "wait": cli_vm_migrate.CANCEL_WAIT})
    err = capsys.readouterr().err
    assert f"cancelling the migration of VM {VM} to {DST}" in err
    assert f"migration cancelled; VM {VM} stays on this host: Up" in err


def test_ctrl_c_after_the_migration_ended_says_where_the_vm_went(monkeypatch, capsys) -> None:
    def interrupted(params: Any) -> Any:
        raise KeyboardInterrupt

    def too_late(params: Any) -> Any:
        raise cli.RpcError(81, "migNotInProgress", f"no migration of VM {VM} runs on this host")

    client = ScriptedPierd(VM_migrate={"taskID": TASK}, VM_getMigrationStatus=interrupted,
                           Task_getInfo=tasks("running", "succeeded"), VM_migrateCancel=too_late)
    assert run(client, monkeypatch, "--follow") == cli.EXIT_OK
    err = capsys.readouterr().err
    assert "error 81 migNotInProgress" in err and f"VM {VM} runs on {DST}" in err


def test_a_refused_start_exits_1_with_pierds_error(monkeypatch, capsys) -> None:
    def refused(params: Any) -> Any:
        raise cli.RpcError(12, "migrateErr", f"cannot migrate VM {VM} to {DST}: 10.0.0.2 is this host itself")

    assert run(ScriptedPierd(VM_migrate=refused), monkeypatch, "--follow") == cli.EXIT_FAILED
    assert "is this host itself" in capsys.readouterr().err


def test_on_a_terminal_the_progress_is_a_bar_on_stderr(monkeypatch, capsys) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    client = ScriptedPierd(VM_migrate={"taskID": TASK}, VM_getMigrationStatus=RUNNING,
                           Task_getInfo=tasks("running", "running", "succeeded"))
    assert run(client, monkeypatch, "--follow") == 0
    drawn = terminal.getvalue()
    assert f"\r[{'#' * 12:<30}]  40% running, 150 of 256 MiB left" in drawn and drawn.endswith("\n")
    assert "% running" not in capsys.readouterr().out
