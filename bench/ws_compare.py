"""Host.ping2 over WebSocket on two pier trees side by side, with the bare websockets echo floor.

Where rpc_latency.py measures one tree against its floor, this starts a pierd from each tree
given (a change and the main branch, say) and times the three servers in alternating rounds, so
that all three see the same (noisy) machine: the difference between the trees is then the cost
of the change, and each ratio is the one rpc_latency.py would print.

Run: .venv/bin/python bench/ws_compare.py TREE_A TREE_B [--count N] [--runs R]
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import common
from common import PierdProcess, percentile, spawn_floor, time_calls
from rpc_latency import WS_ECHO, ws_caller


def pierd_from(tree: str) -> PierdProcess:
    """A pierd running the code of `tree`: `python -m` puts its working directory first on the path."""
    saved_root, saved_path = common.ROOT, os.environ.get("PYTHONPATH")
    common.ROOT, os.environ["PYTHONPATH"] = Path(tree), tree
    try:
        return PierdProcess(None, None)
    finally:
        common.ROOT = saved_root
        if saved_path is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved_path


def cpu_seconds(pid: int) -> float:
    """User and system CPU time the process (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trees", nargs=2)
    parser.add_argument("--count", type=int, default=5000, help="calls to each server per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    pierds = [pierd_from(tree) for tree in args.trees]
    floor_process, floor_port = spawn_floor(WS_ECHO)
    try:
        for tree, pierd in zip(args.trees, pierds, strict=True):
            print(f"{tree}: ready after {pierd.ready_after:.2f} s, idle RSS {pierd.rss_mib():.1f} MiB")
        callers = [ws_caller(pierd.ws, pierd.token) for pierd in pierds]
        callers.append(ws_caller(f"ws://127.0.0.1:{floor_port}/", pierds[0].token))
        per_round = args.count // args.rounds
        for run in range(args.runs):
            samples: list[list[float]] = [[], [], []]
            cpu = [0.0, 0.0]
            for round_ in range(args.rounds):
                order = range(3) if round_ % 2 == 0 else reversed(range(3))
                for index in order:
                    if index < 2:
                        before = cpu_seconds(pierds[index].process.pid)
                    samples[index] += time_calls(callers[index], per_round, warmup=20)
                    if index < 2:
                        cpu[index] += cpu_seconds(pierds[index].process.pid) - before
            a, b, floor = (percentile(s, 0.5) * 1e6 for s in samples)
            cpu_a, cpu_b = (seconds / (args.rounds * (per_round + 20)) * 1e6 for seconds in cpu)
            print(f"run {run + 1}: p50 A {a:6.1f} us  B {b:6.1f} us  floor {floor:6.1f} us   "
                  f"ratio A {a / floor:4.2f}  B {b / floor:4.2f}   A-B {a - b:+5.1f} us   "
                  f"(means A {statistics.fmean(samples[0]) * 1e6:6.1f}  B {statistics.fmean(samples[1]) * 1e6:6.1f}; "
                  f"server CPU a call A {cpu_a:5.1f}  B {cpu_b:5.1f} us)")
    finally:
        for pierd in pierds:
            pierd.stop()
        floor_process.terminate()


if __name__ == "__main__":
    main()
