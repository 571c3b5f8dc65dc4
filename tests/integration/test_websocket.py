"""WebSocket specifics: pushed events, replay with `after`, batches, and bad input."""

from __future__ import annotations

import json

from websockets.exceptions import ConnectionClosed

from tests.integration.clients import WsClient
from tests.integration.conftest import Pierd, new_vm_id
from tests.integration.test_verbs import create


def vm_status_events(client: WsClient, vm_id: str, until: list[str]) -> list[dict]:
    """VM_status notifications for `vm_id` until their statuses end with `until`."""
    seen: list[dict] = []
    while [e["params"][vm_id]["status"] for e in seen][-len(until):] != until:
        note = client.next_notification(timeout=10)
        if note["method"] == f"|virt|VM_status|{vm_id}":
            seen.append(note)
    return seen


def test_subscribed_connection_gets_events_pushed(pierd: Pierd) -> None:
    client = WsClient(pierd.ws)
    reply = client.call("Events.subscribe", types=["virt.VM_status"])
    assert reply["subscribed"] is True
    vm_id = new_vm_id()
    create(client, vm_id)
    client.call("VM.pause", vmID=vm_id)
    events = vm_status_events(client, vm_id, ["Up", "Paused"])
    assert "jsonrpc" in events[0] and "id" not in events[0]
    seqs = [e["params"]["seq"] for e in events]
    assert seqs == sorted(seqs)
    assert events[0]["params"]["notify_time"] > 2**31 - 1
    client.call("Events.unsubscribe")
    client.close()


def test_resubscribing_with_after_replays_what_was_missed(pierd: Pierd) -> None:
    watcher = WsClient(pierd.ws)
    watcher.call("Events.subscribe", types=["virt.VM_status"])
    vm_id = new_vm_id()
    worker = WsClient(pierd.ws)
    create(worker, vm_id)
    last_seen = vm_status_events(watcher, vm_id, ["Up"])[-1]["params"]["seq"]
    watcher.close()  # away while things happen
    worker.call("VM.pause", vmID=vm_id)
    worker.call("VM.cont", vmID=vm_id)
    back = WsClient(pierd.ws)
    back.call("Events.subscribe", after=last_seen, types=["virt.VM_status"])
    replayed = vm_status_events(back, vm_id, ["Paused", "Up"])
    assert [e["params"][vm_id]["status"] for e in replayed] == ["Paused", "Up"]
    assert [e["params"]["seq"] for e in replayed] == sorted(e["params"]["seq"] for e in replayed)
    back.close()
    worker.close()


def test_a_slow_call_does_not_hold_up_the_calls_after_it(pierd: Pierd) -> None:
    client = WsClient(pierd.ws, pierd.token)
    last = client.call("Events.poll")["last"]
    poll = {"jsonrpc": "2.0", "method": "Events.poll", "params": {"after": last, "types": ["nothing.ever"],
                                                                    "wait": 3}, "id": "slow"}
    client.connection.send(json.dumps(poll))
    client.connection.send(json.dumps({"jsonrpc": "2.0", "method": "Host.ping2", "id": "quick"}))
    answers = [json.loads(client.connection.recv(timeout=10)) for _ in range(2)]
    assert [answer["id"] for answer in answers] == ["quick", "slow"]
    assert answers[1]["result"]["events"] == []
    client.close()


def test_batch_over_websocket(pierd: Pierd) -> None:
    client = WsClient(pierd.ws)
    reply = client.send([{"jsonrpc": "2.0", "method": "Host.ping2", "id": 1},
                         {"jsonrpc": "2.0", "method": "Host.getVMList", "id": 2},
                         {"jsonrpc": "2.0", "method": "Host.ping2"}])
    assert [r["id"] for r in reply] == [1, 2]
    client.close()


def test_bad_input_gets_clear_errors_and_the_daemon_keeps_serving(pierd: Pierd) -> None:
    bystander = WsClient(pierd.ws)
    client = WsClient(pierd.ws)
    assert client.send("{not json")["error"]["code"] == -32700
    assert client.send('{"jsonrpc": "2.0", "method": "VM.pause", "params": {"vmID": 7}, "id": 1}')["error"][
        "data"]["field"] == "params.vmID"
    assert client.send('{"jsonrpc": "2.0", "method": "VM.fly", "id": 2}')["error"]["code"] == -32601
    assert client.send(json.dumps([{"jsonrpc": "2.0", "method": "Host.ping2", "id": i} for i in range(101)]))[
        "error"]["code"] == -32600
    big = json.dumps({"jsonrpc": "2.0", "method": "Host.ping2", "params": {"x": "y" * (1 << 20)}, "id": 3})
    too_big = client.send(big)["error"]
    assert too_big["code"] == -32600 and "limit" in too_big["message"]
    assert client.call("Host.ping2") is True
    try:
        client.send("z" * (5 << 20))  # beyond the frame limit: the connection is closed, nothing else
    except ConnectionClosed:
        pass
    assert bystander.call("Host.ping2") is True
    assert WsClient(pierd.ws).call("Host.ping2") is True
    bystander.close()
