"""Shared pieces of the benchmarks: start pierd and floor servers, time round trips, print figures.

Every figure is printed beside the floor it is measured against, with the ratio, in one run:
these machines are noisy, so only figures taken together compare.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pier.host.testdriver import make_test_uri  # noqa: E402


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def time_calls(call: Callable[[], object], count: int, warmup: int = 100) -> list[float]:
    """Seconds taken by each of `count` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def interleaved(subject: Callable[[], object], floor: Callable[[], object], count: int,
                rounds: int = 10) -> tuple[list[float], list[float]]:
    """Time `subject` and `floor` in alternating rounds, so that both see the same machine."""
    subject_samples: list[float] = []
    floor_samples: list[float] = []
    for _ in range(rounds):
        floor_samples += time_calls(floor, count // rounds, warmup=20)
        subject_samples += time_calls(subject, count // rounds, warmup=20)
    return subject_samples, floor_samples


def report(name: str, samples: list[float], floor: list[float] | None, target: str = "") -> None:
    p50, p99 = percentile(samples, 0.5) * 1e3, percentile(samples, 0.99) * 1e3
    line = f"{name:<38} p50 {p50:8.3f} ms  p99 {p99:8.3f} ms"
    if floor is not None:
        f50, f99 = percentile(floor, 0.5) * 1e3, percentile(floor, 0.99) * 1e3
        line += f"   floor p50 {f50:7.3f} ms  p99 {f99:7.3f} ms   ratio p50 {p50 / f50:5.2f}  p99 {p99 / f99:5.2f}"
    if target:
        line += f"   (target {target})"
    print(line, flush=True)


class PierdProcess:
    """A pierd on a test-driver file (or `uri`), on free ports; `stop()` ends it."""

    def __init__(self, uri: str | None = None, node_xml: str | None = None, *extra: str, tls: bool = False) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="pier-bench-"))
        if uri is None:
            node = self.workdir / "testnode.xml"
            if node_xml is not None:
                node.write_text(node_xml)
                uri = f"test://{node}"
            else:
                uri = make_test_uri(node)
        self.socket = str(self.workdir / "pier.sock")
        # Plain text on loopback, as the floors are, unless `tls`; then the CA is at `self.ca`.
        command = [sys.executable, "-m", "pier.daemon", "--libvirt-uri", uri, "--http", "127.0.0.1:0",
                   "--ws", "127.0.0.1:0", "--state-dir", str(self.workdir / "state"),
                   *([] if tls else ["--insecure-loopback"]), "--unix-socket", self.socket, *extra]
        self.ca = str(self.workdir / "state" / "tls" / "ca.pem")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.http = self.ws = self.vdsm_stomp = ""
        for line in self.process.stderr:
            if m := re.search(r"VDSM-compatible STOMP on (stomp://\S+)", line):
                self.vdsm_stomp = m.group(1)
            if m := re.search(r"REST facade on (https?://\S+)/api/v1", line):
                self.http = m.group(1)
            if m := re.search(r"WebSocket on (wss?://\S+)", line):
                self.ws = m.group(1)
            if re.search(r"pierd \S+ ready", line):
                break
        else:
            raise RuntimeError("pierd did not start")
        self.ready_after = time.perf_counter() - self.started
        threading.Thread(target=self._drain, daemon=True).start()
        self.token = self._admin_token()

    def _admin_token(self) -> str:
        """A token made over the local socket, where root is an admin."""
        connection = http.client.HTTPConnection("localhost")
        connection.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.sock.connect(self.socket)
        connection.request("POST", "/api/v1/tokens", body=json.dumps({"role": "admin", "name": "bench"}),
                           headers={"Content-Type": "application/json"})
        return json.loads(connection.getresponse().read())["token"]

    def _drain(self) -> None:
        for _ in self.process.stderr:
            pass

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def spawn_floor(code: str, *args: str) -> tuple[subprocess.Popen, int]:
    """Run a bare server (Python source printing its port on the first line) in its own process."""
    process = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    port = int(process.stdout.readline())
    return process, port


def median(values: list[float]) -> float:
    return statistics.median(values)


def broker_cpu_seconds() -> float:
    """CPU time (user + system) used so far by the local RabbitMQ (its beam.smp process)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            cmdline = (stat.parent / "cmdline").read_bytes()
            if b"beam" not in cmdline or b"rabbit" not in cmdline:
                continue
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def delete_queues(prefix: str) -> None:
    """Remove the durable request queues a benchmark's pierds left in the local RabbitMQ."""
    listed = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name"], capture_output=True, text=True)
    for name in listed.stdout.split():
        if name.startswith(prefix + "."):
            subprocess.run(["rabbitmqctl", "-q", "delete_queue", name], capture_output=True)
