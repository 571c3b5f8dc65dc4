"""Host.ping2 through the broker, beside a bare stomp.py request/reply through the same broker.

The floor is a process that consumes a queue with stomp.py and answers each message to its
reply-to at once (same broker, same client library, same acknowledgement mode as pierd: ACK after
the reply). Both are called by the same client (contrib/engine_monitor.py's Broker), alternately.
Target: ratio <= 1.3 at p50.

Run: .venv/bin/python bench/stomp_latency.py [--broker HOST:PORT] [--count N]
"""

from __future__ import annotations

import argparse
import sys
import uuid

from common import ROOT, PierdProcess, delete_queues, interleaved, report, spawn_floor

sys.path.insert(0, str(ROOT / "contrib"))
from engine_monitor import Broker  # noqa: E402

FLOOR = """
import socket, stomp, sys, threading
host, port, queue = sys.argv[1], int(sys.argv[2]), sys.argv[3]
class Echo(stomp.ConnectionListener):
    def on_connecting(self, host_and_port):
        connection.transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    def on_message(self, frame):
        connection.send(frame.headers["reply-to"], '{"jsonrpc":"2.0","result":true,"id":1}',
                        content_type="application/json",
                        headers={"correlation-id": frame.headers.get("correlation-id", "")})
        connection.ack(frame.headers["ack"])
connection = stomp.Connection12([(host, port)], vhost="/", heartbeats=(10000, 10000))
connection.set_listener("echo", Echo())
connection.connect("guest", "guest", wait=True)
connection.subscribe(queue, "floor", ack="client-individual", headers={"prefetch-count": "16"})
print(0, flush=True)
threading.Event().wait()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker", default="127.0.0.1:61613")
    parser.add_argument("--count", type=int, default=3000)
    args = parser.parse_args()
    host, _, port = args.broker.rpartition(":")
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    floor_queue = f"/queue/{prefix}.floor.requests"
    pierd = PierdProcess(None, None, "--stomp-broker", args.broker, "--stomp-prefix", prefix)
    floor, _ = spawn_floor(FLOOR, host, port, floor_queue)
    broker = Broker(host, int(port), prefix=prefix, token=pierd.token)
    try:
        hosts = broker.discover(2.0)
        assert len(hosts) == 1, hosts
        host_id = hosts[0]
        subject, floor_samples = interleaved(lambda: broker.call(host_id, "Host.ping2"),
                                             lambda: broker.call("floor", "Host.ping2"), args.count)
        report("Host.ping2 through RabbitMQ (STOMP)", subject, floor_samples, "ratio <= 1.3 at p50")
    finally:
        broker.close()
        pierd.stop()
        floor.terminate()
        delete_queues(prefix)


if __name__ == "__main__":
    main()
