"""JSON-RPC over HTTP and REST specifics: status codes, problem+json, long-poll, SSE, OpenAPI."""

from __future__ import annotations

import http.client
import json
import time

from tests.integration.clients import auth_headers, http_request
from tests.integration.conftest import Pierd, new_vm_id
from tests.integration.test_verbs import vm_params


def test_jsonrpc_over_http_statuses(pierd: Pierd) -> None:
    url = pierd.http + "/jsonrpc"
    status, headers, body = http_request("POST", url, {"jsonrpc": "2.0", "method": "Host.ping2", "id": 1})
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"jsonrpc": "2.0", "result": True, "id": 1}
    assert http_request("POST", url, {"jsonrpc": "2.0", "method": "Host.ping2"})[0] == 204
    status, _, body = http_request("POST", url, raw=b"{oops")
    assert json.loads(body)["error"]["code"] == -32700
    status, _, body = http_request("POST", url, raw=b"x" * ((1 << 20) + 1))
    assert status == 413 and json.loads(body)["error"]["code"] == -32600
    assert http_request("GET", url)[0] == 405


def test_rest_answers_problem_json(pierd: Pierd) -> None:
    api = pierd.http + "/api/v1"
    status, headers, body = http_request("GET", f"{api}/vms/{new_vm_id()}")
    problem = json.loads(body)
    assert status == 404 and headers["Content-Type"].startswith("application/problem+json")
    assert (problem["code"], problem["name"]) == (1, "noVM")
    status, _, body = http_request("GET", f"{api}/vms/not-a-uuid")
    assert status == 400 and "vmID" in json.loads(body)["detail"]
    status, _, body = http_request("POST", f"{api}/vms", raw=b"{broken", headers={"Content-Type": "application/json"})
    assert status == 400 and json.loads(body)["status"] == 400
    assert http_request("GET", f"{api}/nothing-here")[0] == 404
    assert http_request("PUT", f"{api}/vms")[0] == 405


def test_rest_create_and_task_wait(pierd: Pierd) -> None:
    api = pierd.http + "/api/v1"
    vm_id = new_vm_id()
    status, _, body = http_request("POST", f"{api}/vms", vm_params(vm_id))
    assert status == 201 and json.loads(body)["vmId"] == vm_id
    status, headers, body = http_request("POST", f"{api}/vms/{vm_id}/shutdown", {"timeout": 1, "force": True})
    task = json.loads(body)
    assert status == 202 and headers["Location"] == f"/api/v1/tasks/{task['taskID']}"
    status, _, body = http_request("GET", f"{pierd.http}{headers['Location']}?wait=30")
    assert status == 200 and json.loads(body)["state"] == "succeeded"
    assert http_request("DELETE", f"{api}/vms/{vm_id}")[0] == 200
    assert json.loads(http_request("GET", f"{api}/vms")[2]) == []


def test_events_long_poll_sse_and_expired_cursor(tmp_path, test_uri) -> None:
    daemon = Pierd(tmp_path / "state", test_uri, "--config", str(_config(tmp_path, max_events=3)))
    try:
        api = daemon.http + "/api/v1"
        for _ in range(3):
            vm_id = new_vm_id()
            http_request("POST", f"{api}/vms", vm_params(vm_id))
            http_request("DELETE", f"{api}/vms/{vm_id}")
        deadline = time.monotonic() + 10
        while True:  # lifecycle events are dispatched a little after the calls: wait for all nine
            batch = json.loads(http_request("GET", f"{api}/events?types=virt.VM_status&wait=1")[2])
            if batch["last"] >= 9 or time.monotonic() > deadline:
                break
        last = batch["last"]
        assert batch["events"] and batch["oldest"] > 1
        status, headers, body = http_request("GET", f"{api}/events?after=0")
        assert status == 410 and json.loads(body)["data"]["oldest"] >= batch["oldest"]
        vm_id = new_vm_id()
        http_request("POST", f"{api}/vms", vm_params(vm_id))
        frames = _read_sse(daemon.http, "/api/v1/events?types=virt.VM_status", last,
                           until=lambda f: json.loads(f["data"])["params"][vm_id]["status"] == "Up")
        assert {f["event"] for f in frames} == {f"|virt|VM_status|{vm_id}"}
        assert [int(f["id"]) for f in frames] == sorted(int(f["id"]) for f in frames) and int(frames[0]["id"]) > last
    finally:
        assert daemon.stop() == 0


def test_openapi_document_is_served(pierd: Pierd) -> None:
    status, _, body = http_request("GET", pierd.http + "/api/v1/openapi.json")
    document = json.loads(body)
    assert status == 200 and document["openapi"].startswith("3.1")
    assert "/api/v1/vms/{vmID}/pause" in document["paths"] or "/vms/{vmID}/pause" in document["paths"]


def _config(tmp_path, **values) -> object:
    path = tmp_path / "pierd.toml"
    path.write_text("".join(f"{key} = {value!r}\n" for key, value in values.items()))
    return path


def _read_sse(base: str, path: str, last_event_id: int, until) -> list[dict[str, str]]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=15)
    connection.request("GET", path, headers={"Accept": "text/event-stream", "Last-Event-ID": str(last_event_id),
                                             **auth_headers()})
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/event-stream")
    frames, frame = [], {}
    while not frames or not until(frames[-1]):
        line = response.readline().decode().rstrip("\r\n")
        if line.startswith(":"):
            continue
        if not line:
            if "event" in frame:
                frames.append(frame)
            frame = {}
            continue
        key, _, value = line.partition(":")
        frame[key] = value.strip()
    connection.close()
    return frames


def test_metrics_count_calls_per_verb(pierd: Pierd) -> None:
    http_request("POST", pierd.http + "/jsonrpc", {"jsonrpc": "2.0", "method": "Host.ping2", "id": 1})
    http_request("GET", f"{pierd.http}/api/v1/vms/{new_vm_id()}")
    status, headers, body = http_request("GET", pierd.http + "/metrics")
    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert 'pier_calls_total{outcome="ok",transport="http",verb="Host.ping2"} 1.0' in text
    assert 'pier_calls_total{outcome="noVM",transport="rest",verb="VM.getInfo"} 1.0' in text
    assert "pier_libvirt_connected 1.0" in text and "pier_vms 0.0" in text
