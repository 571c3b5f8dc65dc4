#!/usr/bin/env python3
"""An engine-like monitor of Pier hosts, through a STOMP broker only.

It is where an engine developer starts: it finds the hosts behind a broker (or is given their
ids), runs an engine's activation sequence on each (`Host.ping2`, `Host.getCapabilities`,
`Host.getHardwareInfo`, `Host.getStats`), then polls `Host.getAllVmStats` on every host each
`--interval` seconds, printing events as they come. Events carry a sequence number per host: a
gap (missed while this monitor or the broker was away) is filled with `Events.replay`. When the
broker connection is lost (a broker restart, a network cut), the monitor connects again with
backoff, subscribes again and replays what it missed; a poll meanwhile reports an error for the
host and the next one goes on.

The wire, as pierd serves it:
  requests   SEND /queue/<prefix>.<hostId>.requests, a JSON-RPC 2.0 message, with reply-to,
             correlation-id, an expires deadline (ms since the epoch) and the caller's token in
             `authorization: Bearer pier_...` (a token of that host: `pier token create --role
             admin --name engine` there); without one a host answers every request
             "unauthenticated", whichever broker user sends it
  replies    to the reply-to, with the correlation-id copied
  discovery  the same request sent to /topic/<prefix>.discovery is answered by every host
  events     /topic/<prefix>.<hostId>.events.<namespace>.<name>, JSON-RPC notifications with `seq`

  PIER_TOKEN=pier_... python3 contrib/engine_monitor.py --broker 127.0.0.1:61613   # discover, monitor
  python3 contrib/engine_monitor.py --host <hostId> --token <hostId>=pier_... --cycles 1 --json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import Any

import stomp

ACTIVATION = ("Host.ping2", "Host.getCapabilities", "Host.getHardwareInfo", "Host.getStats")


class CallError(Exception):
    """A JSON-RPC error answered by a host."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')} {error.get('message')}")
        self.code = error.get("code")


class _Link(stomp.ConnectionListener):
    """One stomp.py connection of a Broker; its callbacks run on that connection's receiver thread."""

    def __init__(self, broker: Broker, connection: stomp.Connection12) -> None:
        self.broker = broker
        self.connection = connection
        self.connected = threading.Event()
        self.lost = threading.Event()
        self.settled = threading.Event()  # connected or lost

    def on_connecting(self, host_and_port: tuple[str, int]) -> None:
        try:
            self.connection.transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):  # closed already (stomp.py then has no socket): this attempt fails
            pass

    def on_connected(self, frame: Any) -> None:
        self.connected.set()
        self.settled.set()

    def on_message(self, frame: Any) -> None:
        self.broker._message(frame)

    def on_receipt(self, frame: Any) -> None:
        self.broker._receipt(frame)

    def on_disconnected(self) -> None:
        self.lost.set()
        self.settled.set()
        self.broker._lost(self)


class Broker:
    """Calls to hosts (matched by correlation-id) and event subscriptions, over one STOMP connection
    at a time: stomp.py never reconnects by itself, so when the broker goes away this connects again
    with backoff, subscribes again, and tells `on_reconnected` callbacks so that they fetch what
    they missed. A call pending when the connection is lost fails with ConnectionError; `call`
    sends it again once the broker is back (every verb this monitor sends only reads)."""

    def __init__(self, host: str, port: int, *, login: str = "guest", passcode: str = "guest", vhost: str = "/",
                 prefix: str = "pier", timeout: float = 30.0, token: str = "",
                 host_tokens: dict[str, str] | None = None, out: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.prefix = prefix
        self.timeout = timeout
        self.token = token  # sent to any host without a token of its own in host_tokens, and to discovery
        self.host_tokens = dict(host_tokens or {})
        self.refusals: list[str] = []  # why hosts refused the last discovery request
        self.on_reconnected: list[Callable[[], None]] = []  # called on a thread of their own once back
        self._address = (host, port)
        self._login = (login, passcode, vhost)
        self._out = out or (lambda record: None)
        self.reply_to = f"/temp-queue/engine-{uuid.uuid4().hex[:12]}"
        self._pending: dict[str, Future] = {}
        self._broadcasts: dict[str, list[Any]] = {}
        self._handlers: dict[str, Callable[[dict[str, str], dict[str, Any]], None]] = {}
        self._subscriptions: dict[str, str] = {}  # subscription id -> destination, made again on a new connection
        self._receipts: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._up = threading.Event()
        self._closing = threading.Event()
        self._reconnecting: threading.Thread | None = None
        self._link = self._open()  # the first connection fails loudly: stomp.py's exceptions or OSError
        self._up.set()

    @property
    def connection(self) -> stomp.Connection12:
        return self._link.connection

    def _open(self) -> _Link:
        login, passcode, vhost = self._login
        connection = stomp.Connection12([self._address], vhost=vhost, heartbeats=(10000, 10000),
                                        reconnect_attempts_max=1)
        link = _Link(self, connection)
        connection.set_listener("engine", link)
        with self._lock:
            self._link = link
        connection.connect(login, passcode, wait=False, with_connect_command=True)
        link.settled.wait(self.timeout)
        if not link.connected.is_set() or link.lost.is_set():
            connection.disconnect()
            raise ConnectionError("no CONNECTED frame from the broker")
        return link

    # -- the connection's callbacks, on its receiver thread -------------------------------------

    # An exception escaping a callback makes stomp.py close the connection: none may escape.

    def _message(self, frame: Any) -> None:
        correlation = frame.headers.get("correlation-id", "")
        try:
            body = json.loads(frame.body)
        except ValueError:
            self._out({"kind": "error", "error": f"a message that is not JSON: {frame.body[:200]!r}"})
            return
        with self._lock:
            future = self._pending.pop(correlation, None)
            broadcast = self._broadcasts.get(correlation)
            handler = self._handlers.get(frame.headers.get("subscription", ""))
        if future is not None:
            future.set_result(body)
        elif broadcast is not None:
            broadcast.append(body)
        elif handler is not None:
            try:
                handler(frame.headers, body)
            except Exception as exc:
                self._out({"kind": "error", "error": f"handling {frame.headers.get('destination')}: {exc!r}"})

    def _receipt(self, frame: Any) -> None:
        with self._lock:
            future = self._receipts.pop(frame.headers.get("receipt-id", ""), None)
        if future is not None:
            future.set_result(None)

    def _lost(self, link: _Link) -> None:
        with self._lock:
            if link is not self._link:
                return
            was_up = self._up.is_set()
            self._up.clear()
            pending, self._pending = self._pending, {}
            receipts, self._receipts = self._receipts, {}
        for future in (*pending.values(), *receipts.values()):
            future.set_exception(ConnectionError("lost the broker"))
        if not was_up or self._closing.is_set():
            return  # lost while connecting: whoever connects tries again
        self._out({"kind": "broker", "event": "lost", "broker": f"{self._address[0]}:{self._address[1]}"})
        self._reconnecting = threading.Thread(target=self._reconnect, name="broker-reconnect", daemon=True)
        self._reconnecting.start()

    # -- reconnecting ---------------------------------------------------------------------------

    def _reconnect(self) -> None:
        lost_at, delay = time.monotonic(), 0.2
        while not self._closing.is_set():
            try:
                link = self._open()
                with self._lock:
                    subscriptions = dict(self._subscriptions)
                for subscription, destination in subscriptions.items():
                    self._subscribe(link, destination, subscription)
            except Exception:  # stomp.py raises several kinds at a broker that is away; any means "not yet"
                self._closing.wait(delay * random.uniform(0.75, 1.0))
                delay = min(delay * 2, 5.0)
                continue
            if link.lost.is_set():
                continue
            self._up.set()
            self._out({"kind": "broker", "event": "back", "after": round(time.monotonic() - lost_at, 2)})
            for callback in list(self.on_reconnected):
                threading.Thread(target=callback, name="catch-up", daemon=True).start()
            return

    # -- calls ----------------------------------------------------------------------------------

    def _send(self, destination: str, verb: str, params: dict[str, Any], correlation: str, token: str) -> None:
        if not self._up.wait(self.timeout):
            raise ConnectionError(f"no broker connection for {self.timeout:g} s")
        message = {"jsonrpc": "2.0", "method": verb, "params": params, "id": f"{correlation}-{next(self._ids)}"}
        headers = {"reply-to": self.reply_to, "correlation-id": correlation,
                   "expires": str(int((time.time() + self.timeout) * 1000))}
        if token:
            headers["authorization"] = f"Bearer {token}"
        try:
            self.connection.send(destination, json.dumps(message), content_type="application/json", headers=headers)
        except (stomp.exception.StompException, OSError) as exc:  # lost between the check and the send
            raise ConnectionError(f"lost the broker: {exc or type(exc).__name__}") from None

    def call_async(self, host_id: str, verb: str, params: dict[str, Any] | None = None) -> Future:
        """Send `verb` to one host; the future holds its result (or raises CallError or ConnectionError)."""
        correlation = uuid.uuid4().hex
        raw: Future = Future()
        result: Future = Future()
        raw.add_done_callback(lambda done: _settle(done, result))
        with self._lock:
            self._pending[correlation] = raw
        try:
            self._send(f"/queue/{self.prefix}.{host_id}.requests", verb, params or {}, correlation,
                       self.host_tokens.get(host_id, self.token))
        except ConnectionError as exc:
            with self._lock:
                self._pending.pop(correlation, None)
            if not raw.done():
                raw.set_exception(exc)
        return result

    def call(self, host_id: str, verb: str, params: dict[str, Any] | None = None) -> Any:
        """`verb`'s result; sent again when the connection is lost before the reply (within `timeout`)."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return self.call_async(host_id, verb, params).result(max(0.0, deadline - time.monotonic()))
            except ConnectionError:
                if time.monotonic() >= deadline or self._closing.is_set():
                    raise

    def discover(self, seconds: float) -> list[str]:
        """Host ids of every pierd that answers the discovery topic within `seconds` and accepts
        `token`; why the others refused is in `refusals`."""
        correlation = uuid.uuid4().hex
        with self._lock:
            self._broadcasts[correlation] = replies = []
        self._send(f"/topic/{self.prefix}.discovery", "Host.getAgentInfo", {}, correlation, self.token)
        time.sleep(seconds)
        with self._lock:
            del self._broadcasts[correlation]
        self.refusals = [reply["error"].get("message", "") for reply in replies if "error" in reply]
        return sorted({reply["result"]["hostId"] for reply in replies if "result" in reply})

    def follow_events(self, host_id: str, handler: Callable[[dict[str, str], dict[str, Any]], None]) -> None:
        """Call `handler(headers, notification)` for each event of `host_id` published from now on
        (returns once the broker has confirmed the subscription; subscribed again after a reconnection)."""
        subscription = f"events-{host_id}"
        destination = f"/topic/{self.prefix}.{host_id}.events.#"
        with self._lock:
            self._handlers[subscription] = handler
            self._subscriptions[subscription] = destination
        if not self._up.wait(self.timeout):
            raise ConnectionError(f"no broker connection for {self.timeout:g} s")
        self._subscribe(self._link, destination, subscription)

    def _subscribe(self, link: _Link, destination: str, subscription: str) -> None:
        receipt: Future = Future()
        with self._lock:
            self._receipts[subscription] = receipt
        link.connection.subscribe(destination, subscription, ack="auto", headers={"receipt": subscription})
        receipt.result(self.timeout)

    def close(self) -> None:
        self._closing.set()
        if self._reconnecting is not None:
            self._reconnecting.join(self.timeout)
        try:
            self._link.connection.disconnect()
        except (stomp.exception.StompException, OSError):
            pass  # lost already


def _settle(raw: Future, result: Future) -> None:
    if raw.exception() is not None:
        result.set_exception(raw.exception())
        return
    reply = raw.result()
    if "error" in reply:
        result.set_exception(CallError(reply["error"]))
    else:
        result.set_result(reply["result"])


class HostMonitor:
    """What the engine knows of one host: its facts, its VMs, and the last event seen.

    Its events are printed in order of arrival, each once: from where the host's event log stood
    at activation on, a gap in `seq` (events missed while this monitor or the broker was away) is
    filled with `Events.replay`, and so is what was published while the broker connection was
    down."""

    def __init__(self, broker: Broker, host_id: str, out: Callable[[dict[str, Any]], None]) -> None:
        self.broker = broker
        self.host_id = host_id
        self.out = out
        self.last_seq: int | None = None
        self._events = threading.Lock()
        self._reported = False  # events that come before the "activated" record wait for it here:
        self._early: list[tuple[int | None, str | None, dict[str, Any]]] = []

    def activate(self) -> dict[str, Any]:
        timings, results = {}, {}
        try:
            for verb in ACTIVATION:
                started = time.perf_counter()
                results[verb] = self.broker.call(self.host_id, verb)
                timings[verb] = round((time.perf_counter() - started) * 1000, 2)
            caps = results["Host.getCapabilities"]
            self.last_seq = self.broker.call(self.host_id, "Host.getAgentInfo").get("lastEventSeq")
            self.broker.follow_events(self.host_id, self.on_event)
            self.broker.on_reconnected.append(self.catch_up)
            report = {"kind": "activated", "host": self.host_id, "cpuModel": caps.get("cpuModel"),
                      "cpuCores": caps.get("cpuCores"), "memSize": caps.get("memSize"),
                      "vmCount": results["Host.getStats"].get("vmCount"), "ms": timings}
            self.out(report)
        finally:
            with self._events:
                self._reported = True
                for seq, name, params in self._early:
                    self._accept(seq, name, params, replayed=False)
                self._early.clear()
        return report

    def report_stats(self, stats: list[dict[str, Any]], elapsed_ms: float) -> dict[str, Any]:
        statuses = Counter(vm.get("status", "?") for vm in stats)
        report = {"kind": "stats", "host": self.host_id, "vms": len(stats), "statuses": dict(statuses),
                  "ms": round(elapsed_ms, 2)}
        self.out(report)
        return report

    def on_event(self, headers: dict[str, str], notification: dict[str, Any]) -> None:
        """On the broker's receiver thread (never blocked: it also carries the replies and receipts):
        print, and fill a gap before the event if there is one."""
        params = notification.get("params") or {}
        with self._events:
            if self._reported:
                self._accept(params.get("seq"), notification.get("method"), params, replayed=False)
            else:
                self._early.append((params.get("seq"), notification.get("method"), params))

    def _accept(self, seq: int | None, name: str | None, params: dict[str, Any], *, replayed: bool) -> None:
        """Print an event unless it was printed already; called with `_events` held."""
        if self.last_seq is not None and seq is not None and seq <= self.last_seq:
            return  # delivered again (at least once), or already replayed
        if self.last_seq is not None and seq is not None and seq > self.last_seq + 1:
            threading.Thread(target=self.replay, args=(self.last_seq, seq), name="replay", daemon=True).start()
        self.last_seq = seq if seq is not None else self.last_seq
        record = {"kind": "event", "host": self.host_id, "seq": seq, "name": name, "params": params}
        self.out({**record, "replayed": True} if replayed else record)

    def replay(self, after: int, until: int) -> None:
        """Ask the host for the events between `after` and `until` (exclusive), in pages."""
        try:
            while after < until - 1:
                batch = self.broker.call(self.host_id, "Events.replay", {"after": after, "limit": 1000})
                for event in batch["events"]:
                    if event["seq"] < until:
                        self.out({"kind": "event", "host": self.host_id, "seq": event["seq"], "name": event["name"],
                                  "params": event["params"], "replayed": True})
                if batch["last"] <= after:
                    break
                after = batch["last"]
        except (CallError, ConnectionError, TimeoutError) as exc:
            self.out({"kind": "error", "host": self.host_id, "verb": "Events.replay", "error": str(exc)})

    def catch_up(self) -> None:
        """Once the broker is back: the events published after the last one seen, in pages."""
        with self._events:
            after = self.last_seq
        try:
            while after is not None:
                batch = self.broker.call(self.host_id, "Events.replay", {"after": after, "limit": 1000})
                with self._events:
                    for event in batch["events"]:
                        self._accept(event["seq"], event["name"], event["params"], replayed=True)
                if not batch["events"] or batch["last"] <= after:
                    break
                after = batch["last"]
        except (CallError, ConnectionError, TimeoutError) as exc:
            self.out({"kind": "error", "host": self.host_id, "verb": "Events.replay", "error": str(exc)})


def poll_cycle(monitors: list[HostMonitor]) -> float:
    """Poll Host.getAllVmStats on every host at once; returns the cycle's time in ms."""
    started = time.perf_counter()
    futures = {monitor: monitor.broker.call_async(monitor.host_id, "Host.getAllVmStats") for monitor in monitors}
    wait(futures.values(), timeout=monitors[0].broker.timeout if monitors else 0)
    for monitor, future in futures.items():
        try:
            monitor.report_stats(future.result(0), (time.perf_counter() - started) * 1000)
        except Exception as exc:  # one host failing does not stop the cycle
            monitor.out({"kind": "error", "host": monitor.host_id, "verb": "Host.getAllVmStats", "error": str(exc)})
    return (time.perf_counter() - started) * 1000


def printer(as_json: bool) -> Callable[[dict[str, Any]], None]:
    lock = threading.Lock()

    def out(record: dict[str, Any]) -> None:
        line = json.dumps(record) if as_json else _readable(record)
        with lock:
            print(line, flush=True)

    return out


def _readable(record: dict[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S")
    host = record.get("host", "")[:8]
    kind = record["kind"]
    if kind == "activated":
        return (f"{stamp} host {host} activated: {record['cpuModel']}, {record['cpuCores']} cores, "
                f"{record['memSize']} MiB, {record['vmCount']} VMs  ({', '.join(f'{k} {v} ms' for k, v in record['ms'].items())})")
    if kind == "stats":
        statuses = ", ".join(f"{count} {status}" for status, count in sorted(record["statuses"].items())) or "none"
        return f"{stamp} host {host} {record['vms']} VMs: {statuses}  ({record['ms']} ms)"
    if kind == "event":
        vm_status = {k: v.get("status") for k, v in (record.get("params") or {}).items() if isinstance(v, dict)}
        detail = " ".join(f"{k[:8]} {v}" for k, v in vm_status.items() if v) or ""
        return f"{stamp} host {host} event {record['seq']} {record['name']} {detail}{' (replayed)' if record.get('replayed') else ''}"
    if kind == "cycle":
        return f"{stamp} cycle over {record['hosts']} hosts in {record['ms']:.1f} ms"
    if kind == "broker":
        if record["event"] == "lost":
            return f"{stamp} lost the broker {record['broker']}; connecting again"
        return f"{stamp} the broker is back after {record['after']} s"
    return f"{stamp} {json.dumps(record)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker", default="127.0.0.1:61613", metavar="HOST:PORT")
    parser.add_argument("--login", default="guest")
    parser.add_argument("--passcode", default="guest")
    parser.add_argument("--vhost", default="/")
    parser.add_argument("--prefix", default="pier")
    parser.add_argument("--host", action="append", default=[], metavar="HOST_ID", help="a host id (repeatable)")
    parser.add_argument("--token", action="append", default=[], metavar="[HOST_ID=]TOKEN",
                        help="a bearer token for every host (default $PIER_TOKEN), or for one host (repeatable)")
    parser.add_argument("--discover", type=float, default=2.0, metavar="SECONDS",
                        help="how long to wait for hosts to answer discovery when no --host is given")
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between Host.getAllVmStats polls")
    parser.add_argument("--cycles", type=int, default=0, help="stop after this many polls (0: run until Ctrl-C)")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of text")
    args = parser.parse_args(argv)
    out = printer(args.json)
    host, _, port = args.broker.rpartition(":")
    token = os.environ.get("PIER_TOKEN", "")
    host_tokens = {}
    for given in args.token:
        host_id, _, value = given.rpartition("=")
        if host_id:
            host_tokens[host_id] = value
        else:
            token = value
    if not token and not host_tokens:
        print("engine_monitor: no token (--token or PIER_TOKEN): hosts will answer 'unauthenticated'",
              file=sys.stderr)
    try:
        broker = Broker(host, int(port), login=args.login, passcode=args.passcode, vhost=args.vhost,
                        prefix=args.prefix, token=token, host_tokens=host_tokens, out=out)
    except (stomp.exception.ConnectFailedException, OSError) as exc:
        print(f"engine_monitor: cannot reach the broker at {args.broker}: {exc}", file=sys.stderr)
        return 3
    try:
        hosts = args.host or broker.discover(args.discover)
        if not hosts:
            refused = f"; {len(broker.refusals)} refused: {broker.refusals[0]}" if broker.refusals else ""
            print(f"engine_monitor: no host answered on /topic/{args.prefix}.discovery{refused}", file=sys.stderr)
            return 1
        monitors = [HostMonitor(broker, host_id, out) for host_id in hosts]
        for monitor in monitors:
            monitor.activate()
        for cycle in itertools.count(1):
            out({"kind": "cycle", "hosts": len(monitors), "ms": round(poll_cycle(monitors), 2)})
            if args.cycles and cycle >= args.cycles:
                break
            time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    finally:
        broker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
