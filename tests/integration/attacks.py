"""Hostile and honest clients of the HTTPS listener, for the attack tests and bench/attack.py.

`Target` says where the listener is and how a good client calls REST `Host.ping2` on it;
`GoodClient` calls it at a steady pace on its own thread and keeps every call's latency and every
failure; `Silent`, `Dribble` and `Idle` hold hostile connections open until stopped; `many_clients`
runs keep-alive clients as fast as they go in processes of their own and reports their fairness.
"""

from __future__ import annotations

import http.client
import multiprocessing
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

PATH = "/api/v1/host/ping"
PACE = 0.005


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


class Target:
    """Where the listener is and how a good client talks to it."""

    def __init__(self, host: str, port: int, ca: str, token: str) -> None:
        self.host, self.port, self.ca, self.token = host, port, ca, token

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca)

    def connection(self, timeout: float = 10) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.context(), timeout=timeout)

    def call(self, connection: http.client.HTTPSConnection) -> None:
        connection.request("GET", PATH, headers={"Authorization": f"Bearer {self.token}"})
        response = connection.getresponse()
        body = response.read()
        if response.status != 200 or body != b"true":
            raise RuntimeError(f"HTTP {response.status}: {body[:80]!r}")


class GoodClient:
    """Calls every PACE seconds on its own thread; `keepalive=False` opens a connection per call."""

    def __init__(self, target: Target, keepalive: bool) -> None:
        self.target, self.keepalive = target, keepalive
        self.samples: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GoodClient:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def p99(self) -> float:
        return percentile(self.samples, 0.99) if self.samples else float("inf")

    def _run(self) -> None:
        connection = None
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                if connection is None or not self.keepalive:
                    connection = self.target.connection()
                self.target.call(connection)
                self.samples.append(time.perf_counter() - started)
            except Exception as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                connection = None
            if not self.keepalive and connection is not None:
                connection.close()
            self._stop.wait(PACE)


def measure(target: Target, seconds: float) -> dict[str, GoodClient]:
    clients = {"keep-alive": GoodClient(target, True), "new connection": GoodClient(target, False)}
    for client in clients.values():
        client.__enter__()
    time.sleep(seconds)
    for client in clients.values():
        client.__exit__()
    return clients


class Attack:
    """Holds `count` hostile connections open on its own threads until stopped."""

    def __init__(self, target: Target, count: int) -> None:
        self.target, self.count = target, count
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.opened = count
        self.reopened = self.refused = 0

    def __enter__(self) -> Attack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def start(self) -> None:
        raise NotImplementedError

    def spawn(self, run: Callable[[], None]) -> None:
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)


class Silent(Attack):
    """TCP connections that never send a byte; reopened when the server closes them."""

    def start(self) -> None:
        socks = []
        for _ in range(self.count):
            try:
                socks.append(socket.create_connection((self.target.host, self.target.port), timeout=2))
            except OSError:  # the listen backlog is full: the server is not accepting
                self.refused += 1
        self.opened = len(socks)
        self.spawn(lambda: self._keep(socks))

    def _keep(self, socks: list[socket.socket]) -> None:
        while not self.stop.is_set():
            readable, _, _ = select.select(socks, [], [], 0.2)
            for sock in readable:  # readable means closed (or an alert): open another
                socks.remove(sock)
                sock.close()
                try:
                    socks.append(socket.create_connection((self.target.host, self.target.port), timeout=2))
                    self.reopened += 1
                except OSError:
                    self.refused += 1
        for sock in socks:
            sock.close()


class Dribble(Attack):
    """TLS connections sending a request head one byte a second; a new one when the server drops one."""

    HEAD = f"GET {PATH} HTTP/1.1\r\nHost: x\r\nX-Padding: {'a' * 200}\r\n\r\n".encode()

    def start(self) -> None:
        for _ in range(self.count):
            self.spawn(self._run)

    def _run(self) -> None:
        context = self.target.context()
        while not self.stop.is_set():
            try:
                with context.wrap_socket(socket.create_connection((self.target.host, self.target.port), timeout=10),
                                         server_hostname=self.target.host) as sock:
                    for byte in self.HEAD:
                        if self.stop.wait(1.0):
                            return
                        sock.sendall(bytes([byte]))
            except OSError:
                self.reopened += 1
                self.stop.wait(0.1)


class Idle(Attack):
    """TLS connections that made one request and then say nothing."""

    def start(self) -> None:
        made: list[http.client.HTTPSConnection] = []
        lock = threading.Lock()

        def open_some(n: int) -> None:
            for _ in range(n):
                connection = self.target.connection()
                try:
                    self.target.call(connection)
                except Exception:
                    self.refused += 1
                    continue
                with lock:
                    made.append(connection)

        openers = [threading.Thread(target=open_some, args=(self.count // 20,)) for _ in range(20)]
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join()
        self.opened = len(made)
        self._made = made
        self.spawn(self._hold)

    def _hold(self) -> None:
        self.stop.wait()
        for connection in self._made:
            connection.close()


# -- many clients -------------------------------------------------------------------------------


def _client_process(target: Target, clients: int, seconds: float, out: multiprocessing.Queue) -> None:
    results: list[tuple[int, list[float], int]] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def run() -> None:
        connection = target.connection()
        samples: list[float] = []
        failures = 0
        start.wait()
        ends = time.perf_counter() + seconds
        while time.perf_counter() < ends:
            began = time.perf_counter()
            try:
                target.call(connection)
                samples.append(time.perf_counter() - began)
            except Exception:
                failures += 1
                connection = target.connection()
        with lock:
            results.append((len(samples), samples, failures))

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put(results)


@dataclass
class Crowd:
    """What `many_clients` saw: calls per client, every call's latency, and failures."""

    seconds: float
    counts: list[int]
    samples: list[float]
    failures: int

    @property
    def fairness(self) -> float:
        """The slowest client's calls against the mean."""
        return min(self.counts) / (sum(self.counts) / len(self.counts))

    def describe(self) -> str:
        total = sum(self.counts)
        p50, p99 = percentile(self.samples, 0.5) * 1e3, percentile(self.samples, 0.99) * 1e3
        return (f"{len(self.counts)} keep-alive clients, {self.seconds:g} s: {total} calls "
                f"({total / self.seconds:.0f}/s), p50 {p50:.2f} ms, p99 {p99:.2f} ms, worst "
                f"{max(self.samples) * 1e3:.1f} ms, failed {self.failures}; calls per client min {min(self.counts)} "
                f"mean {total / len(self.counts):.0f} max {max(self.counts)} (slowest/mean {self.fairness:.2f})")


def many_clients(target: Target, clients: int, seconds: float, processes: int = 2) -> Crowd:
    """`clients` keep-alive clients calling as fast as they can, in `processes` processes of their own."""
    context = multiprocessing.get_context("spawn")  # a fork would copy the caller's threads' state
    out = context.Queue()
    workers = [context.Process(target=_client_process, args=(target, clients // processes, seconds, out))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    results = [item for _ in workers for item in out.get()]
    for worker in workers:
        worker.join()
    return Crowd(seconds, [count for count, _, _ in results], [sample for _, some, _ in results for sample in some],
                 sum(failed for _, _, failed in results))
