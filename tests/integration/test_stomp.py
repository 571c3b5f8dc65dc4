"""JSON-RPC over STOMP through the real RabbitMQ: batches, bad input, events on the topic, a broker
restart during traffic, a request redelivered after pierd is killed, and a broker that is down.

Every Core verb over STOMP is tested by test_verbs.py (the `client` fixture's stomp case); this
file covers what only the broker wire has.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pier.config import Settings
from pier.daemon import Daemon
from tests.integration.clients import CallFailed, HttpRpcClient, StompClient
from tests.integration.conftest import BROKER, STOMP_PREFIX, Pierd, new_vm_id, start_stomp_pierd
from tests.integration.test_verbs import create, vm_params


def request(method: str, request_id: object = 1, **params: object) -> dict:
    return {"jsonrpc": "2.0", "method": method, "params": params, "id": request_id}


def test_batches_and_the_reply_cache(stomp_pierd: Pierd) -> None:
    client = stomp_pierd.client("stomp")
    vm_id = new_vm_id()
    reply = client.send([request("Host.ping2", 1), {"jsonrpc": "2.0", "method": "Host.ping2"},
                         request("VM.create", "c", vmID=vm_id, vmParams=vm_params(vm_id)),
                         request("VM.pause", 3, vmID=new_vm_id()), 7])
    assert [r["id"] for r in reply] == [1, "c", 3, None]
    assert reply[0]["result"] is True and reply[1]["result"]["vmId"] == vm_id
    assert reply[2]["error"]["code"] == 1 and reply[3]["error"]["code"] == -32600
    only_notifications = client.send_frame(json.dumps([{"jsonrpc": "2.0", "method": "Host.ping2"}] * 2))
    assert client.reply(only_notifications, timeout=0.5) is None
    # The same request again (same reply-to and id): answered from the reply cache, not run twice
    again = client.send([request("VM.create", "c", vmID=vm_id, vmParams=vm_params(vm_id))])
    assert again == [reply[1]]
    with pytest.raises(CallFailed) as exists:
        client.call("VM.create", vmID=vm_id, vmParams=vm_params(vm_id))  # a new id runs again
    assert exists.value.code == 4
    assert client.call("Host.getAgentInfo")["transports"]["stomp"] == f"stomp://127.0.0.1:{BROKER[1]}" + \
        stomp_pierd.requests
    client.close()


def test_bad_input_gets_errors_and_the_consumer_keeps_serving(stomp_pierd: Pierd) -> None:
    client = stomp_pierd.client("stomp")
    assert client.send("{not json")["error"]["code"] == -32700
    assert client.send(b"\xff\xfe not utf-8")["error"]["code"] == -32700
    assert client.send('{"jsonrpc": "1.0", "method": "Host.ping2", "id": 1}')["error"]["code"] == -32600
    assert client.send(request("VM.fly"))["error"]["code"] == -32601
    assert client.send(request("VM.pause", vmID=7))["error"]["code"] == -32602
    too_big = client.send(json.dumps(request("Host.ping2", pad="x" * (1 << 20))))["error"]
    assert too_big["code"] == -32600 and too_big["data"]["limit"] == 1 << 20
    assert client.send([request("Host.ping2", i) for i in range(101)])["error"]["code"] == -32600

    # No reply-to: a request is run (its answer dropped), bad input is logged and dropped
    vm_id = new_vm_id()
    token = {"authorization": f"Bearer {client.token}"}
    client.connection.send(stomp_pierd.requests, "{not json", headers=token)
    client.connection.send(stomp_pierd.requests, json.dumps(request("VM.create", vmID=vm_id,
                                                                    vmParams=vm_params(vm_id))), headers=token)
    assert stomp_pierd.wait_logged("without reply-to was answered; the answer is dropped")
    deadline = time.monotonic() + 5
    while vm_id not in [vm["vmId"] for vm in client.call("Host.getVMList")]:
        assert time.monotonic() < deadline, "a request without reply-to was not run"
        time.sleep(0.05)

    # A request that waited past its deadline is dropped, with a log line
    late = client.send_frame(json.dumps(request("VM.destroy", vmID=vm_id)),
                             {"expires": str(int(time.time() * 1000) - 1000)})
    assert client.reply(late, timeout=1) is None
    assert stomp_pierd.wait_logged("dropped a request") and stomp_pierd.wait_logged("its deadline (expires) passed")
    old = client.send_frame(json.dumps(request("VM.destroy", vmID=vm_id)),
                            {"timestamp": str(int(time.time() * 1000) - 3600_000)})
    assert client.reply(old, timeout=1) is None
    assert stomp_pierd.wait_logged("it was sent 3600 s ago")
    assert client.call("VM.getInfo", vmID=vm_id)["status"] == "Up"
    assert client.call("Host.ping2") is True
    client.close()


def test_events_arrive_on_the_topic_in_order(stomp_pierd: Pierd) -> None:
    consumer = StompClient(BROKER, stomp_pierd.requests)
    everything = consumer.subscribe(stomp_pierd.events + ".#")
    status_only = consumer.subscribe(stomp_pierd.events + ".virt.VM_status")
    start = consumer.call("Host.getAgentInfo")["lastEventSeq"]
    vm_id = new_vm_id()
    create(consumer, vm_id)
    consumer.call("VM.pause", vmID=vm_id)
    consumer.call("VM.cont", vmID=vm_id)

    def statuses(frames: list) -> list[str]:
        return [json.loads(body)["params"][vm_id]["status"] for _, body in frames
                if json.loads(body)["method"] == f"|virt|VM_status|{vm_id}"]

    frames = consumer.wait_frames(status_only, lambda got: statuses(got)[-2:] == ["Paused", "Up"])
    assert statuses(frames)[-2:] == ["Paused", "Up"]
    headers, body = frames[-1]
    message = json.loads(body)
    assert headers["destination"] == stomp_pierd.events + ".virt.VM_status"
    assert headers["content-type"] == "application/json" and headers["persistent"] == "true"
    assert "id" not in message and int(headers["seq"]) == message["params"]["seq"]
    last = int(headers["seq"])
    frames = consumer.wait_frames(everything, lambda got: got and int(got[-1][0]["seq"]) >= last)
    seqs = [seq for seq in (int(h["seq"]) for h, _ in frames) if start < seq <= last]
    assert seqs == list(range(start + 1, last + 1)), "the topic skipped or reordered events"
    replayed = consumer.call("Events.replay", after=start, limit=len(seqs))
    assert [e["seq"] for e in replayed["events"]] == seqs
    assert consumer.call("Events.replay", after=start, types=["virt.VM_status"])["events"][-1]["seq"] == last
    consumer.close()


def fresh(seqs: list[int]) -> list[int]:
    """What a consumer keeps of the `seq` it receives: each one greater than all before it."""
    kept: list[int] = []
    for seq in seqs:
        if not kept or seq > kept[-1]:
            kept.append(seq)
    return kept


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


@pytest.mark.disruptive
@pytest.mark.skipif(shutil.which("rabbitmqctl") is None or os.geteuid() != 0,
                    reason="restarting the broker needs rabbitmqctl as root")
def test_broker_restart_during_traffic_loses_no_event(stomp_pierd: Pierd) -> None:
    durable_id = f"pier-test-{new_vm_id()}"
    durable = {"durable": "true", "auto-delete": "false", "x-expires": "60000"}  # the queue goes if left behind
    keeper = StompClient(BROKER, stomp_pierd.requests)  # a durable subscription: the broker keeps its events
    keeper.subscribe(stomp_pierd.events + ".#", durable_id, **durable)
    watcher = StompClient(BROKER, stomp_pierd.requests)  # a plain one: it fills the gap with Events.replay
    plain = watcher.subscribe(stomp_pierd.events + ".#")
    first = watcher.call("Host.getAgentInfo")["lastEventSeq"] + 1
    http = HttpRpcClient(stomp_pierd.http)
    done, calls, errors = threading.Event(), [0], []

    def traffic() -> None:  # VM life cycles over HTTP, which keeps serving while the broker is away
        while not done.is_set():
            vm_id = new_vm_id()
            try:
                create(http, vm_id)
                http.call("VM.pause", vmID=vm_id)
                http.call("VM.cont", vmID=vm_id)
                http.call("VM.destroy", vmID=vm_id)
                calls[0] += 4
            except Exception as exc:
                errors.append(exc)
                return

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        time.sleep(0.5)
        try:
            rabbitmqctl("stop_app")
            before = calls[0]
            time.sleep(1.0)
            assert calls[0] > before, "other transports stopped serving while the broker was away"
        finally:
            rabbitmqctl("start_app")
        back = time.monotonic()
        while True:
            client = None
            try:
                client = StompClient(BROKER, stomp_pierd.requests, timeout=1)
                assert client.call("Host.ping2", timeout=1) is True
                break
            except Exception:
                if client is not None:
                    client.close()
                assert time.monotonic() - back < 5, "pierd did not answer over STOMP within 5 s of the broker"
                time.sleep(0.1)
        back_after = time.monotonic() - back
        time.sleep(0.5)
    finally:
        done.set()
        worker.join()
    assert not errors, errors
    last = http.call("Host.getAgentInfo")["lastEventSeq"]
    before = [int(h["seq"]) for h, _ in keeper.frames[durable_id]]
    again = StompClient(BROKER, stomp_pierd.requests)
    try:
        again.subscribe(stomp_pierd.events + ".#", durable_id, **durable)
        after = [int(h["seq"]) for h, _ in again.wait_frames(durable_id, lambda got: got and int(got[-1][0]["seq"])
                                                             >= last, timeout=15)]
    finally:
        again.connection.unsubscribe(durable_id, headers={"durable": "true"})
    # The durable subscriber sees contiguous seq across the restart, once it drops repeats: the
    # outbox sends again the events the broker had not confirmed when it went away.
    assert fresh(before + after)[:last - first + 1] == list(range(first, last + 1)), \
        "the durable subscriber lost events"

    # The plain subscriber missed what came while it was away: it learns the gap and replays it.
    got = {int(h["seq"]) for h, _ in watcher.frames[plain]}
    cursor = max(got)
    while cursor < last:
        batch = client.call("Events.replay", after=cursor)
        got |= {event["seq"] for event in batch["events"]}
        cursor = batch["last"]
    assert set(range(first, last + 1)) <= got, "events missing even after Events.replay"
    print(f"STOMP answered again {back_after:.2f} s after start_app returned; {last - first + 1} events, "
          f"plain saw {len(watcher.frames[plain])}, durable {len(before)}+{len(after)}, calls {calls[0]}, "
          f"{len(before) + len(after) - len(fresh(before + after))} repeated")
    for each in (client, keeper, watcher, again):
        each.close()


def reply_cache(state_dir: Path) -> list[str | None]:
    """The replies in pierd's reply cache, None for each request started and not yet answered."""
    with sqlite3.connect(f"file:{state_dir / 'pier.db'}?mode=ro", uri=True) as db:
        try:
            return [reply for reply, in db.execute("SELECT reply FROM stomp_requests")]
        except sqlite3.OperationalError:
            return []


def test_a_request_redelivered_after_pierd_is_killed_runs_once(stomp_broker, tmp_path: Path, test_uri: str) -> None:
    """A batch [VM.create X, VM.pause Y] where the pause waits for Y's lock, held by a VM.shutdown
    task with a 30 s delay: pierd is killed (SIGKILL) once it has run the create and started the
    pause, before it could answer or acknowledge. The broker delivers the batch again to the next
    pierd, which answers the create from its reply cache and refuses to run the pause again."""
    state = tmp_path / "state"
    first = start_stomp_pierd(state, test_uri)
    client = StompClient(BROKER, first.requests)
    try:
        busy, vm_id = new_vm_id(), new_vm_id()
        create(client, busy)
        client.call("VM.shutdown", vmID=busy, delay=30)
        batch = [request("VM.create", "c", vmID=vm_id, vmParams=vm_params(vm_id)),
                 request("VM.pause", "p", vmID=busy)]
        correlation = client.send_frame(json.dumps(batch))
        deadline = time.monotonic() + 10
        while True:  # the create has its reply; the pause has started and waits for the VM's lock
            replies = reply_cache(state)
            if None in replies and any(reply and json.loads(reply).get("id") == "c" for reply in replies):
                break
            assert time.monotonic() < deadline, f"pierd did not run the batch as expected: {replies}"
            time.sleep(0.02)
    except BaseException:
        client.close()
        raise
    finally:
        first.kill()
    assert client.reply(correlation, timeout=0.2) is None
    second = start_stomp_pierd(state, test_uri)
    try:
        raw = client.reply(correlation, timeout=10)
        assert raw is not None, "the batch was not delivered again, or not answered"
        created, paused = json.loads(raw)
        assert created["id"] == "c" and created["result"]["vmId"] == vm_id
        assert paused["id"] == "p" and paused["error"]["code"] == 99
        assert "restarted while running VM.pause" in paused["error"]["message"]
        # The test driver keeps VMs in memory: the new pierd has none unless the create ran again.
        assert vm_id not in [vm["vmId"] for vm in client.call("Host.getVMList")]
        assert second.wait_logged("VM.create (id 'c') was delivered again; sending its reply again")
    finally:
        client.close()
        assert second.stop() == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_pierd_serves_without_the_broker_and_stops_promptly(tmp_path: Path, test_uri: str) -> None:
    port = free_port()
    config = tmp_path / "pierd.toml"
    config.write_text(f'stomp_broker = "127.0.0.1:{port}"\nstomp_prefix = "{STOMP_PREFIX}"\n')
    daemon = Pierd(tmp_path / "state", test_uri, "--config", str(config))
    try:
        assert daemon.wait_logged(f"STOMP broker 127.0.0.1:{port} unreachable (")
        assert daemon.logged("Connection refused); retrying")
        http = HttpRpcClient(daemon.http)
        assert http.call("Host.ping2") is True
        assert http.call("Host.getAgentInfo")["transports"]["stomp"].startswith(f"stomp://127.0.0.1:{port}/queue/")
        time.sleep(1)  # a few more attempts, quietly
        assert sum("unreachable" in line for line in daemon.log) == 1
    finally:
        started = time.monotonic()
        assert daemon.stop() == 0
    assert time.monotonic() - started < 3


def test_stop_joins_every_stomp_thread(stomp_broker, tmp_path: Path, test_uri: str) -> None:
    before = set(threading.enumerate())
    daemon = Daemon(Settings(libvirt_uri=test_uri, http="127.0.0.1:0", ws="127.0.0.1:0", state_dir=str(tmp_path),
                             stomp_broker=f"{BROKER[0]}:{BROKER[1]}", stomp_prefix=STOMP_PREFIX,
                             insecure_loopback=True, unix_socket=str(tmp_path / "pier.sock")))
    daemon.start()
    listener = daemon.listeners["stomp"]
    deadline = time.monotonic() + 10
    while not listener.connected:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    client = StompClient(BROKER, listener.requests, token=daemon.credentials.create_token("admin")["token"])
    create(client, new_vm_id())  # runs on a worker; its events go out through the outbox
    client.close()
    daemon.stop()
    left = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
    assert left == []
