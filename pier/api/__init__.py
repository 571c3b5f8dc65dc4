"""Verb handlers: thin bindings from declared verbs to the parts that do the work.

One module per namespace. Each handler takes a verb's validated params, calls into `pier.host`
or the task manager or the event log, and shapes VDSM's return values. `handlers()` builds the
full set the registry binds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pier.api.events import EventsApi
from pier.api.host import HostApi
from pier.api.security import SecurityApi
from pier.api.task import TaskApi
from pier.api.vm import VmApi


def handlers(node: Any, tasks: Any, events: Any, about: Callable[[], dict[str, Any]], credentials: Any,
             audit: Any) -> list[object]:
    """Every handler object, ready for `Registry(schema, handlers(...))`."""
    return [HostApi(node, tasks, about), VmApi(node), TaskApi(tasks), EventsApi(events, credentials),
            SecurityApi(credentials, audit)]
