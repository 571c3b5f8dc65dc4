"""Owned threads: started, stopped and joined by their owner; a join that gives up says so."""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

import pytest

from pier.rpc.events import EventLog
from pier.rpc.session import PushSession, _Pump
from pier.rpc.threads import OwnedThread
from pier.transports.httpserver import HttpServer
from pier.transports.stomp_outbox import EventOutbox


def threads_named(name: str) -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == name]


class Waiter(OwnedThread):
    """Waits on a condition of its own until asked to stop: it needs `wake()`."""

    def __init__(self) -> None:
        super().__init__("test-waiter")
        self.changed = threading.Condition()
        self.started = threading.Event()

    def wake(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def run(self) -> None:
        with self.changed:
            self.started.set()
            while not self.stopping.is_set():
                self.changed.wait()


class Stubborn(OwnedThread):
    """Ignores the request to stop until the test lets it go."""

    def __init__(self) -> None:
        super().__init__("test-stubborn")
        self.release = threading.Event()

    def run(self) -> None:
        self.release.wait(30)


def test_stop_wakes_the_thread_and_joins_it() -> None:
    waiter = Waiter()
    waiter.start()
    assert waiter.started.wait(5)
    assert len(threads_named("test-waiter")) == 1 and waiter.alive
    assert waiter.stop() is True
    assert not waiter.alive and threads_named("test-waiter") == []


def test_a_join_that_gives_up_warns_naming_the_thread(caplog: pytest.LogCaptureFixture) -> None:
    stubborn = Stubborn()
    stubborn.start()
    try:
        with caplog.at_level(logging.WARNING, logger="pier.threads"):
            assert stubborn.stop(timeout=0.2) is False
        assert stubborn.alive
        assert [record.getMessage() for record in caplog.records] == [
            "thread test-stubborn did not end within 0.2 s of being asked to stop; going on without it"]
    finally:
        stubborn.release.set()
    assert stubborn.join() is True


def test_a_thread_may_stop_itself_and_runs_once() -> None:
    ended = threading.Event()

    class Quitter(OwnedThread):
        def run(self) -> None:
            self.request_stop()
            assert self.join() is True  # joining itself neither deadlocks nor warns
            ended.set()

    quitter = Quitter("test-quitter")
    quitter.start()
    assert ended.wait(5) and quitter.stop() is True
    with pytest.raises(RuntimeError, match="test-quitter was started already"):
        quitter.start()
    assert Quitter("test-never").stop() is True  # never started: nothing to wait for


def test_a_loop_with_its_own_wake_runs_as_an_owned_thread() -> None:
    """A target and a wake handed in: the shape the listeners use (a selector woken by a byte)."""
    reader, writer = socket.socketpair()
    served: list[bytes] = []

    def serve() -> None:
        served.append(reader.recv(1))

    loop = OwnedThread("test-loop", serve, wake=lambda: writer.send(b"x"))
    loop.start()
    assert threads_named("test-loop")
    assert loop.stop() is True and served == [b"x"] and threads_named("test-loop") == []
    reader.close()
    writer.close()


def test_a_listener_stops_its_threads(tmp_path: Path) -> None:
    """Every listener thread is an OwnedThread: after stop() none is left (the loop and its workers)."""
    server = HttpServer(("127.0.0.1", 0), lambda environ, start_response: [], workers=2, name="test-http")
    server.start()
    assert {thread.name for thread in threading.enumerate()} >= {"test-http-loop", "test-http-worker"}
    server.stop()
    assert [t.name for t in threading.enumerate() if t.name.startswith("test-http")] == []


def test_detaching_a_push_session_ends_its_thread(tmp_path: Path) -> None:
    events = EventLog(str(tmp_path / "e.db"))
    pushed: list[int] = []
    session = PushSession(lambda event: pushed.append(event.seq), "peer")
    try:
        session.attach(events.subscribe())
        events.publish("|test|one|")
        first = [thread for thread in threading.enumerate() if thread.name.startswith("events-push-")]
        assert len(first) == 1
        session.attach(events.subscribe())  # replaces the first subscription and its thread
        assert not first[0].is_alive()
        session.detach()
        assert not session.subscribed
        assert not [thread for thread in threading.enumerate() if thread.name.startswith("events-push-")]
    finally:
        session.close()
        events.close()


def test_a_push_that_never_returns_does_not_hang_detach(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_Pump, "join_timeout", 0.2)
    events = EventLog(str(tmp_path / "e.db"))
    entered, release = threading.Event(), threading.Event()

    def stuck(event: object) -> None:  # a client that stopped reading
        entered.set()
        release.wait(30)

    session = PushSession(stuck, "peer")
    try:
        session.attach(events.subscribe())
        events.publish("|test|one|")
        assert entered.wait(5)
        with caplog.at_level(logging.WARNING, logger="pier.threads"):
            session.detach()
        assert any("events-push-" in record.getMessage() for record in caplog.records)
    finally:
        release.set()
        events.close()


def test_the_stomp_outbox_thread_stops_without_a_broker(tmp_path: Path) -> None:
    events = EventLog(str(tmp_path / "e.db"))
    outbox = EventOutbox(events, str(tmp_path / "e.db"), None, "/topic/test")
    outbox.start()
    try:
        assert len(threads_named("stomp-outbox")) == 1
    finally:
        assert outbox.stop() is True
        events.close()
    assert threads_named("stomp-outbox") == []
