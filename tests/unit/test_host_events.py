"""The event dispatcher: libvirt lifecycle events become VDSM VM_status events, reboots are not
reported Down, and a resync after a reconnect reports what changed meanwhile."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import typing
from collections.abc import Iterator
from typing import Any

import libvirt
import pytest

from pier.host import news
from pier.host.events import EventDispatcher
from pier.host.news import Connected, Disconnected, Lifecycle, Reboot, StatusNews
from pier.host.vmstate import DOWN, PAUSED, UP, VmCache, VmRecord

A, B, C, D = (f"{n}0000000-0000-4000-8000-000000000000" for n in "abcd")
E = libvirt


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.threads: set[str] = set()

    def __call__(self, name: str, params: dict[str, Any]) -> None:
        self.threads.add(threading.current_thread().name)
        self.events.append((name, params))

    def statuses(self, vm_id: str) -> list[str]:
        return [p[vm_id]["status"] for n, p in self.events if n == f"|virt|VM_status|{vm_id}"]

    def last(self, vm_id: str) -> dict[str, Any]:
        return [p[vm_id] for n, p in self.events if n.endswith(vm_id)][-1]


@pytest.fixture
def published() -> dict[str, str]:
    """What the event log says each VM's last published status was."""
    return {}


@pytest.fixture
def setup(published: dict[str, str]) -> Iterator[tuple[EventDispatcher, VmCache, Recorder, dict]]:
    cache = VmCache()
    rec = Recorder()
    states: dict[str, tuple[str, int, int]] = {}
    disp = EventDispatcher(cache, rec, lambda: dict(states), lambda: None,
                           lambda: dict(published), reboot_grace=0.1)
    disp.start()
    yield disp, cache, rec, states
    disp.stop()


def life(vm_id: str, event: int, detail: int = 0, **when: float) -> Lifecycle:
    return Lifecycle(vm_id, "vm-" + vm_id[0], event, detail, **when)


def test_create_pause_cont_destroy_in_order_and_nothing_after_down(setup) -> None:
    disp, cache, rec, _ = setup
    record = cache.add(VmRecord(A, "vm-a", status="WaitForLaunch", announce_launch=True))
    for item in (life(A, E.VIR_DOMAIN_EVENT_DEFINED), life(A, E.VIR_DOMAIN_EVENT_STARTED),
                 life(A, E.VIR_DOMAIN_EVENT_SUSPENDED), life(A, E.VIR_DOMAIN_EVENT_RESUMED)):
        disp.put(item)
    assert disp.flush()
    record.destroying = True
    disp.put(life(A, E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_DESTROYED))
    disp.put(life(A, E.VIR_DOMAIN_EVENT_UNDEFINED))
    assert disp.flush()
    assert rec.statuses(A) == ["WaitForLaunch", UP, PAUSED, UP, DOWN]
    down = rec.last(A)
    assert (down["exitCode"], down["exitReason"]) == (0, 6)
    assert rec.threads == {"libvirt-events"}
    assert cache.find(A) is None
    assert all(p["notify_time"] > 2**31 - 1 for _, p in rec.events)


def test_stop_then_start_at_once_is_a_reboot_not_down(setup) -> None:
    disp, cache, rec, _ = setup
    cache.add(VmRecord(A, "vm-a", status=UP, emitted=UP))
    disp.put(life(A, E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN))
    disp.put(life(A, E.VIR_DOMAIN_EVENT_STARTED, E.VIR_DOMAIN_EVENT_STARTED_BOOTED))
    time.sleep(0.25)
    assert disp.flush()
    assert rec.statuses(A) == ["RebootInProgress", UP]


def test_a_guest_shutdown_is_reported_down_after_the_grace(setup) -> None:
    disp, cache, rec, _ = setup
    cache.add(VmRecord(A, "vm-a", status=UP, emitted=UP))
    disp.put(life(A, E.VIR_DOMAIN_EVENT_SHUTDOWN, E.VIR_DOMAIN_EVENT_SHUTDOWN_GUEST))
    disp.put(life(A, E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN))
    deadline = time.monotonic() + 2
    while DOWN not in rec.statuses(A) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rec.statuses(A) == ["Powering down", DOWN]
    assert rec.last(A)["exitReason"] == 7
    assert cache.get(A).status == DOWN


def test_reboot_event_reports_reboot_in_progress_then_up(setup) -> None:
    disp, cache, rec, _ = setup
    cache.add(VmRecord(A, "vm-a", status=UP, emitted=UP))
    disp.put(Reboot(A, "vm-a"))
    time.sleep(0.25)
    assert disp.flush()
    assert rec.statuses(A) == ["RebootInProgress", UP]


def test_a_verb_announcement_overtaken_by_libvirt_is_dropped(setup) -> None:
    disp, cache, rec, _ = setup
    cache.add(VmRecord(A, "vm-a", status=UP, emitted=UP))
    disp.put(life(A, E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN))
    disp.put(StatusNews(A, "Powering down"))
    assert disp.flush()
    assert rec.statuses(A) == [DOWN]


def test_first_load_is_silent_and_a_resync_reports_changes(setup) -> None:
    disp, cache, rec, states = setup
    running = (E.VIR_DOMAIN_RUNNING, E.VIR_DOMAIN_RUNNING_BOOTED)
    states.update({A: ("vm-a", *running), B: ("vm-b", E.VIR_DOMAIN_PAUSED, 1),
                   C: ("vm-c", *running)})
    disp.put(Connected(True))
    assert disp.flush()
    assert rec.events == []
    assert [cache.get(v).status for v in (A, B, C)] == [UP, PAUSED, UP]

    states.clear()
    states.update({A: ("vm-a", E.VIR_DOMAIN_SHUTOFF, E.VIR_DOMAIN_SHUTOFF_SHUTDOWN),
                   B: ("vm-b", *running), D: ("vm-d", *running)})
    disp.put(Disconnected(0))
    disp.put(Connected(False))
    assert disp.flush()
    assert rec.statuses(A) == [DOWN] and rec.last(A)["exitReason"] == 7
    assert rec.statuses(B) == [UP]
    assert rec.statuses(C) == [DOWN] and rec.last(C)["exitReason"] == 9
    assert rec.statuses(D) == [UP]
    assert cache.get(C) is None and cache.get(D).status == UP

    disp.put(Connected(False))
    assert disp.flush()
    assert len(rec.events) == 4, "an unchanged resync reports nothing"


def test_first_load_corrects_what_was_last_published(setup, published: dict[str, str]) -> None:
    """At start, the last VM_status each VM had in the event log stands in for the cache."""
    disp, cache, rec, states = setup
    published.update({A: "Powering down", B: PAUSED, C: UP, D: DOWN})
    running = (E.VIR_DOMAIN_RUNNING, E.VIR_DOMAIN_RUNNING_BOOTED)
    states.update({A: ("vm-a", *running), B: ("vm-b", E.VIR_DOMAIN_PAUSED, 1),
                   "e0000000-0000-4000-8000-000000000000": ("vm-e", *running)})
    disp.put(Connected(True))
    assert disp.flush()
    assert rec.statuses(A) == [UP], "running, though last published as powering down"
    assert rec.statuses(B) == [], "paused, as published"
    assert rec.statuses(C) == [DOWN] and rec.last(C)["exitReason"] == 9, "published running, now gone"
    assert rec.statuses(D) == [], "published down, now gone: nothing new"
    assert len(rec.events) == 2, "a VM with no history is loaded quietly"
    assert cache.get(A).emitted == UP


def test_a_reconnect_corrects_a_powering_down_that_libvirt_does_not_confirm(setup) -> None:
    disp, cache, rec, states = setup
    states.update({A: ("vm-a", E.VIR_DOMAIN_RUNNING, E.VIR_DOMAIN_RUNNING_BOOTED)})
    disp.put(Connected(True))
    assert disp.flush()
    disp.put(StatusNews(A, "Powering down"))
    assert disp.flush()
    assert rec.statuses(A) == ["Powering down"]
    disp.put(Disconnected(0))
    disp.put(Connected(False))
    assert disp.flush()
    assert rec.statuses(A) == ["Powering down", UP]
    assert cache.get(A).status == UP


def test_wait_status_wakes_on_a_change(setup) -> None:
    disp, cache, _, _ = setup
    cache.add(VmRecord(A, "vm-a", status=UP, emitted=UP))
    threading.Timer(0.05, disp.put, [life(A, E.VIR_DOMAIN_EVENT_SUSPENDED)]).start()
    assert cache.wait_status(A, {PAUSED}, 2.0) == PAUSED
    assert cache.wait_status(A, {DOWN}, 0.05) is None
    cancelled = threading.Event()
    cancelled.set()
    assert cache.wait_status(A, {DOWN}, 5.0, cancelled) is None


def test_an_event_older_than_a_verbs_change_is_emitted_but_does_not_undo_it(setup) -> None:
    disp, cache, rec, _ = setup
    record = cache.add(VmRecord(A, "vm-a", status=UP, emitted=UP))
    paused_at = time.monotonic()
    cache.set_status(record, UP)  # cont ran after the pause; its events are still queued
    disp.put(life(A, E.VIR_DOMAIN_EVENT_SUSPENDED, when=paused_at))
    assert disp.flush()
    assert rec.statuses(A) == [PAUSED]
    assert cache.get(A).status == UP


def test_a_start_delivered_after_a_pause_is_emitted_but_keeps_the_vm_paused(setup) -> None:
    """libvirt delivers a new VM's start event late (under load): the pause a verb recorded since
    stays; the history still says Up, then Paused once the pause's own event comes."""
    disp, cache, rec, _ = setup
    record = cache.add(VmRecord(A, "vm-a", status=UP, emitted=None))
    cache.set_status(record, PAUSED, {"pauseCode": "NOERR"})  # VM.pause, before the start was handled
    disp.put(life(A, E.VIR_DOMAIN_EVENT_STARTED))
    assert disp.flush()
    assert cache.get(A).status == PAUSED and rec.statuses(A) == [UP]
    disp.put(life(A, E.VIR_DOMAIN_EVENT_SUSPENDED))
    assert disp.flush()
    assert cache.get(A).status == PAUSED and rec.statuses(A) == [UP, PAUSED]


def test_an_orderly_stop_publishes_the_down_held_back_for_the_reboot_grace() -> None:
    cache, rec = VmCache(), Recorder()
    disp = EventDispatcher(cache, rec, dict, lambda: None, dict, reboot_grace=60.0)
    disp.start()
    cache.add(VmRecord(A, "vm-a", status=UP, emitted=UP))
    disp.put(life(A, E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN))
    disp.stop()
    assert rec.statuses(A) == [DOWN]
    assert rec.last(A)["exitReason"] == 7
    assert rec.threads == {"libvirt-events"}


def _concrete_news() -> list[type[news.News]]:
    found, pending = [], list(news.News.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls not in (news.VmNews, news.Stop):  # a base; the end of the queue
            found.append(cls)
    return found


def _example(cls: type[news.News]) -> news.News:
    samples = {str: A, int: 0, bool: True, float: 0.0, "int | str": 0,
               threading.Event: threading.Event()}
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: samples.get(hints[f.name], samples.get(f.type))  # type: ignore[call-overload]
                  for f in dataclasses.fields(cls) if f.init and f.name != "when"})


def test_every_kind_of_news_is_handled(setup, caplog: pytest.LogCaptureFixture) -> None:
    """A new kind of news without a handler would be dropped with an error in the log."""
    disp, cache, _, _ = setup
    cache.add(VmRecord(A, "vm-a", status=UP, emitted=UP))
    kinds = _concrete_news()
    assert {k.__name__ for k in kinds} >= {"Lifecycle", "Reboot", "DeviceRemoved", "StatusNews",
                                           "Connected", "Disconnected", "Barrier"}
    with caplog.at_level(logging.WARNING, logger="pier.host.events"):
        for kind in kinds:
            disp.put(_example(kind))
        assert disp.flush()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_guest_agent_up_and_down_are_events_and_reach_the_poller() -> None:
    cache = VmCache()
    rec = Recorder()
    told: list[tuple[str, bool]] = []
    disp = EventDispatcher(cache, rec, dict, lambda: None, dict, reboot_grace=0.1,
                           on_agent=lambda vm_id, up: told.append((vm_id, up)))
    disp.start()
    try:
        cache.add(VmRecord(A, "vm-a", status=UP, emitted=UP))
        started = E.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_REASON_DOMAIN_STARTED
        channel = E.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_REASON_CHANNEL
        for item in (news.AgentLifecycle(A, "vm-a", False, started),  # every start: no news
                     news.AgentLifecycle(A, "vm-a", True, channel),
                     news.AgentLifecycle(A, "vm-a", False, channel),
                     news.AgentLifecycle(B, "vm-b", True, channel)):  # a VM Pier does not know
            disp.put(item)
        assert disp.flush()
    finally:
        disp.stop()
    agent = [(n, p[A]) for n, p in rec.events if n.startswith("|virt|VM_guest_agent|")]
    assert agent == [(f"|virt|VM_guest_agent|{A}", {"guestAgent": "up", "reason": "channel"}),
                     (f"|virt|VM_guest_agent|{A}", {"guestAgent": "down", "reason": "channel"})]
    assert told == [(A, False), (A, True), (A, False)]
    assert rec.statuses(A) == []  # the VM's status did not change
