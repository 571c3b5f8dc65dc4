"""contrib/engine_monitor.py, the example engine developers start from, against a real pierd and broker."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
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


class BrokerProxy:
    """A TCP relay to the broker that the test can cut, as a broker restart or a network cut does:
    `away()` ends every relayed connection and refuses new ones (closing them at once) until
    `back()`. A relayed socket is closed only by the last of its two pipe threads, so that no
    thread ever uses a descriptor number the system has given to a newer connection."""

    def __init__(self, broker: tuple[str, int]) -> None:
        self.broker = broker
        self.refused = 0
        self._away = False
        self._changed = threading.Condition()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, name="broker-proxy", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._changed:
                if self._away:
                    client.close()
                    self.refused += 1
                    self._changed.notify_all()
                    continue
                pair = (client, socket.create_connection(self.broker, 5))
                self._pairs.append(pair)
            ends = [2]
            for source, sink in (pair, pair[::-1]):
                threading.Thread(target=self._pipe, args=(source, sink, pair, ends), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, pair: tuple[socket.socket, socket.socket],
              ends: list[int]) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        _shut(pair)
        with self._changed:
            ends[0] -= 1
            last = ends[0] == 0
            if last and pair in self._pairs:
                self._pairs.remove(pair)
        if last:
            for end in pair:
                end.close()

    def away(self) -> None:
        with self._changed:
            self._away = True
            for pair in self._pairs:
                _shut(pair)  # their pipe threads see the end and close them

    def wait_refused(self, count: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.refused >= count, timeout)

    def back(self) -> None:
        with self._changed:
            self._away = False

    def close(self) -> None:
        self.away()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept(), which close() would not
        except OSError:
            pass
        self._thread.join(5)
        self._listener.close()


def _shut(pair: tuple[socket.socket, socket.socket]) -> None:
    for end in pair:
        try:
            end.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def test_it_comes_back_after_losing_the_broker_and_prints_the_events_it_missed(stomp_broker,
                                                                              stomp_pierd: Pierd) -> None:
    host_id = json.loads(http_request("GET", stomp_pierd.http + "/api/v1")[2])["hostId"]
    proxy = BrokerProxy(stomp_broker)
    monitor = subprocess.Popen([sys.executable, str(MONITOR), "--broker", proxy.address, "--prefix", STOMP_PREFIX,
                                "--json", "--host", host_id, "--cycles", "3", "--interval", "3",
                                "--token", stomp_pierd.token], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        assert json.loads(monitor.stdout.readline())["kind"] == "activated"
        proxy.away()  # the broker goes away (during the first poll or the wait for the next)
        if not proxy.wait_refused(1, 30):
            monitor.kill()
            raise AssertionError(f"the monitor did not connect again: {monitor.communicate()[1]}")
        missed = new_vm_id()
        http_request("POST", stomp_pierd.http + "/api/v1/vms", vm_params(missed))
        proxy.back()
        out, err = monitor.communicate(timeout=90)
    finally:
        monitor.kill()
        proxy.close()
    assert monitor.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["event"] for r in records if r["kind"] == "broker"] == ["lost", "back"]
    assert any(r["kind"] == "event" and r["name"] == f"|virt|VM_status|{missed}" and r.get("replayed")
               for r in records), "the events published while the broker was away were not replayed"
    stats = [r for r in records if r["kind"] == "stats"]
    assert stats and stats[-1]["vms"] == 1
