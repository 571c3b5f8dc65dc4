"""contrib/engine_monitor.py, the example engine developers start from, against a real pierd and broker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.integration.clients import http_request
from tests.integration.conftest import STOMP_PREFIX, Pierd, new_vm_id
from tests.integration.test_verbs import vm_params

MONITOR = Path(__file__).resolve().parents[2] / "contrib" / "engine_monitor.py"


def monitor(broker: tuple[str, int], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(MONITOR), "--broker", f"{broker[0]}:{broker[1]}", "--prefix",
                           STOMP_PREFIX, "--json", *args], capture_output=True, text=True, timeout=60)


def run_monitor(broker: tuple[str, int], *args: str) -> list[dict]:
    done = monitor(broker, *args)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_discovers_activates_and_polls_the_host(stomp_broker, stomp_pierd: Pierd) -> None:
    host_id = json.loads(http_request("GET", stomp_pierd.http + "/api/v1")[2])["hostId"]
    vm_id = new_vm_id()
    http_request("POST", stomp_pierd.http + "/api/v1/vms", vm_params(vm_id))
    records = run_monitor(stomp_broker, "--cycles", "2", "--interval", "2.5", "--token", stomp_pierd.token)
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "activated" and kinds.count("cycle") == 2
    activated = [r for r in records if r["kind"] == "activated" and r["host"] == host_id]
    assert activated and set(activated[0]["ms"]) == {"Host.ping2", "Host.getCapabilities",
                                                     "Host.getHardwareInfo", "Host.getStats"}
    stats = [r for r in records if r["kind"] == "stats" and r["host"] == host_id]
    assert stats[-1]["vms"] == 1 and stats[-1]["statuses"] == {"Up": 1}


def test_given_a_host_id_it_prints_events_as_they_come(stomp_broker, stomp_pierd: Pierd) -> None:
    host_id = json.loads(http_request("GET", stomp_pierd.http + "/api/v1")[2])["hostId"]
    monitor = subprocess.Popen([sys.executable, str(MONITOR), "--broker", f"{stomp_broker[0]}:{stomp_broker[1]}",
                                "--prefix", STOMP_PREFIX, "--json", "--host", host_id, "--cycles", "2",
                                "--interval", "4", "--token", f"{host_id}={stomp_pierd.token}"],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(monitor.stdout.readline())["kind"] == "activated"
        vm_id = new_vm_id()
        http_request("POST", stomp_pierd.http + "/api/v1/vms", vm_params(vm_id))
        out, _ = monitor.communicate(timeout=60)
    finally:
        monitor.kill()
    events = [json.loads(line) for line in out.splitlines() if json.loads(line)["kind"] == "event"]
    assert any(e["name"] == f"|virt|VM_status|{vm_id}" and e["params"][vm_id]["status"] == "Up" for e in events)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)


def test_without_a_token_it_says_why_no_host_answered(stomp_broker, stomp_pierd: Pierd) -> None:
    done = monitor(stomp_broker, "--cycles", "1", "--discover", "1")
    assert done.returncode == 1 and "no token" in done.stderr
    assert "refused: no credentials" in done.stderr and "authorization: Bearer" in done.stderr
