"""The event log: sequence numbers, filters, waiting, retention and the expired cursor."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pier.rpc.errors import EventsExpired
from pier.rpc.events import EventLog, normalize_types


@pytest.fixture
def log(tmp_path: Path):
    events = EventLog(str(tmp_path / "events.db"))
    yield events
    events.close()


def test_sequence_numbers_are_monotonic_and_survive_a_restart(tmp_path: Path) -> None:
    first = EventLog(str(tmp_path / "e.db"))
    seqs = [first.publish("|virt|VM_status|a", {"a": {"status": "Up"}}).seq for _ in range(3)]
    first.close()
    second = EventLog(str(tmp_path / "e.db"))
    later = second.publish("|virt|VM_status|a", {})
    events, reached = second.read(0)
    second.close()
    assert seqs == [1, 2, 3] and later.seq == 4
    assert [e.seq for e in events] == [1, 2, 3, 4] and reached == 4
    assert events[0].params["a"] == {"status": "Up"}
    assert events[0].params["notify_time"] > 2**31 - 1


def test_read_after_a_cursor_with_type_filters(log: EventLog) -> None:
    log.publish("|virt|VM_status|a", {})
    log.publish("|jobs|status|t", {})
    log.publish("|virt|VM_status|b", {})
    events, reached = log.read(1, normalize_types(["virt.VM_status"]))
    assert [e.name for e in events] == ["|virt|VM_status|b"] and reached == 3
    assert log.read(3) == ([], 3)


def test_latest_of_each_name(log: EventLog) -> None:
    log.publish("|virt|VM_status|a", {"a": {"status": "Up"}})
    log.publish("|virt|VM_status|b", {"b": {"status": "Up"}})
    log.publish("|virt|VM_status|a", {"a": {"status": "Powering down"}})
    log.publish("|jobs|status|t", {})
    latest = log.latest("|virt|VM_status|")
    assert {name: params[name.rsplit("|", 1)[1]] for name, params in latest.items()} == {
        "|virt|VM_status|a": {"status": "Powering down"}, "|virt|VM_status|b": {"status": "Up"}}
    assert log.latest("|nothing|") == {}


def test_wait_returns_when_an_event_arrives(log: EventLog) -> None:
    threading.Timer(0.2, log.publish, args=("|virt|VM_status|a", {})).start()
    started = time.monotonic()
    events, _ = log.wait(0, timeout=5)
    assert [e.seq for e in events] == [1]
    assert time.monotonic() - started < 4


def test_wait_times_out_empty(log: EventLog) -> None:
    assert log.wait(0, timeout=0.1) == ([], 0)


def test_retention_drops_old_events_and_expired_cursors_learn_the_oldest(tmp_path: Path) -> None:
    log = EventLog(str(tmp_path / "e.db"), max_events=5)
    for _ in range(12):
        log.publish("|virt|VM_status|a", {})
    log.prune()
    assert log.oldest_seq == 8
    with pytest.raises(EventsExpired) as caught:
        log.read(3)
    assert caught.value.data["oldest"] == 8
    assert caught.value.http_status == 410
    events, _ = log.read(7)
    assert [e.seq for e in events] == [8, 9, 10, 11, 12]
    log.close()


def test_time_based_retention(tmp_path: Path) -> None:
    log = EventLog(str(tmp_path / "e.db"), retention=0.2)
    log.publish("|virt|VM_status|a", {})
    time.sleep(0.3)
    log.prune()
    with pytest.raises(EventsExpired):
        log.read(0)
    log.close()


def test_old_events_are_read_back_from_sqlite(tmp_path: Path) -> None:
    log = EventLog(str(tmp_path / "e.db"))
    for i in range(5000):
        log.publish("|virt|VM_status|a", {"i": i})
    events, reached = log.read(10, limit=3)
    assert [e.params["i"] for e in events] == [10, 11, 12] and reached == 13
    log.close()


def test_subscription_replays_then_follows(log: EventLog) -> None:
    log.publish("|virt|VM_status|a", {})
    log.publish("|virt|VM_status|b", {})
    sub = log.subscribe(after=1)
    threading.Timer(0.1, log.publish, args=("|virt|VM_status|c", {})).start()
    got = [sub.next(timeout=5), sub.next(timeout=5)]
    assert [e.seq for e in got] == [2, 3]
    assert sub.next(timeout=0.05) is None


def test_subscribing_to_an_expired_cursor_fails_at_once(tmp_path: Path) -> None:
    log = EventLog(str(tmp_path / "e.db"), max_events=2)
    for _ in range(5):
        log.publish("|virt|VM_status|a", {})
    log.prune()
    with pytest.raises(EventsExpired):
        log.subscribe(after=0)
    log.close()


def test_closing_a_subscription_wakes_its_reader(log: EventLog) -> None:
    sub = log.subscribe()
    threading.Timer(0.1, sub.close).start()
    started = time.monotonic()
    assert sub.next(timeout=10) is None
    assert time.monotonic() - started < 5


class PrunedWhileAsking(EventLog):
    """An event log whose retention drops events between a reader learning the oldest and reading."""

    def __init__(self, path: str) -> None:
        super().__init__(path, max_events=5)
        self.stale = 1

    @property
    def oldest_seq(self) -> int:
        if self.stale:
            self.stale -= 1
            return 1  # what it was before the prune that runs right after this
        return super().oldest_seq


@pytest.mark.parametrize("wait", [0, 0.1])
def test_a_poll_without_a_cursor_is_never_told_it_expired(tmp_path: Path, wait: float) -> None:
    from pier.api.events import EventsApi
    from pier.rpc.registry import CallContext

    log = PrunedWhileAsking(str(tmp_path / "e.db"))
    for _ in range(12):
        log.publish("|virt|VM_status|a", {})
    log.prune()
    batch = EventsApi(log).poll(CallContext("test"), wait=wait)
    assert [event["seq"] for event in batch["events"]] == [8, 9, 10, 11, 12] and batch["last"] == 12
    with pytest.raises(EventsExpired):  # a caller's own stale cursor still learns it expired
        EventsApi(log).poll(CallContext("test"), after=3)
    log.close()
