"""VDSM's convergence schedule of a live migration: what to do at its start and when it stalls.

A schedule is `{"init": [action, ...], "stalling": [{"limit": N, "action": action}, ...]}`, an
action `{"name": "setDowntime" | "abort" | "postcopy", "params": [...]}` (setDowntime's one param
is the longest pause in ms). The `init` actions run as the migration starts. Then, as VDSM's
migration monitor does, each new pass of QEMU over the guest's memory (libvirt's
`memory_iteration`) is one more stalling iteration: a pass that had to send again what the guest
dirtied meanwhile. When the count of them exceeds the `limit` of the first stalling entry left, its
action runs and the entry is dropped; `limit: -1` runs at the first stalling iteration. Where
libvirt reports no iterations, a sample whose remaining data is not below the lowest seen so far
counts as one. Once post-copy has begun, nothing more runs (post-copy either completes or fails).

`ConvergenceSchedule` only decides; the migration performs what it answers (pier.host.migration).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pier.rpc.errors import InvalidParams

SET_DOWNTIME = "setDowntime"
ABORT = "abort"
POSTCOPY = "postcopy"
ACTIONS = (SET_DOWNTIME, ABORT, POSTCOPY)
FIELD = "params.convergenceSchedule"


@dataclass(frozen=True)
class Action:
    """One step of the schedule: its name and, for setDowntime, the downtime in ms."""

    name: str
    downtime: int = 0


def _action(raw: Any, where: str) -> Action:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise InvalidParams(f"{where} must be an object with a name, one of {', '.join(ACTIONS)}",
                            data={"field": where})
    name, params = raw["name"], raw.get("params", [])
    if name not in ACTIONS:
        raise InvalidParams(f"{where}.name {name!r} is no convergence action; known are {', '.join(ACTIONS)}",
                            data={"field": f"{where}.name", "value": name})
    if not isinstance(params, list):
        raise InvalidParams(f"{where}.params must be a list", data={"field": f"{where}.params"})
    if name != SET_DOWNTIME:
        return Action(name)
    try:
        downtime = int(params[0])
    except (IndexError, TypeError, ValueError):
        raise InvalidParams(f"{where}.params must hold the downtime in ms, such as ['100']",
                            data={"field": f"{where}.params"}) from None
    if not 1 <= downtime <= 600000:
        raise InvalidParams(f"{where}.params: a downtime of {downtime} ms is not within 1..600000",
                            data={"field": f"{where}.params"})
    return Action(name, downtime)


def parse(schedule: Any) -> tuple[list[Action], list[tuple[int, Action]]]:
    """The schedule's init actions and its (limit, action) stalling entries; InvalidParams naming
    the field at fault for anything else."""
    if schedule is None:
        return [], []
    if not isinstance(schedule, dict):
        raise InvalidParams(f"{FIELD} must be an object with init and stalling", data={"field": FIELD})
    init_raw, stalling_raw = schedule.get("init", []), schedule.get("stalling", [])
    for key, value in (("init", init_raw), ("stalling", stalling_raw)):
        if not isinstance(value, list):
            raise InvalidParams(f"{FIELD}.{key} must be a list", data={"field": f"{FIELD}.{key}"})
    init = [_action(raw, f"{FIELD}.init[{i}]") for i, raw in enumerate(init_raw)]
    stalling: list[tuple[int, Action]] = []
    for i, entry in enumerate(stalling_raw):
        where = f"{FIELD}.stalling[{i}]"
        if not isinstance(entry, dict):
            raise InvalidParams(f"{where} must be an object with limit and action", data={"field": where})
        limit = entry.get("limit")
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise InvalidParams(f"{where}.limit must be an integer (-1: at once)", data={"field": f"{where}.limit"})
        stalling.append((limit, _action(entry.get("action"), f"{where}.action")))
    return init, stalling


def allows_postcopy(schedule: Any) -> bool:
    """Whether a valid schedule may switch to post-copy (then the migration must allow it)."""
    try:
        init, stalling = parse(schedule)
    except InvalidParams:
        return False
    return any(a.name == POSTCOPY for a in init) or any(a.name == POSTCOPY for _, a in stalling)


class ConvergenceSchedule:
    """Follows one migration's samples and says which action is due; see the module docstring."""

    def __init__(self, schedule: Any) -> None:
        self._init, self._stalling = parse(schedule)
        self._first_iteration: int | None = None
        self._last_iteration: int | None = None
        self._lowmark: int | None = None
        self._stalled_samples = 0
        self.postcopy = False
        self.stalling_iterations = 0

    def initial(self) -> list[Action]:
        """The actions to run as the migration starts."""
        return list(self._init)

    def observe(self, stats: dict[str, Any]) -> Action | None:
        """Take one sample of libvirt's job statistics; the action now due, if any."""
        if self.postcopy:
            return None
        iteration = stats.get("memory_iteration")
        if isinstance(iteration, int) and iteration >= 0:
            if self._first_iteration is None:
                self._first_iteration = self._last_iteration = iteration
                return None
            assert self._last_iteration is not None
            if iteration <= self._last_iteration:
                return None
            self._last_iteration = iteration
            self.stalling_iterations = iteration - self._first_iteration
        else:
            remaining = stats.get("data_remaining", stats.get("memory_remaining"))
            if not isinstance(remaining, int):
                return None
            if self._lowmark is None or remaining < self._lowmark:
                self._lowmark = remaining
                return None
            self._stalled_samples += 1
            self.stalling_iterations = self._stalled_samples
        return self._due()

    def _due(self) -> Action | None:
        if not self._stalling:
            return None
        limit, action = self._stalling[0]
        if limit >= self.stalling_iterations:
            return None
        self._stalling.pop(0)
        if action.name == POSTCOPY:
            self.postcopy = True
        return action

    def postcopy_failed(self) -> None:
        """The switch to post-copy did not happen: the next entries still apply."""
        self.postcopy = False
