"""Round-trip latency of Pier's transports, each beside a bare server of the same library.

  Host.ping2 over WebSocket         vs a bare websockets echo server (threaded, no compression)
  Host.ping2 over POST /jsonrpc     vs a bare bottle-on-cheroot POST handler (and that handler on
                                       pier's own HTTP server beside it: what the server costs)
  GET /api/v1/host                  vs a bare bottle-on-cheroot GET handler
  Host.ping2 over XML-RPC /RPC2     vs a bare bottle-on-cheroot handler doing the stdlib's XML-RPC
                                       (un)marshalling
  Host.ping2 over VDSM's STOMP      vs a bare threaded socket server that splits frames at NUL and
                                       answers each SEND with a canned MESSAGE
plus pierd's readiness time and idle RSS, the latter beside the RSS of a bare interpreter that only
imports the libraries pierd is built on (what pier itself adds is the difference). Targets: ratio
<= 1.5 at p50 for both JSON-RPC transports; all listeners ready within 1.5 s; idle RSS under 60 MB.

Run: .venv/bin/python bench/rpc_latency.py [--count N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import sys
import time
import uuid
import xmlrpc.client

from common import PierdProcess, interleaved, report, spawn_floor
from websockets.sync.client import connect

LIBRARIES_ONLY = """
import sqlite3, ssl, time
import bottle, cryptography.x509, defusedxml.ElementTree, fastjsonschema, h11, jsonrpcserver, libvirt
import prometheus_client, pyroute2, stomp, websockets.sync.server, yaml
print("ready", flush=True)
time.sleep(60)
"""


def libraries_rss_mib() -> float:
    """VmRSS of an idle interpreter that has imported pierd's dependencies and nothing of pier."""
    process = subprocess.Popen([sys.executable, "-c", LIBRARIES_ONLY], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        with open(f"/proc/{process.pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
    finally:
        process.kill()
        process.wait()


WS_ECHO = """
import threading
from websockets.sync.server import serve
def echo(ws):
    for message in ws:
        ws.send('{"jsonrpc":"2.0","result":true,"id":1}')
server = serve(echo, "127.0.0.1", 0, compression=None)
print(server.socket.getsockname()[1], flush=True)
server.serve_forever()
"""

BOTTLE_BARE = """
import json, xmlrpc.client, bottle, cheroot.wsgi
app = bottle.Bottle()
@app.post("/jsonrpc")
def rpc():
    bottle.request.body.read()
    bottle.response.content_type = "application/json"
    return '{"jsonrpc":"2.0","result":true,"id":1}'
@app.post("/RPC2")
def rpc2():
    xmlrpc.client.loads(bottle.request.body.read())
    bottle.response.content_type = "text/xml"
    return xmlrpc.client.dumps(({"status": {"code": 0, "message": "Done"}},), methodresponse=True)
@app.get("/api/v1/host")
def host():
    bottle.response.content_type = "application/json"
    return json.dumps({"uuid": "x", "cpuCores": "2"})
import sys, threading
if sys.argv[1:] == ["pier"]:  # the same app on pier's own HTTP server
    from pier.transports.httpserver import HttpServer
    server = HttpServer(("127.0.0.1", 0), app, workers=16)
    server.start()
    print(server.bound[1], flush=True)
    threading.Event().wait()
server = cheroot.wsgi.Server(("127.0.0.1", 0), app, numthreads=16)
server.prepare()
print(server.bind_addr[1], flush=True)
server.serve()
"""

STOMP_BARE = """
import socket, socketserver
REPLY = b'MESSAGE\\ndestination:r\\ncontent-type:application/json\\nsubscription:s\\ncontent-length:40\\n\\n[{"jsonrpc":"2.0","result":true,"id":"1"}]\\0'
class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        while chunk := self.request.recv(65536):
            buffer += chunk
            *frames, buffer = buffer.split(b"\\0")
            for frame in frames:
                frame = frame.lstrip(b"\\n")
                if frame.startswith(b"CONNECT"):
                    self.request.sendall(b"CONNECTED\\nversion:1.2\\nheart-beat:0,0\\n\\n\\0")
                elif frame.startswith(b"SEND"):
                    self.request.sendall(REPLY)
class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
server = Server(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""

PING = json.dumps({"jsonrpc": "2.0", "method": "Host.ping2", "id": 1})
XMLRPC_PING = xmlrpc.client.dumps((), "Host.ping2")


def ws_caller(url: str, token: str):
    connection = connect(url, compression=None,  # closed when the process ends
                         additional_headers={"Authorization": f"Bearer {token}"}).__enter__()

    def call() -> None:
        connection.send(PING)
        connection.recv()

    return call


def vdsm_stomp_caller(port: int, token: str):
    """A VDSM-like STOMP client: CONNECT, SUBSCRIBE a reply destination, then SEND one-element batches."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reply = str(uuid.uuid4())
    sock.sendall(f"CONNECT\naccept-version:1.2\nheart-beat:0,0\npasscode:{token}\n\n\0".encode()
                 + f"SUBSCRIBE\ndestination:{reply}\nack:auto\nid:{uuid.uuid4()}\n\n\0".encode())
    received = b""
    while b"\0" not in received:
        received += sock.recv(65536)
    body = b'[{"jsonrpc":"2.0","method":"Host.ping2","params":{},"id":"1"}]'
    frame = (f"SEND\ndestination:jms.topic.vdsm_requests\ncontent-type:application/json\nreply-to:{reply}\n"
             f"content-length:{len(body)}\n\n").encode() + body + b"\0"

    def call() -> None:
        sock.sendall(frame)
        data = b""
        while not data.endswith(b"\0"):
            data += sock.recv(65536)

    return call


def http_caller(port: int, token: str, method: str, path: str, body: str | None = None,
                content_type: str = "application/json", decode=None):
    connection = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Authorization": f"Bearer {token}", **({"Content-Type": content_type} if body else {})}

    def call() -> None:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        assert response.status == 200, response.status
        if decode is not None:
            decode(payload)

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=5000)
    args = parser.parse_args()

    pierd = PierdProcess(None, None, "--vdsm-stomp", "127.0.0.1:0")
    stomp_floor, stomp_port = spawn_floor(STOMP_BARE)
    ws_floor, ws_port = spawn_floor(WS_ECHO)
    http_floor, http_port = spawn_floor(BOTTLE_BARE)
    own_floor, own_port = spawn_floor(BOTTLE_BARE, "pier")
    try:
        pierd_port = int(pierd.http.rsplit(":", 1)[1])
        print(f"pierd listeners ready after {pierd.ready_after:.2f} s from spawn (target 1.5 s)")
        time.sleep(2)
        rss, libraries = pierd.rss_mib(), libraries_rss_mib()
        print(f"pierd idle RSS {rss:.1f} MiB (target < 60 MB); its libraries alone {libraries:.1f} MiB, "
              f"pier's own {rss - libraries:.1f} MiB")
        subject, floor = interleaved(ws_caller(pierd.ws, pierd.token),
                                     ws_caller(f"ws://127.0.0.1:{ws_port}/", pierd.token), args.count)
        report("Host.ping2 over WebSocket", subject, floor, "ratio <= 1.5 at p50")
        subject, floor = interleaved(http_caller(pierd_port, pierd.token, "POST", "/jsonrpc", PING),
                                     http_caller(http_port, pierd.token, "POST", "/jsonrpc", PING), args.count)
        report("Host.ping2 over POST /jsonrpc", subject, floor, "ratio <= 1.5 at p50")
        subject, floor = interleaved(http_caller(pierd_port, pierd.token, "GET", "/api/v1/host"),
                                     http_caller(http_port, pierd.token, "GET", "/api/v1/host"), args.count)
        report("GET /api/v1/host", subject, floor)
        subject, floor = interleaved(http_caller(own_port, pierd.token, "POST", "/jsonrpc", PING),
                                     http_caller(http_port, pierd.token, "POST", "/jsonrpc", PING), args.count)
        report("bare app: pier's server / cheroot", subject, floor)
        subject, floor = interleaved(
            http_caller(pierd_port, pierd.token, "POST", "/RPC2", XMLRPC_PING, "text/xml", xmlrpc.client.loads),
            http_caller(http_port, pierd.token, "POST", "/RPC2", XMLRPC_PING, "text/xml", xmlrpc.client.loads),
            args.count)
        report("Host.ping2 over XML-RPC /RPC2", subject, floor)
        subject, floor = interleaved(vdsm_stomp_caller(int(pierd.vdsm_stomp.rsplit(":", 1)[1]), pierd.token),
                                     vdsm_stomp_caller(stomp_port, pierd.token), args.count)
        report("Host.ping2 over VDSM's STOMP", subject, floor)
    finally:
        pierd.stop()
        ws_floor.terminate()
        http_floor.terminate()
        own_floor.terminate()
        stomp_floor.terminate()


if __name__ == "__main__":
    main()
