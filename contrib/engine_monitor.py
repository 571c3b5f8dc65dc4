#!/usr/bin/env python3
"""An engine-like monitor of Pier hosts, through a STOMP broker only.

It is where an engine developer starts: it finds the hosts behind a broker (or is given their
ids), runs an engine's activation sequence on each (`Host.ping2`, `Host.getCapabilities`,
`Host.getHardwareInfo`, `Host.getStats`), then polls `Host.getAllVmStats` on every host each
`--interval` seconds, printing events as they come. Events carry a sequence number per host: a
gap (missed while this monitor or the broker was away) is filled with `Events.replay`.

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


class Broker(stomp.ConnectionListener):
    """One STOMP connection: calls to hosts (matched by correlation-id) and event subscriptions."""

    def __init__(self, host: str, port: int, *, login: str = "guest", passcode: str = "guest", vhost: str = "/",
                 prefix: str = "pier", timeout: float = 30.0, token: str = "",
                 host_tokens: dict[str, str] | None = None) -> None:
        self.prefix = prefix
        self.timeout = timeout
        self.token = token  # sent to any host without a token of its own in host_tokens, and to discovery
        self.host_tokens = dict(host_tokens or {})
        self.refusals: list[str] = []  # why hosts refused the last discovery request
        self.reply_to = f"/temp-queue/engine-{uuid.uuid4().hex[:12]}"
        self._pending: dict[str, Future] = {}
        self._broadcasts: dict[str, list[Any]] = {}
        self._handlers: dict[str, Callable[[dict[str, str], dict[str, Any]], None]] = {}
        self._receipts: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.connection = stomp.Connection12([(host, port)], vhost=vhost, heartbeats=(10000, 10000))
        self.connection.set_listener("engine", self)
        self.connection.connect(login, passcode, wait=True, with_connect_command=True)

    def on_connecting(self, host_and_port: tuple[str, int]) -> None:
        self.connection.transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_message(self, frame: Any) -> None:
        correlation = frame.headers.get("correlation-id", "")
        body = json.loads(frame.body)
        with self._lock:
            future = self._pending.pop(correlation, None)
            broadcast = self._broadcasts.get(correlation)
            handler = self._handlers.get(frame.headers.get("subscription", ""))
        if future is not None:
            future.set_result(body)
        elif broadcast is not None:
            broadcast.append(body)
        elif handler is not None:
            handler(frame.headers, body)

    def on_receipt(self, frame: Any) -> None:
        with self._lock:
            future = self._receipts.pop(frame.headers.get("receipt-id", ""), None)
        if future is not None:
            future.set_result(None)

    def on_disconnected(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_exception(ConnectionError("lost the broker"))

    def _send(self, destination: str, verb: str, params: dict[str, Any], correlation: str, token: str) -> None:
        message = {"jsonrpc": "2.0", "method": verb, "params": params, "id": f"{correlation}-{next(self._ids)}"}
        headers = {"reply-to": self.reply_to, "correlation-id": correlation,
                   "expires": str(int((time.time() + self.timeout) * 1000))}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self.connection.send(destination, json.dumps(message), content_type="application/json", headers=headers)

    def call_async(self, host_id: str, verb: str, params: dict[str, Any] | None = None) -> Future:
        """Send `verb` to one host; the future holds its result (or raises CallError)."""
        correlation = uuid.uuid4().hex
        raw: Future = Future()
        result: Future = Future()
        raw.add_done_callback(lambda done: _settle(done, result))
        with self._lock:
            self._pending[correlation] = raw
        self._send(f"/queue/{self.prefix}.{host_id}.requests", verb, params or {}, correlation,
                   self.host_tokens.get(host_id, self.token))
        return result

    def call(self, host_id: str, verb: str, params: dict[str, Any] | None = None) -> Any:
        return self.call_async(host_id, verb, params).result(self.timeout)

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
        (returns once the broker has confirmed the subscription)."""
        subscription = f"events-{host_id}"
        receipt: Future = Future()
        with self._lock:
            self._handlers[subscription] = handler
            self._receipts[subscription] = receipt
        self.connection.subscribe(f"/topic/{self.prefix}.{host_id}.events.#", subscription, ack="auto",
                                  headers={"receipt": subscription})
        receipt.result(self.timeout)

    def close(self) -> None:
        self.connection.disconnect()


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
    """What the engine knows of one host: its facts, its VMs, and the last event seen."""

    def __init__(self, broker: Broker, host_id: str, out: Callable[[dict[str, Any]], None]) -> None:
        self.broker = broker
        self.host_id = host_id
        self.out = out
        self.last_seq: int | None = None
        self._events = threading.Lock()

    def activate(self) -> dict[str, Any]:
        timings, results = {}, {}
        for verb in ACTIVATION:
            started = time.perf_counter()
            results[verb] = self.broker.call(self.host_id, verb)
            timings[verb] = round((time.perf_counter() - started) * 1000, 2)
        caps = results["Host.getCapabilities"]
        self.broker.follow_events(self.host_id, self.on_event)
        report = {"kind": "activated", "host": self.host_id, "cpuModel": caps.get("cpuModel"),
                  "cpuCores": caps.get("cpuCores"), "memSize": caps.get("memSize"),
                  "vmCount": results["Host.getStats"].get("vmCount"), "ms": timings}
        self.out(report)
        return report

    def report_stats(self, stats: list[dict[str, Any]], elapsed_ms: float) -> dict[str, Any]:
        statuses = Counter(vm.get("status", "?") for vm in stats)
        report = {"kind": "stats", "host": self.host_id, "vms": len(stats), "statuses": dict(statuses),
                  "ms": round(elapsed_ms, 2)}
        self.out(report)
        return report

    def on_event(self, headers: dict[str, str], notification: dict[str, Any]) -> None:
        """On the broker's receiver thread: print, and fill a gap before the event if there is one."""
        seq = notification.get("params", {}).get("seq")
        with self._events:
            if self.last_seq is not None and seq is not None and seq <= self.last_seq:
                return  # delivered again (at least once)
            if self.last_seq is not None and seq is not None and seq > self.last_seq + 1:
                threading.Thread(target=self.replay, args=(self.last_seq, seq), daemon=True).start()
            self.last_seq = seq if seq is not None else self.last_seq
        self.out({"kind": "event", "host": self.host_id, "seq": seq, "name": notification.get("method"),
                  "params": notification.get("params")})

    def replay(self, after: int, until: int) -> None:
        """Ask the host for the events between `after` and `until` (exclusive), in pages."""
        while after < until - 1:
            batch = self.broker.call(self.host_id, "Events.replay", {"after": after, "limit": 1000})
            for event in batch["events"]:
                if event["seq"] < until:
                    self.out({"kind": "event", "host": self.host_id, "seq": event["seq"], "name": event["name"],
                              "params": event["params"], "replayed": True})
            if batch["last"] <= after:
                break
            after = batch["last"]


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
                        prefix=args.prefix, token=token, host_tokens=host_tokens)
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
