"""VDSM's convergence schedule (pier.host.convergence): what runs at the start, what each stalling
iteration makes due, and which schedules are refused before a migration starts."""

from __future__ import annotations

from typing import Any

import pytest

from pier.host.convergence import Action, ConvergenceSchedule, allows_postcopy, parse
from pier.rpc.errors import InvalidParams

VDSM_SCHEDULE = {"init": [{"name": "setDowntime", "params": ["100"]}],
                 "stalling": [{"limit": 1, "action": {"name": "setDowntime", "params": ["150"]}},
                              {"limit": -1, "action": {"name": "abort", "params": []}}]}


def iteration(n: int, remaining: int = 1000) -> dict[str, Any]:
    return {"memory_iteration": n, "data_remaining": remaining}


def test_vdsm_schedule_sets_the_downtime_at_start_then_raises_it_then_aborts() -> None:
    schedule = ConvergenceSchedule(VDSM_SCHEDULE)
    assert schedule.initial() == [Action("setDowntime", 100)]
    assert schedule.observe(iteration(5)) is None  # the first pass seen: where counting starts
    assert schedule.observe(iteration(5)) is None  # the same pass again: no news
    assert schedule.observe(iteration(6)) is None  # 1 stalling iteration: not above limit 1
    assert schedule.observe(iteration(7)) == Action("setDowntime", 150)  # 2 > 1
    assert schedule.observe(iteration(7)) is None
    assert schedule.observe(iteration(8)) == Action("abort")  # 3 > -1, the next entry
    assert schedule.observe(iteration(9)) is None  # nothing is left


def test_without_iterations_a_sample_not_below_the_lowest_remaining_is_a_stalling_one() -> None:
    schedule = ConvergenceSchedule({"stalling": [{"limit": 1, "action": {"name": "abort"}}]})
    assert schedule.observe({"data_remaining": 900}) is None
    assert schedule.observe({"data_remaining": 800}) is None  # converging
    assert schedule.observe({"data_remaining": 850}) is None  # stalling once
    assert schedule.observe({"data_remaining": 700}) is None  # converging again: not counted
    assert schedule.observe({"data_remaining": 800}) == Action("abort")  # stalling twice: 2 > 1


def test_after_a_switch_to_postcopy_nothing_more_runs_unless_the_switch_failed() -> None:
    schedule = ConvergenceSchedule({"stalling": [{"limit": -1, "action": {"name": "postcopy"}},
                                                 {"limit": -1, "action": {"name": "abort"}}]})
    schedule.observe(iteration(1))
    assert schedule.observe(iteration(2)) == Action("postcopy")
    assert schedule.observe(iteration(3)) is None
    schedule.postcopy_failed()
    assert schedule.observe(iteration(4)) == Action("abort")


def test_a_schedule_with_postcopy_allows_it_and_none_without() -> None:
    assert allows_postcopy({"stalling": [{"limit": 3, "action": {"name": "postcopy", "params": []}}]})
    assert not allows_postcopy(VDSM_SCHEDULE)
    assert not allows_postcopy(None)
    assert parse(None) == ([], [])


@pytest.mark.parametrize(("schedule", "field"), [
    ({"init": [{"name": "setBandwidth", "params": ["10"]}]}, "params.convergenceSchedule.init[0].name"),
    ({"stalling": [{"limit": 1, "action": {"name": "shrug"}}]}, "params.convergenceSchedule.stalling[0].action.name"),
    ({"stalling": [{"action": {"name": "abort"}}]}, "params.convergenceSchedule.stalling[0].limit"),
    ({"init": [{"name": "setDowntime", "params": []}]}, "params.convergenceSchedule.init[0].params"),
    ({"init": [{"name": "setDowntime", "params": ["soon"]}]}, "params.convergenceSchedule.init[0].params"),
    ({"init": {"name": "abort"}}, "params.convergenceSchedule.init"),
    ("postcopy", "params.convergenceSchedule"),
])
def test_a_bad_schedule_is_refused_naming_the_field(schedule: Any, field: str) -> None:
    with pytest.raises(InvalidParams) as refused:
        ConvergenceSchedule(schedule)
    assert refused.value.data["field"] == field
