"""Microseconds a call spends in JsonRpc.handle, no wire: the JSON-RPC layer's own cost per call.

Runs the real registry over the unit tests' fake node (as tests/unit/conftest.py builds it) and
times, in one thread, `handle` of:
  Host.ping2                     the verb the latency benchmark calls
  Host.getVMList with params     a call whose params are validated and passed by name
  [Host.ping2]                   a one-element batch, as VDSM's client sends over STOMP
  VM.explode                     an unknown method (an error answer)
Prints the median and the 10th percentile of repeated runs, in microseconds per call.
Add --profile to print where the time of Host.ping2 goes (cProfile, by own time).

Run: PYTHONPATH=$PWD .venv/bin/python bench/jsonrpc_call.py [--calls N] [--repeat R] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pier.rpc.registry import CallContext  # noqa: E402
from pier.rpc.schema import Schema  # noqa: E402
from tests.unit.conftest import ADMIN, build_stack  # noqa: E402

MESSAGES = {
    "Host.ping2": {"jsonrpc": "2.0", "method": "Host.ping2", "id": 1},
    "Host.getVMList with params": {"jsonrpc": "2.0", "method": "Host.getVMList", "params": {"onlyUUID": True},
                                   "id": "a"},
    "[Host.ping2]": [{"jsonrpc": "2.0", "method": "Host.ping2", "params": {}, "id": "1"}],
    "VM.explode": {"jsonrpc": "2.0", "method": "VM.explode", "id": 2},
}


def per_call_us(handle, raw: str, context: CallContext, calls: int, repeat: int) -> list[float]:
    for _ in range(200):
        handle(raw, context)
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(calls):
            handle(raw, context)
        runs.append((time.perf_counter() - started) / calls * 1e6)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as state:
        stack = build_stack(Schema.load(), Path(state) / "state.db")
        context = CallContext("bench", identity=ADMIN)
        try:
            for name, message in MESSAGES.items():
                runs = sorted(per_call_us(stack.jsonrpc.handle, json.dumps(message), context, args.calls, args.repeat))
                print(f"{name:<28} median {statistics.median(runs):6.1f} us/call   p10 {runs[len(runs) // 10]:6.1f}")
            if args.profile:
                raw = json.dumps(MESSAGES["Host.ping2"])
                profiler = cProfile.Profile()
                profiler.runcall(per_call_us, stack.jsonrpc.handle, raw, context, args.calls, 1)
                pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        finally:
            stack.tasks.stop()
            stack.events.close()
            stack.credentials.close()
            stack.audit.close()


if __name__ == "__main__":
    main()
