"""The HTTP server's queue: callers take turns, and none holds more than its share of the workers."""

from __future__ import annotations

import socket

from pier.transports.fairqueue import FairQueue
from pier.transports.httpexchange import Connection


def request_of(key: str) -> Connection:
    connection = Connection(socket.socket(), ("127.0.0.1", 1), tls=False)
    connection.key = key
    return connection


def test_callers_take_turns_whatever_their_backlog() -> None:
    queue = FairQueue(share=8)
    flood = [request_of("flood") for _ in range(100)]
    for request in flood:
        queue.put(request)
    honest = request_of("honest")
    queue.put(honest)
    served = [queue.get(0) for _ in range(3)]
    assert honest in served[:2]  # one turn of the flood at most before it
    for request in (*flood, honest):
        request.sock.close()


def test_a_caller_never_holds_more_than_its_share() -> None:
    queue = FairQueue(share=2)
    mine = [request_of("a") for _ in range(5)]
    for request in mine:
        queue.put(request)
    assert queue.get(0) is mine[0] and queue.get(0) is mine[1]
    assert queue.get(0.05) is None  # two are being served: the third waits, though workers are free
    queue.put(other := request_of("b"))
    assert queue.get(0) is other
    queue.done("a")
    assert queue.get(0) is mine[2]
    assert queue.oldest_wait() >= 0.05
    assert queue.close() == mine[3:]
    assert queue.get(1) is None  # closed: workers go
    for request in (*mine, other):
        request.sock.close()
