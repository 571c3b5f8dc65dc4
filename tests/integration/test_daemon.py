"""pierd as a process: flags and config file, readiness lines, clean SIGTERM, restarts."""

from __future__ import annotations

import http.client as http_client
import json
import ssl
import subprocess
import sys
import threading
from pathlib import Path

from pier.config import Settings
from pier.daemon import Daemon
from tests.integration.clients import WsClient, http_request
from tests.integration.conftest import Pierd, new_vm_id
from tests.integration.test_host_libvirt import wait_until
from tests.integration.test_verbs import vm_params


def test_logs_one_line_per_listener_and_stops_cleanly(pierd: Pierd) -> None:
    assert pierd.logged("REST facade on http://127.0.0.1:")
    assert pierd.logged("JSON-RPC over WebSocket on ws://127.0.0.1:")
    assert pierd.stop() == 0
    assert pierd.logged("pierd stopped")


def test_config_file_sets_the_same_keys(tmp_path: Path, test_uri: str) -> None:
    config = tmp_path / "pierd.toml"
    config.write_text(f'libvirt_uri = "{test_uri}"\nlog_level = "DEBUG"\n')
    daemon = Pierd(tmp_path / "state", test_uri, "--config", str(config))
    try:
        assert daemon.logged(" DEBUG ")
    finally:
        assert daemon.stop() == 0


def test_bad_flags_and_config_are_refused_clearly(tmp_path: Path) -> None:
    bad = subprocess.run([sys.executable, "-m", "pier.daemon", "--http", "nowhere"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--http" in bad.stderr and "HOST:PORT" in bad.stderr
    config = tmp_path / "pierd.toml"
    config.write_text("colour = 'blue'\n")
    bad = subprocess.run([sys.executable, "-m", "pier.daemon", "--config", str(config)], capture_output=True, text=True)
    assert bad.returncode == 2 and "colour" in bad.stderr


def test_events_and_tasks_survive_a_restart(tmp_path: Path, test_uri: str) -> None:
    first = Pierd(tmp_path / "state", test_uri)
    vm_id = new_vm_id()
    http_request("POST", first.http + "/api/v1/vms", vm_params(vm_id))
    task = json.loads(http_request("POST", f"{first.http}/api/v1/vms/{vm_id}/shutdown",
                                   {"timeout": 0, "force": True})[2])
    http_request("GET", f"{first.http}/api/v1/tasks/{task['taskID']}?wait=10")
    last = json.loads(http_request("GET", first.http + "/api/v1/events")[2])["last"]
    assert first.stop() == 0
    second = Pierd(tmp_path / "state", test_uri)
    try:
        kept = json.loads(http_request("GET", second.http + "/api/v1/events?after=0")[2])
        assert kept["events"] and kept["last"] >= last
        again = json.loads(http_request("GET", f"{second.http}/api/v1/tasks/{task['taskID']}")[2])
        assert again["state"] == "succeeded"
    finally:
        assert second.stop() == 0


def test_taken_port_fails_with_a_clear_message(pierd: Pierd, tmp_path: Path, test_uri: str) -> None:
    port = pierd.http.rsplit(":", 1)[1]
    clash = subprocess.run([sys.executable, "-m", "pier.daemon", "--libvirt-uri", test_uri, "--http",
                            f"127.0.0.1:{port}", "--ws", "127.0.0.1:0", "--state-dir", str(tmp_path / "other")],
                           capture_output=True, text=True, timeout=30)
    assert clash.returncode == 2 and "cannot start" in clash.stderr


def test_stop_joins_every_thread_even_with_clients_connected(tmp_path: Path, test_uri: str) -> None:
    before = set(threading.enumerate())
    daemon = Daemon(Settings(libvirt_uri=test_uri, http="127.0.0.1:0", ws="127.0.0.1:0",
                             state_dir=str(tmp_path / "state"), unix_socket=str(tmp_path / "pier.sock")))
    daemon.start()  # with TLS: it makes its own CA and certificates at this first start
    token = daemon.credentials.create_token("viewer")["token"]
    tls = ssl.create_default_context(cafile=str(tmp_path / "state" / "tls" / "ca.pem"))
    http = daemon.listeners["http"].address
    assert http.startswith("https://")
    watcher = WsClient(daemon.listeners["ws"].address, token, ssl=tls)
    watcher.call("Events.subscribe")
    host, port = http.removeprefix("https://").rsplit(":", 1)
    stream = http_client.HTTPSConnection(host, int(port), timeout=10, context=tls)
    stream.request("GET", "/api/v1/events", headers={"Accept": "text/event-stream", "Authorization": f"Bearer {token}"})
    assert stream.getresponse().status == 200
    poller = threading.Thread(target=http_request, args=("GET", http + "/api/v1/events?wait=60"),
                              kwargs={"headers": {"Authorization": f"Bearer {token}"}, "context": tls})
    poller.start()
    daemon.stop()
    poller.join(10)
    left = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
    assert left == []
    assert daemon.events.closed
    watcher.close()
    stream.close()


def test_a_websocket_connection_gives_back_the_threads_of_a_burst(tmp_path: Path, test_uri: str,
                                                                 monkeypatch) -> None:
    import pier.transports.websocket as websocket

    monkeypatch.setattr(websocket, "HELPER_IDLE", 0.3)
    daemon = Daemon(Settings(libvirt_uri=test_uri, http="127.0.0.1:0", ws="127.0.0.1:0", insecure_loopback=True,
                             state_dir=str(tmp_path / "state"), unix_socket=str(tmp_path / "pier.sock")))
    daemon.start()
    try:
        client = WsClient(daemon.listeners["ws"].address, daemon.credentials.create_token("viewer")["token"])
        last = client.call("Events.poll")["last"]
        for number in range(4):  # four long polls at once, then a ping past them
            client.connection.send(json.dumps({"jsonrpc": "2.0", "method": "Events.poll", "id": number, "params": {
                "after": last, "types": ["nothing.ever"], "wait": 1}}))
        assert client.call("Host.ping2") is True

        def helpers() -> int:
            return sum(thread.name.startswith("ws-call") for thread in threading.enumerate())

        assert helpers() >= 4  # the polls are still waiting
        answers = [json.loads(client.connection.recv(timeout=10)) for _ in range(4)]
        assert sorted(answer["id"] for answer in answers) == [0, 1, 2, 3]
        assert wait_until(lambda: helpers() <= 1, 10), "idle helpers did not end"
        assert client.call("Host.ping2") is True  # and the connection serves on
        client.close()
    finally:
        daemon.stop()


def test_auto_falls_back_to_the_test_driver_and_says_so(tmp_path: Path, monkeypatch, caplog) -> None:
    import pier.daemon

    monkeypatch.setattr(pier.daemon, "unusable_reason", lambda uri: "Failed to connect socket: No such file")
    uri = pier.daemon.resolve_libvirt_uri(Settings(state_dir=str(tmp_path)))
    assert uri == f"test://{tmp_path / 'testnode.xml'}"
    assert "libvirtd is not reachable at qemu:///system (Failed to connect socket" in caplog.text
    assert "test driver" in caplog.text and "simulated" in caplog.text
    monkeypatch.setattr(pier.daemon, "unusable_reason", lambda uri: None)
    assert pier.daemon.resolve_libvirt_uri(Settings(state_dir=str(tmp_path))) == "qemu:///system"


def test_vdsm_stomp_port_defaults_to_vdsms() -> None:
    from pier.config import load_settings

    assert load_settings(["--vdsm-stomp", "127.0.0.1"]).vdsm_stomp == "127.0.0.1:54321"
    assert load_settings(["--vdsm-stomp", "127.0.0.1:6000"]).vdsm_stomp == "127.0.0.1:6000"
