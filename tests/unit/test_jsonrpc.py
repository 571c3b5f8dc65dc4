"""JSON-RPC 2.0 processing: the specification's examples, Pier's limits, clear errors."""

from __future__ import annotations

import json

import pytest

from pier.rpc.registry import CallContext
from tests.unit.conftest import ADMIN, VM_ID, Stack

CTX = CallContext("test", identity=ADMIN)


def answer(stack: Stack, message: object) -> object:
    raw = message if isinstance(message, str) else json.dumps(message)
    text = stack.jsonrpc.handle(raw, CTX)
    return None if text is None else json.loads(text)


def test_call_by_name_and_by_position(stack: Stack) -> None:
    stack.call("VM.create", vmID=VM_ID, vmParams={"vmName": "a", "memSize": 32})
    by_name = answer(stack, {"jsonrpc": "2.0", "method": "Host.getVMList", "params": {"onlyUUID": True}, "id": 1})
    by_position = answer(stack, {"jsonrpc": "2.0", "method": "Host.getVMList", "params": [False, None, True], "id": 2})
    assert by_name == {"jsonrpc": "2.0", "result": [VM_ID], "id": 1}
    assert by_position["result"] == [VM_ID]


def test_verb_without_payload_answers_true(stack: Stack) -> None:
    assert answer(stack, {"jsonrpc": "2.0", "method": "Host.ping2", "id": "a"}) == {
        "jsonrpc": "2.0", "result": True, "id": "a"}


@pytest.mark.parametrize("raw, code", [
    ('{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]', -32700),
    ('{"jsonrpc": "2.0", "method": 1, "params": "bar"}', -32600),
    ('[]', -32600),
    ('{"jsonrpc": "1.0", "method": "Host.ping2", "id": 1}', -32600),
    ('{"jsonrpc": "2.0", "method": "Host.ping2", "params": 5, "id": 1}', -32600),
    ('{"jsonrpc": "2.0", "method": "foobar", "id": "1"}', -32601),
])
def test_specification_errors(stack: Stack, raw: str, code: int) -> None:
    reply = answer(stack, raw)
    assert reply["error"]["code"] == code
    assert reply["jsonrpc"] == "2.0"


def test_batch_of_invalid_elements_answers_each(stack: Stack) -> None:
    reply = answer(stack, "[1,2,3]")
    assert [r["error"]["code"] for r in reply] == [-32600, -32600, -32600]
    assert all(r["id"] is None for r in reply)


def test_mixed_batch_like_the_specification(stack: Stack) -> None:
    reply = answer(stack, [
        {"jsonrpc": "2.0", "method": "Host.ping2", "id": "1"},
        {"jsonrpc": "2.0", "method": "Host.ping2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "Host.getVMList", "id": "9"},
    ])
    assert [(r["id"], r.get("result"), r.get("error", {}).get("code")) for r in reply] == [
        ("1", True, None), (None, None, -32600), ("5", None, -32601), ("9", [], None)]


def test_batch_of_notifications_gets_no_reply(stack: Stack) -> None:
    assert answer(stack, [{"jsonrpc": "2.0", "method": "Host.ping2"}] * 2) is None
    assert answer(stack, {"jsonrpc": "2.0", "method": "Host.ping2"}) is None


def test_invalid_params_name_the_field(stack: Stack) -> None:
    reply = answer(stack, {"jsonrpc": "2.0", "method": "VM.pause", "params": {"vmID": 5}, "id": 1})
    assert reply["error"]["code"] == -32602
    assert reply["error"]["data"]["field"] == "params.vmID"
    assert "vmID" in reply["error"]["message"]
    missing = answer(stack, {"jsonrpc": "2.0", "method": "VM.destroy", "params": {}, "id": 2})
    assert missing["error"]["code"] == -32602 and "'vmID'" in missing["error"]["message"]
    unknown = answer(stack, {"jsonrpc": "2.0", "method": "VM.destroy", "params": {"vmID": VM_ID, "x": 1}, "id": 3})
    assert unknown["error"]["code"] == -32602 and "x" in unknown["error"]["message"]


def test_unknown_method_is_named(stack: Stack) -> None:
    reply = answer(stack, {"jsonrpc": "2.0", "method": "VM.explode", "id": 1})
    assert reply["error"]["code"] == -32601
    assert "VM.explode" in reply["error"]["message"]


def test_vdsm_error_codes_come_through(stack: Stack) -> None:
    reply = answer(stack, {"jsonrpc": "2.0", "method": "VM.getInfo", "params": {"vmID": VM_ID}, "id": 1})
    assert reply["error"]["code"] == 1
    assert reply["error"]["data"]["name"] == "noVM"


def test_limits(stack: Stack) -> None:
    huge = json.dumps({"jsonrpc": "2.0", "method": "Host.ping2", "params": {"pad": "x" * (1 << 20)}, "id": 1})
    assert answer(stack, huge)["error"]["code"] == -32600
    batch = [{"jsonrpc": "2.0", "method": "Host.ping2", "id": i} for i in range(101)]
    reply = answer(stack, batch)
    assert reply["error"]["code"] == -32600 and "101" in reply["error"]["message"]
    assert len(answer(stack, batch[:100])) == 100


def test_legacy_names_are_callable(stack: Stack) -> None:
    reply = answer(stack, {"jsonrpc": "2.0", "method": "getVdsCapabilities", "id": 1})
    assert reply["result"]["uuid"] == stack.host.uuid()


def test_unexpected_errors_do_not_leak_internals(stack: Stack) -> None:
    def explode(*args: object) -> None:
        raise RuntimeError("secret internal detail")

    stack.host.stats = explode
    reply = answer(stack, {"jsonrpc": "2.0", "method": "Host.getStats", "id": 1})
    assert reply["error"]["code"] == 16
    assert "secret" not in json.dumps(reply)
    assert reply["error"]["data"]["reference"]


def test_a_result_that_is_not_json_fails_only_its_own_response(stack: Stack) -> None:
    stack.host.stats = lambda *args: {"when": object()}
    reply = answer(stack, [{"jsonrpc": "2.0", "method": "Host.getStats", "id": 1},
                           {"jsonrpc": "2.0", "method": "Host.ping2", "id": 2}])
    assert reply[0]["id"] == 1 and reply[0]["error"]["code"] == -32603
    assert reply[1] == {"jsonrpc": "2.0", "result": True, "id": 2}


def test_an_invalid_request_says_why_and_keeps_a_valid_id(stack: Stack) -> None:
    reply = answer(stack, {"jsonrpc": "1.0", "method": "Host.ping2", "id": 7})
    assert reply["id"] == 7 and reply["error"]["code"] == -32600
    assert "jsonrpc" in reply["error"]["message"]
    reply = answer(stack, {"jsonrpc": "2.0", "method": "Host.ping2", "id": 7, "extra": 1})
    assert reply["id"] == 7 and "extra" in reply["error"]["message"]
    assert answer(stack, {"jsonrpc": "2.0", "method": "Host.ping2", "id": True})["id"] is None


@pytest.mark.parametrize("name", ["context", "self", "args", "kwargs"])
def test_a_param_named_like_a_dispatch_argument_is_refused_by_name(stack: Stack, name: str) -> None:
    reply = answer(stack, {"jsonrpc": "2.0", "method": "Host.ping2", "params": {name: 1}, "id": 1})
    assert reply["error"]["code"] == -32602 and name in reply["error"]["message"]
    reply = answer(stack, {"jsonrpc": "2.0", "method": "VM.destroy", "params": {"vmID": VM_ID, name: 1}, "id": 2})
    assert reply["error"]["code"] == -32602 and name in reply["error"]["message"]


def test_a_batch_inside_a_batch_is_an_invalid_element(stack: Stack) -> None:
    reply = answer(stack, [[{"jsonrpc": "2.0", "method": "Host.ping2", "id": 1}],
                           {"jsonrpc": "2.0", "method": "Host.ping2", "id": 2}])
    assert reply[0]["error"]["code"] == -32600 and reply[0]["id"] is None
    assert reply[1] == {"jsonrpc": "2.0", "result": True, "id": 2}


def test_params_by_position_empty_or_absent_mean_the_same(stack: Stack) -> None:
    stack.call("VM.create", vmID=VM_ID, vmParams={"vmName": "a", "memSize": 32})
    replies = [answer(stack, {"jsonrpc": "2.0", "method": "Host.getVMList", **params, "id": 1})
               for params in ({}, {"params": []}, {"params": {}})]
    assert all(reply["result"] == replies[0]["result"] for reply in replies)
    assert answer(stack, {"jsonrpc": "2.0", "method": "VM.destroy", "params": [VM_ID], "id": 2})["result"]


def test_only_the_registrys_verbs_are_callable(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Functions put in jsonrpcserver's module-wide registry (what its @method does) are not Pier's verbs."""
    from jsonrpcserver import Success
    from jsonrpcserver.methods import global_methods

    monkeypatch.setitem(global_methods, "Leaky.call", lambda *args: Success("leaked"))
    reply = answer(stack, {"jsonrpc": "2.0", "method": "Leaky.call", "id": 1})
    assert reply["error"]["code"] == -32601 and "Leaky.call" in reply["error"]["message"]


def test_every_verbs_params_schema_compiles(schema) -> None:
    """Validators are compiled on first use; a schema fastjsonschema cannot compile must still fail here."""
    for declared in schema.verbs.values():
        assert callable(declared.compile()), declared.name
