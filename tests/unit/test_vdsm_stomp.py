"""The VDSM-compatible STOMP endpoint, driven in-process by a client that speaks as VDSM's does."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator

import pytest

from pier.transports.vdsm_stomp import VdsmStompListener
from tests.fakes import FixedAuthenticator
from tests.unit.conftest import ADMIN, Stack
from tests.unit.vdsm_stomp_client import EVENTS, REQUESTS, Closed, ServerError, VdsmLikeClient, address_of

VM = "7a0c1d2e-3f40-4152-8637-48596a7b8c9d"
VM_PARAMS = {"vmId": VM, "vmName": "stomp", "memSize": 64, "smp": "1"}


@pytest.fixture
def listener(stack: Stack) -> Iterator[VdsmStompListener]:
    server = VdsmStompListener(stack.jsonrpc, stack.events, "127.0.0.1", 0, authenticator=FixedAuthenticator(ADMIN), max_frame=64 << 10)
    server.start()
    yield server
    server.stop()


def _address(listener: VdsmStompListener) -> tuple[str, int]:
    return address_of(listener.address)


@pytest.fixture
def client(listener: VdsmStompListener) -> Iterator[VdsmLikeClient]:
    with VdsmLikeClient(_address(listener)) as connected:
        yield connected


# -- what VDSM's client does ----------------------------------------------------------------------


def test_address_names_the_bound_port(listener: VdsmStompListener) -> None:
    assert listener.address.startswith("stomp://127.0.0.1:")
    assert _address(listener)[1] > 0


def test_connected_swaps_the_heart_beats(client: VdsmLikeClient) -> None:
    assert client.connected is not None
    assert client.connected.headers["version"] == "1.2"
    assert client.connected.headers["heart-beat"] == "24000,0"


def test_vdsm_client_session(stack: Stack, client: VdsmLikeClient) -> None:
    assert client.call("Host.ping2") is True
    assert client.call("Host.getCapabilities")["uuid"] == stack.host.uuid()
    assert client.call("Host.getVMList") == []
    events = client.subscribe(EVENTS)

    created = client.call("VM.create", vmID=VM, vmParams=VM_PARAMS)
    assert created["vmId"] == VM
    up = client.wait_event(lambda e: e["method"] == f"|virt|VM_status|{VM}" and e["params"][VM]["status"] == "Up")
    assert up["jsonrpc"] == "2.0" and "notify_time" in up["params"] and up["params"]["seq"] > 0
    assert [vm["vmId"] for vm in client.call("Host.getVMList")] == [VM]

    assert client.call("VM.destroy", vmID=VM) is True
    client.wait_event(lambda e: e["method"] == f"|virt|VM_status|{VM}" and e["params"][VM]["status"] == "Down")
    assert client.call("Host.getVMList") == []
    with pytest.raises(ServerError) as failed:
        client.call("VM.destroy", vmID=VM)
    assert failed.value.code == 1  # noVM

    client.unsubscribe(events)
    assert client.call("Host.ping2") is True


def test_response_frame_is_vdsms(client: VdsmLikeClient) -> None:
    request_id = client.send_request("Host.ping2", flow_id="flow:1\nx")
    frame = client.read_frame()
    assert frame.command == "MESSAGE"
    assert frame.headers == {"destination": client.reply_to, "content-type": "application/json",
                             "subscription": client.reply_sub, "content-length": str(len(frame.body))}
    assert frame.json() == [{"jsonrpc": "2.0", "result": True, "id": request_id}]


def test_the_engines_flow_id_goes_into_the_log(client: VdsmLikeClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pier.rpc")
    request_id = client.send_request("VM.create", {"vmID": VM, "vmParams": VM_PARAMS}, flow_id="b1d5\nforged line")
    assert client.wait_response(request_id)["result"]["vmId"] == VM
    assert any(record.getMessage().startswith(f"VM.create vmID={VM} done") and
               record.getMessage().endswith(", flow b1d5forged line)") for record in caplog.records)


def test_sub_destinations_and_irs_queue_are_served(client: VdsmLikeClient) -> None:
    for destination in (f"{REQUESTS}.host", "jms.topic.vdsm_irs_requests", "jms.topic.vdsm_irs_requests.a.b"):
        request_id = client.send_request("Host.ping2", destination=destination)
        assert client.wait_response(request_id)["result"] is True


def test_batch_of_two_is_answered(client: VdsmLikeClient) -> None:
    body = json.dumps([{"jsonrpc": "2.0", "method": "Host.ping2", "params": {}, "id": "a"},
                       {"jsonrpc": "2.0", "method": "Host.getVMList", "params": {}, "id": "b"}]).encode()
    client.send_frame("SEND", {"destination": REQUESTS, "content-type": "application/json",
                               "reply-to": client.reply_to}, body)
    answer = client.read_frame().json()
    assert {item["id"]: item["result"] for item in answer} == {"a": True, "b": []}


def test_notification_gets_no_reply_and_does_not_stop_answering(client: VdsmLikeClient) -> None:
    client.send_frame("SEND", {"destination": REQUESTS, "content-type": "application/json",
                               "reply-to": client.reply_to},
                      b'[{"jsonrpc": "2.0", "method": "Host.ping2", "params": {}}]')
    request_id = client.send_request("Host.getVMList")
    frame = client.read_frame()
    assert frame.json() == [{"jsonrpc": "2.0", "result": [], "id": request_id}]


def test_send_without_reply_to_runs_and_answers_nothing(stack: Stack, client: VdsmLikeClient) -> None:
    client.send_request("VM.create", {"vmID": VM, "vmParams": VM_PARAMS}, reply_to=False)
    request_id = client.send_request("Host.getVMList")
    deadline = time.monotonic() + 5
    while VM not in stack.vms.records and time.monotonic() < deadline:
        time.sleep(0.01)
    assert VM in stack.vms.records
    frame = client.read_frame()  # the only reply is getVMList's
    assert frame.json()[0]["id"] == request_id


def test_non_batch_requests_are_answered_to_the_reply_destination(client: VdsmLikeClient) -> None:
    """VDSM's client sends some requests as a bare object rather than a one-element batch."""
    request_id = client.send_request("Host.ping2", batch=False)
    frame = client.read_frame()
    assert frame.headers["destination"] == client.reply_to
    assert frame.json() == {"jsonrpc": "2.0", "result": True, "id": request_id}
    request_id = client.send_request("VM.destroy", {"vmID": VM}, batch=False)
    frame = client.read_frame()
    assert frame.headers["destination"] == client.reply_to
    assert frame.json()["id"] == request_id and frame.json()["error"]["code"] == 1  # noVM


def test_a_result_holding_id_null_goes_to_the_caller(client: VdsmLikeClient) -> None:
    """Where a response goes depends on its own id, not on what its result holds."""
    responses = client.subscribe("jms.topic.vdsm_responses")
    created = client.send_request("VM.create", {"vmID": VM, "vmParams": {**VM_PARAMS, "id": None}}, batch=False)
    assert client.wait_response(created)["result"]["vmId"] == VM
    request_id = client.send_request("Host.getAuditLog", {"verb": "VM.create"}, batch=False)
    frame = client.read_frame()
    assert frame.headers["subscription"] != responses, "the answer went to the responses topic"
    assert frame.headers["destination"] == client.reply_to
    answer = frame.json()
    assert answer["id"] == request_id
    assert b'"id":null' in frame.body.replace(b" ", b"")  # the case that was misrouted


def test_response_without_id_goes_to_the_responses_topic(client: VdsmLikeClient) -> None:
    responses = client.subscribe("jms.topic.vdsm_responses")
    client.send_frame("SEND", {"destination": REQUESTS, "content-type": "application/json",
                               "reply-to": client.reply_to}, b"[{not json")
    frame = client.read_frame()
    assert frame.headers["subscription"] == responses
    assert frame.headers["destination"] == "jms.topic.vdsm_responses"
    assert frame.json()["error"]["code"] == -32700 and frame.json()["id"] is None
    assert client.call("Host.ping2") is True  # and nothing went to the reply destination


def test_mixed_batch_splits_by_id(client: VdsmLikeClient) -> None:
    responses = client.subscribe("jms.topic.vdsm_responses")
    client.send_frame("SEND", {"destination": REQUESTS, "content-type": "application/json",
                               "reply-to": client.reply_to},
                      b'[{"jsonrpc": "2.0", "method": "Host.ping2", "id": "ok"}, 42]')
    frames = {frame.headers["subscription"]: frame.json() for frame in (client.read_frame(), client.read_frame())}
    assert frames[client.reply_sub] == [{"jsonrpc": "2.0", "result": True, "id": "ok"}]
    assert frames[responses][0]["error"]["code"] == -32600


def test_send_to_a_subscribed_destination_is_forwarded_by_dotted_prefix(listener: VdsmStompListener) -> None:
    with VdsmLikeClient(_address(listener)) as receiver, VdsmLikeClient(_address(listener)) as sender:
        sub_id = receiver.subscribe("pier.test")
        receiver.send_frame("SUBSCRIBE", {"destination": "pier.other", "id": "x", "receipt": "r1"})
        assert receiver.read_frame().headers == {"receipt-id": "r1"}
        sender.send_frame("SEND", {"destination": "pier.test.sub", "content-type": "application/json",
                                   "receipt": "r2"}, b'{"jsonrpc": "2.0", "method": "hello", "params": {}}')
        assert sender.read_frame().headers == {"receipt-id": "r2"}
        frame = receiver.read_frame()
        assert frame.command == "MESSAGE"
        assert frame.headers["subscription"] == sub_id and frame.headers["destination"] == "pier.test.sub"
        assert frame.json()["method"] == "hello"


def test_events_reach_every_subscriber_and_stop_after_unsubscribe(stack: Stack, listener: VdsmStompListener) -> None:
    with VdsmLikeClient(_address(listener)) as first, VdsmLikeClient(_address(listener)) as second:
        subs = [first.subscribe(EVENTS), second.subscribe(EVENTS)]
        first.call("Host.ping2")  # the SUBSCRIBEs have been handled
        second.call("Host.ping2")
        stack.events.publish("|pier|test|1", {"n": 1})
        for connection in (first, second):
            assert connection.wait_event(lambda e: e["method"] == "|pier|test|1")["params"]["n"] == 1
        second.unsubscribe(subs[1])
        second.call("Host.ping2")
        stack.events.publish("|pier|test|2", {"n": 2})
        first.wait_event(lambda e: e["method"] == "|pier|test|2")
        second.call("Host.ping2")
        assert [e["method"] for e in second.events] == ["|pier|test|1"]


def test_disconnect_with_receipt(client: VdsmLikeClient) -> None:
    client.send_frame("DISCONNECT", {"receipt": "bye-1"})
    receipt = client.read_frame()
    assert receipt.command == "RECEIPT" and receipt.headers == {"receipt-id": "bye-1"}
    with pytest.raises(Closed):
        client.read_frame()


def test_disconnect_answers_what_came_before(client: VdsmLikeClient) -> None:
    ids = [client.send_request("Host.ping2") for _ in range(5)]
    client.send_frame("DISCONNECT", {"receipt": "bye"})
    client.read_until(lambda: all(request_id in client.responses for request_id in ids))
    assert client.read_frame().command == "RECEIPT"


def test_a_slow_request_does_not_hold_up_the_next(client: VdsmLikeClient) -> None:
    slow = client.send_request("Events.poll", {"wait": 1.5, "types": ["pier.never"]})
    assert client.call("Host.ping2") is True
    assert slow not in client.responses  # the ping was answered while the poll still waited
    assert client.wait_response(slow)["result"]["events"] == []


def test_events_subscribe_replays_to_the_events_subscription(stack: Stack, client: VdsmLikeClient) -> None:
    first = stack.events.publish("|pier|old|1", {}).seq
    stack.events.publish("|pier|old|2", {})
    client.subscribe(EVENTS)
    assert client.call("Events.subscribe", after=first - 1, types=["pier.old"])["subscribed"] is True
    client.wait_event(lambda event: event["method"] == "|pier|old|2")
    assert [event["method"] for event in client.events] == ["|pier|old|1", "|pier|old|2"]
