"""A good client's latency on the HTTPS listener while it is attacked, beside its latency with no attack.

pierd runs with TLS, as it does in production. One good client calls REST `Host.ping2`
(`GET /api/v1/host/ping`) every 5 ms over a keep-alive connection, and another over a new TLS
connection for each call, while one attack at a time holds the listener:

  silent     200 TCP connections that never send a byte (not even a TLS ClientHello)
  dribble    200 TLS connections sending a request head one byte a second, reconnecting when dropped
  idle       1000 TLS connections that made one request and then stay open, saying nothing

Each line gives the good clients' p50, p99 and worst call, and how many calls failed, beside the
same figures with no attack and the ratio. Then 50 keep-alive clients call as fast as they can (in
two processes of their own): p99 and fairness (the slowest client's calls against the mean).
Targets (issue 9): p99 under 100 ms and no failure under each attack; with 50 clients p99 under
50 ms and the slowest client making at least half the mean number of calls.

Run: .venv/bin/python bench/attack.py [--seconds 10] [--only silent,dribble,idle,clients]
"""

from __future__ import annotations

import argparse
import time

from common import PierdProcess

from tests.integration.attacks import Dribble, GoodClient, Idle, Silent, Target, many_clients, measure, percentile


def line(name: str, client: GoodClient, base: GoodClient | None) -> str:
    if not client.samples:
        return f"{name:<34} no call succeeded; {len(client.failures)} failed ({client.failures[:1]})"
    p50, p99 = percentile(client.samples, 0.5) * 1e3, percentile(client.samples, 0.99) * 1e3
    worst = max(client.samples) * 1e3
    text = (f"{name:<34} p50 {p50:8.2f} ms  p99 {p99:8.2f} ms  worst {worst:8.1f} ms  "
            f"calls {len(client.samples):5d}  failed {len(client.failures)}")
    if base is not None and base.samples:
        b50, b99 = percentile(base.samples, 0.5) * 1e3, percentile(base.samples, 0.99) * 1e3
        text += f"   | no attack p50 {b50:6.2f} p99 {b99:6.2f}  ratio p99 {p99 / b99:6.1f}"
    if client.failures:
        text += f"   first failure: {client.failures[0][:100]}"
    return text


# -- attacks ------------------------------------------------------------------------------------



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--only", default="silent,dribble,idle,clients")
    args = parser.parse_args()
    chosen = args.only.split(",")
    pierd = PierdProcess(None, None, "--rate-limit", "0", tls=True)
    host, port = pierd.http.removeprefix("https://").rsplit(":", 1)
    target = Target(host, int(port), pierd.ca, pierd.token)
    try:
        base = measure(target, args.seconds)
        for name, client in base.items():
            print(line(f"no attack, {name}", client, None), flush=True)
        attacks = {"silent": lambda: Silent(target, 200), "dribble": lambda: Dribble(target, 200),
                   "idle": lambda: Idle(target, 1000)}
        for kind, make in attacks.items():
            if kind not in chosen:
                continue
            with make() as attack:
                time.sleep(1)
                during = measure(target, args.seconds)
                note = f" (open {attack.opened}, refused {attack.refused}, reopened {attack.reopened})"
            for name, client in during.items():
                print(line(f"{kind} x{attack.count}, {name}", client, base[name]) + note, flush=True)
        if "clients" in chosen:
            crowd = many_clients(target, 50, args.seconds)
            print(crowd.describe() + " (targets: p99 < 50 ms, slowest/mean >= 0.5)", flush=True)
        print(f"pierd RSS after the attacks: {pierd.rss_mib():.1f} MiB")
    finally:
        pierd.stop()


if __name__ == "__main__":
    main()
