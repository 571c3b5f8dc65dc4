"""Who may call through the broker: each request frame carries its caller's bearer token.

Against the real RabbitMQ, with two broker users of the test's own (made with rabbitmqctl and
deleted afterwards): being a broker user, whichever, gives no role; only the token in a frame's
`authorization` header does, checked like on every other transport. The broker's `user-id`
header proves nothing to pierd: RabbitMQ validates it on a STOMP SEND, but an AMQP 0-9-1
publisher can put a `user-id` of its choosing in the message's headers table, and a STOMP
consumer then reads that one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.integration.clients import CallFailed, HttpRpcClient, StompClient, http_request
from tests.integration.conftest import BROKER, STOMP_PREFIX, Pierd, new_vm_id
from tests.integration.test_verbs import vm_params

pytestmark = pytest.mark.skipif(shutil.which("rabbitmqctl") is None or os.geteuid() != 0,
                                reason="making broker users needs rabbitmqctl as root")


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def broker_users(stomp_broker: tuple[str, int]) -> Iterator[dict[str, str]]:
    """Two broker users, `monitor` and `stranger` (name -> passcode), with every permission on vhost /."""
    suffix = uuid.uuid4().hex[:8]
    users = {f"piertest-monitor-{suffix}": uuid.uuid4().hex, f"piertest-stranger-{suffix}": uuid.uuid4().hex}
    made = []
    try:
        for name, passcode in users.items():
            rabbitmqctl("add_user", name, passcode)
            made.append(name)
            rabbitmqctl("set_permissions", "-p", "/", name, ".*", ".*", ".*")
        yield users
    finally:
        for name in made:
            rabbitmqctl("delete_user", name)


def as_user(daemon: Pierd, users: dict[str, str], who: str, token: str = "") -> StompClient:
    """A StompClient logged in to the broker as the user whose name starts with `piertest-<who>`."""
    name = next(name for name in users if name.startswith(f"piertest-{who}-"))
    return StompClient(BROKER, daemon.requests, token=token, login=name, passcode=users[name], timeout=10)


def refused(client: StompClient, verb: str, **params: object) -> CallFailed:
    with pytest.raises(CallFailed) as caught:
        client.call(verb, **params)
    return caught.value


def test_guest_without_a_token_gets_no_admin_token(stomp_pierd: Pierd) -> None:
    guest = StompClient(BROKER, stomp_pierd.requests, token="")
    try:
        error = refused(guest, "Token.create", role="admin", name="stolen")
        assert error.name == "unauthenticated"
        assert "authorization: Bearer" in error.message and "pier token create" in error.message
        assert refused(guest, "Host.ping2").name == "unauthenticated"
    finally:
        guest.close()
    tokens = json.loads(http_request("GET", stomp_pierd.http + "/api/v1/tokens")[2])
    assert "stolen" not in [token["name"] for token in tokens]


def test_a_viewer_token_reads_and_is_refused_changes(stomp_pierd: Pierd, broker_users: dict[str, str]) -> None:
    monitor = as_user(stomp_pierd, broker_users, "monitor", stomp_pierd.make_token("viewer", name="monitor"))
    try:
        assert monitor.call("Host.ping2") is True
        error = refused(monitor, "Token.create", role="admin")
        assert error.name == "forbidden" and "viewer" in error.message
    finally:
        monitor.close()


def test_a_broker_user_without_a_token_has_no_role(stomp_pierd: Pierd, broker_users: dict[str, str]) -> None:
    stranger = as_user(stomp_pierd, broker_users, "stranger")
    name = next(name for name in broker_users if "-stranger-" in name)
    try:
        assert refused(stranger, "Host.ping2").name == "unauthenticated"
        # Its broker-validated user-id (the broker checks it against the login) is no role either.
        correlation = stranger.send_frame(json.dumps({"jsonrpc": "2.0", "method": "Host.ping2", "id": 1}),
                                          {"user-id": name})
        reply = json.loads(stranger.reply(correlation) or "{}")
        assert reply["error"]["data"]["name"] == "unauthenticated", reply
    finally:
        stranger.close()


def test_a_sender_claiming_another_users_id_gets_nothing_served(stomp_pierd: Pierd,
                                                                broker_users: dict[str, str]) -> None:
    monitor = next(name for name in broker_users if "-monitor-" in name)
    stranger = as_user(stomp_pierd, broker_users, "stranger", stomp_pierd.token)
    vm_id = new_vm_id()
    try:
        request = {"jsonrpc": "2.0", "method": "VM.create", "params": {"vmID": vm_id, "vmParams": vm_params(vm_id)},
                   "id": 1}
        correlation = stranger.send_frame(json.dumps(request), {"user-id": monitor})
        assert stranger.reply(correlation, timeout=2) is None
        assert any(f"user_id property set to '{monitor}'" in error for error in stranger.errors), stranger.errors
    finally:
        stranger.close()
    assert vm_id not in [vm["vmId"] for vm in HttpRpcClient(stomp_pierd.http).call("Host.getVMList")]


def test_the_token_in_the_header_is_checked_on_each_request(stomp_pierd: Pierd) -> None:
    made = json.loads(http_request("POST", stomp_pierd.http + "/api/v1/tokens", {"role": "operator", "name": "eng"})[2])
    engine = StompClient(BROKER, stomp_pierd.requests, token=made["token"])
    forger = StompClient(BROKER, stomp_pierd.requests, token=made["token"][:-4] + "AAAA")
    try:
        vm_id = new_vm_id()
        engine.call("VM.create", vmID=vm_id, vmParams=vm_params(vm_id))
        entries = json.loads(http_request("GET", stomp_pierd.http + "/api/v1/audit")[2])["entries"]
        assert [e["who"] for e in entries if e["verb"] == "VM.create"][-1] == f"token {made['tokenID']} (eng)"
        error = refused(forger, "Host.ping2")
        assert error.name == "unauthenticated" and "not valid" in error.message
        assert http_request("DELETE", f"{stomp_pierd.http}/api/v1/tokens/{made['tokenID']}")[0] == 200
        error = refused(engine, "VM.destroy", vmID=vm_id)
        assert error.name == "unauthenticated" and "revoked" in error.message
        assert HttpRpcClient(stomp_pierd.http).call("VM.getInfo", vmID=vm_id)["status"] == "Up"
    finally:
        engine.close()
        forger.close()


def test_discovery_answers_only_a_caller_with_a_token(stomp_pierd: Pierd) -> None:
    host_id = json.loads(http_request("GET", stomp_pierd.http + "/api/v1")[2])["hostId"]
    discovery = f"/topic/{STOMP_PREFIX}.discovery"
    request = json.dumps({"jsonrpc": "2.0", "method": "Host.getAgentInfo", "id": 1})
    anonymous = StompClient(BROKER, discovery, token="")
    engine = StompClient(BROKER, discovery)
    try:
        reply = json.loads(anonymous.reply(anonymous.send_frame(request)) or "{}")
        assert reply["error"]["data"]["name"] == "unauthenticated" and "hostId" not in json.dumps(reply)
        deadline = time.monotonic() + 10
        while True:  # other pierds on the topic (none, usually) refuse this token; ours answers it
            reply = json.loads(engine.reply(engine.send_frame(request)) or "{}")
            if reply.get("result", {}).get("hostId") == host_id:
                break
            assert time.monotonic() < deadline, reply
    finally:
        anonymous.close()
        engine.close()


def test_the_reply_cache_never_answers_one_caller_with_anothers_reply(stomp_pierd: Pierd) -> None:
    """An admin's Token.create is answered to a named queue; a viewer that sends the same request
    (same id, same reply-to) is refused, not sent the admin's cached reply, which holds a token."""
    shared = f"/queue/{STOMP_PREFIX}.replies-{uuid.uuid4().hex[:8]}"  # the fixture's policy expires it
    admin = StompClient(BROKER, stomp_pierd.requests)
    viewer = StompClient(BROKER, stomp_pierd.requests, token=stomp_pierd.make_token("viewer"))
    request = json.dumps({"jsonrpc": "2.0", "method": "Token.create", "params": {"role": "admin"}, "id": "same"})
    try:
        replies = admin.subscribe(shared)
        first = admin.send_frame(request, {"reply-to": shared})
        admin.wait_frames(replies, lambda got: len(got) >= 1)
        again = viewer.send_frame(request, {"reply-to": shared})
        frames = admin.wait_frames(replies, lambda got: len(got) >= 2)
        by_correlation = {headers["correlation-id"]: json.loads(body) for headers, body in frames}
        assert "token" in by_correlation[first]["result"]
        assert by_correlation[again]["error"]["data"]["name"] == "forbidden", by_correlation[again]
    finally:
        admin.close()
        viewer.close()
