"""The verb registry: binds each declared verb to one handler and dispatches calls.

Handlers live in `pier/api/`, as methods marked with `@verb("Namespace.name")` on objects the
daemon builds. The registry refuses to start when a declared verb has no handler, a handler has
no declaration, or a handler's signature does not take the declared params. Every transport calls
`Registry.call(name, params, context)`: the caller's identity (set by the transport) must hold
the verb's role, params are validated against the schema, changing calls that share a lock key
(a VM, a destination host, ...; the schema's `locks`) run one at a time and are written to the
audit log, slow verbs become tasks, and every failure comes out as a `PierError`.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, cast

from prometheus_client import Counter, Histogram

from pier.rpc.addresses import host_of, with_port
from pier.rpc.audit import AuditLog, redact
from pier.rpc.auth import WSGI_AUTH_ERROR, WSGI_IDENTITY, Credentials, Identity
from pier.rpc.errors import (
    Forbidden,
    MethodNotFound,
    PierError,
    TargetBusy,
    TaskCancelled,
    Unauthenticated,
    Unexpected,
    error_by_name,
)
from pier.rpc.limits import RateLimiter
from pier.rpc.metrics import CALL_SECONDS, CALLS
from pier.rpc.schema import Schema, Verb
from pier.rpc.tasks import Reconciler, TaskHandle, TaskManager

log = logging.getLogger("pier.rpc")

WAITS_LIMIT = 3600.0
"""Seconds a `waits` verb's RPC call waits for its task; then it answers the task as it is."""

_VERB_ATTR = "__pier_verb__"
_RECONCILER_ATTR = "__pier_reconciles__"
_PRECHECK_ATTR = "__pier_prechecks__"


def verb(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a method as the handler of the declared verb `name`."""

    def mark(func: Callable[..., Any]) -> Callable[..., Any]:
        setattr(func, _VERB_ATTR, name)
        return func

    return mark


def reconciler(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a method that tells, after a restart, whether a task of verb `name` took effect.

    It is called with the task's params and the last step marker its handler saved (None when
    none) and returns True (the effect is there) or False, or raises a PierError saying why the
    task did not take effect.
    """

    def mark(func: Callable[..., Any]) -> Callable[..., Any]:
        setattr(func, _RECONCILER_ATTR, name)
        return func

    return mark


def precheck(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a method that refuses a call of task verb `name` before its task starts.

    It takes the same arguments as the verb's handler and raises a PierError when the call cannot
    succeed (a caller then gets the error from the call itself, not from a failed task); the
    handler may check again, since things change before the task runs.
    """

    def mark(func: Callable[..., Any]) -> Callable[..., Any]:
        setattr(func, _PRECHECK_ATTR, name)
        return func

    return mark


@dataclass(frozen=True)
class CallContext:
    """Who is calling and through what; the first argument of every handler."""

    transport: str
    peer: str = ""
    identity: Identity | None = None
    session: Any = None
    task: Any = None
    auth_error: PierError | None = None  # why the transport could not tell who is calling
    flow_id: str | None = None  # the caller's correlation id (an engine's ovirtCorrelationId), for logs
    prompt_tasks: bool = False  # the wire answers every task verb with its task at once (REST's 202)
    channel: bool = False  # the transport relays a byte channel (pier.rpc.channels) a verb returns
    locks: TargetLocks | None = None  # the registry's, for a handler that takes a key of its own (`hold`)

    def try_hold(self, key: str, holder: str) -> AbstractContextManager[None]:
        """Hold `key` (an image, a VM id) as the changing verbs and tasks holding it do, or raise
        TargetBusy at once when one holds it: for a handler that changes only what nobody is at."""
        if self.locks is None:
            raise RuntimeError("the context reached no registry")
        return self.locks.hold(key, holder, wait=0)

    def describe(self) -> str:
        who = f"{self.identity.name} " if self.identity else ""
        flow = f", flow {self.flow_id}" if self.flow_id else ""
        return f"{who}via {self.transport} {self.peer}".strip() + flow

    @classmethod
    def for_wsgi(cls, environ: dict[str, Any], transport: str, *, prompt_tasks: bool = False) -> CallContext:
        """The context of a WSGI request, with what the HTTP listener learnt of its caller."""
        host, port = environ.get("REMOTE_ADDR", ""), environ.get("REMOTE_PORT", "")
        return cls(transport, with_port(host, port) if port else host or "local",
                   identity=environ.get(WSGI_IDENTITY), auth_error=environ.get(WSGI_AUTH_ERROR),
                   prompt_tasks=prompt_tasks)


class TargetLocks:
    """One lock per key (a VM id, a destination host, an image, ...): changing operations that share
    a key run one at a time.

    A call holds all of its keys or none: it takes them in sorted order (so two calls wanting the
    same keys in any order cannot deadlock) and, when one is not free within `wait` seconds in all
    (a task may hold it for minutes), gives back those it took and is refused naming the busy key
    and what holds it. Tasks themselves wait as long as it takes.
    """

    def __init__(self, wait: float = 10.0) -> None:
        self.wait = wait
        self._guard = threading.Lock()
        self._keys: dict[str, _Key] = {}

    @contextmanager
    def hold(self, keys: str | Iterable[str], holder: str = "", wait: float | None = None) -> Iterator[None]:
        """Hold every one of `keys` (one key may be given alone) for the `with` block, as `holder`."""
        wanted = sorted({keys} if isinstance(keys, str) else set(keys))
        deadline = None if wait is None else time.monotonic() + wait
        with self._guard:
            entries = [self._keys.setdefault(key, _Key()) for key in wanted]
            for entry in entries:
                entry.users += 1
        taken: list[_Key] = []
        try:
            for key, entry in zip(wanted, entries, strict=True):
                timeout = -1 if deadline is None else max(0.0, deadline - time.monotonic())
                if not entry.lock.acquire(timeout=timeout):
                    busy_with = entry.holder
                    raise TargetBusy(f"{key} is busy with {busy_with or 'another call'}; try again when it ends "
                                     "(or stop that task)", data={"target": key, "busyWith": busy_with})
                entry.holder = holder
                taken.append(entry)
            yield
        finally:
            for entry in reversed(taken):
                entry.holder = ""
                entry.lock.release()
            with self._guard:
                for key, entry in zip(wanted, entries, strict=True):
                    entry.users -= 1
                    if entry.users == 0:
                        del self._keys[key]


@dataclass
class _Key:
    """A key's lock, how many calls hold or wait for it, and what holds it (for `busy`)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0
    holder: str = ""


class Registry:
    """Declared verbs bound to handlers; `call` is the single entry point of every transport."""

    def __init__(self, schema: Schema, handlers: Iterable[object], tasks: TaskManager | None = None, *,
                 audit: AuditLog | None = None, limiter: RateLimiter | None = None,
                 credentials: Credentials | None = None) -> None:
        self.schema = schema
        self.tasks = tasks
        self.audit = audit
        self.limiter = limiter
        self.credentials = credentials
        self.locks = TargetLocks()
        self._handlers: dict[str, Callable[..., Any]] = {}
        self._meters: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}
        self.reconcilers: dict[str, Reconciler] = {}
        self._prechecks: dict[str, Callable[..., Any]] = {}
        for owner in handlers:
            self._bind(owner)
        missing = sorted(set(schema.verbs) - set(self._handlers))
        if missing:
            raise RuntimeError(f"declared verbs without a handler: {', '.join(missing)}")
        if any(self.schema.verbs[name].task for name in self._handlers) and tasks is None:
            raise RuntimeError("task verbs are declared but no task manager was given")

    @property
    def verbs(self) -> dict[str, Verb]:
        return self.schema.verbs

    def _bind(self, owner: object) -> None:
        for _, member in inspect.getmembers(owner, callable):
            name = getattr(member, _VERB_ATTR, None)
            if name is not None:
                declared = self.schema.verbs.get(name)
                if declared is None:
                    raise RuntimeError(f"handler {member.__qualname__} is bound to undeclared verb {name}")
                if name in self._handlers:
                    raise RuntimeError(f"verb {name} has two handlers")
                _check_signature(declared, member)
                self._handlers[name] = member
            reconciles = getattr(member, _RECONCILER_ATTR, None)
            if reconciles is not None:
                self.reconcilers[reconciles] = cast(Reconciler, member)  # @reconciler's contract
            checks = getattr(member, _PRECHECK_ATTR, None)
            if checks is not None:
                declared = self.schema.verbs.get(checks)
                if declared is None or not declared.task:
                    raise RuntimeError(f"precheck {member.__qualname__} is for {checks}, which is not a task verb")
                _check_signature(declared, member)
                self._prechecks[checks] = member

    def call(self, name: str, params: Any, context: CallContext) -> Any:
        """Check the caller, validate `params` for verb `name` (or a legacy alias), run its handler.

        Returns the handler's JSON-safe result (`True` when it returns nothing), or the task's
        description for a task verb. Raises a PierError on any failure.
        """
        declared = self.schema.resolve(name)
        if declared is None:
            raise MethodNotFound(f"Method not found: {name}", data={"method": name})
        legacy = self.schema.legacy.get(name)
        try:
            self._admit(declared, context)
            if legacy is not None and isinstance(params, dict):
                params = legacy[1].complete(params, declared)
            params = declared.validate(params)
        except PierError as refusal:
            if not declared.readonly and self.audit is not None:
                self._refused(self.audit, declared, context, refusal)
            raise
        handler = self._handlers[declared.name]
        if context.locks is not self.locks:
            context = replace(context, locks=self.locks)
        target = declared.target_of(params)
        keys = declared.lock_keys(params)
        started = time.perf_counter()
        result: Any  # whatever JSON-safe value the handler returns, None included
        try:
            if declared.task:
                check = self._prechecks.get(declared.name)
                if check is not None:
                    check(context, **params)
                result = self._submit_task(declared, handler, params, context, target, keys)
                if declared.waits and not context.prompt_tasks:
                    result = self._ended(result["taskID"])
            elif keys and not declared.readonly:
                if declared.preempts and self.tasks is not None and target is not None:
                    self.tasks.stop_tasks_on(target, f"{declared.name} was called")
                with self.locks.hold(keys, declared.name, self.locks.wait):
                    result = handler(context, **params)
            else:
                result = handler(context, **params)
        except PierError as exc:
            self._finished(declared, params, target, context, started, exc)
            raise
        except Exception as exc:
            reference = uuid.uuid4().hex[:12]
            log.exception("%s failed unexpectedly (reference %s, %s)", declared.name, reference, context.describe())
            error = Unexpected(f"Unexpected error in {declared.name}; reference {reference} in the agent's log",
                               data={"reference": reference})
            self._finished(declared, params, target, context, started, error)
            raise error from exc
        self._finished(declared, params, target, context, started, None, result)
        return True if result is None else result

    def _ended(self, task_id: str) -> dict[str, Any]:
        """The task once it has ended, for a `waits` verb; its error raised when it failed."""
        assert self.tasks is not None, "__init__ refuses task verbs without a task manager"
        task = self.tasks.wait(task_id, WAITS_LIMIT)
        if task["state"] == "failed":
            error = task["error"] or {}
            try:
                kind = error_by_name(str(error.get("name")))
            except KeyError:
                kind = Unexpected
            raised = kind(error.get("message"), data=error.get("data"))
            raised.code = error.get("code", raised.code)  # a host error may carry its own code
            raise raised
        if task["state"] == "cancelled":
            raise TaskCancelled(task["message"] or None)
        return task

    def admit(self, name: str, context: CallContext) -> None:
        """Raise unless the caller may call verb `name` now (for work that bypasses `call`, like a stream)."""
        declared = self.schema.resolve(name)
        if declared is None:
            raise MethodNotFound(f"Method not found: {name}", data={"method": name})
        self._admit(declared, context)

    def _admit(self, declared: Verb, context: CallContext) -> None:
        """Refuse a caller without an identity, over its rate, or without the verb's role."""
        identity = context.identity
        if identity is None:
            raise context.auth_error or Unauthenticated("no credentials were presented")
        if self.credentials is not None:
            identity = self.credentials.current(identity)  # a token revoked since the connection opened
        if self.limiter is not None and not identity.local_root:
            self.limiter.take(identity.name)
        if not identity.allows(declared.role):
            error = Forbidden(f"{declared.name} needs the {declared.role} role; {identity.name} has the "
                              f"{identity.role} role",
                              data={"needs": declared.role, "role": identity.role})
            log.warning("%s refused to %s (%s)", declared.name, identity.name, context.describe())
            raise error

    def _finished(self, declared: Verb, params: dict[str, Any], target: str | None, context: CallContext,
                  started: float, error: PierError | None, result: Any = None) -> None:
        """Log, count and (for a changing verb) audit a call that ran."""
        elapsed = time.perf_counter() - started
        calls, seconds = self._meters_of(declared.name, context.transport, error.name if error else "ok")
        calls.inc()
        if error is None:
            seconds.observe(elapsed)
        if declared.readonly:
            return
        _log_call(declared, target, context, elapsed, error)
        if self.audit is not None and context.identity is not None:  # _admit let in only callers with one
            message = f"task {result['taskID']}" if declared.task and error is None else ""
            self._audit(self.audit, context.identity, declared, params, target, context, elapsed, error, message)

    def _meters_of(self, verb: str, transport: str, outcome: str) -> tuple[Counter, Histogram]:
        """The call counter and duration histogram of these labels, looked up once: prometheus's
        `labels()` took ~3 us a call, a quarter of a ping's time in the registry."""
        key = (verb, transport, outcome)
        meters = self._meters.get(key)
        if meters is None:  # a few per verb (transports and outcomes are few); a race makes the same pair
            meters = self._meters[key] = (CALLS.labels(verb, transport, outcome), CALL_SECONDS.labels(verb))
        return meters

    @staticmethod
    def _audit(audit: AuditLog, identity: Identity, declared: Verb, params: dict[str, Any], target: str | None,
               context: CallContext, elapsed: float | None, error: PierError | None, message: str = "") -> None:
        audit.record(who=identity.name, role=identity.role, via=context.transport, peer=context.peer,
                     verb=declared.name, target=target, params=redact(params, declared.secrets),
                     outcome=error.name if error else "ok", message=error.message if error else message,
                     ms=None if elapsed is None else round(elapsed * 1000, 3))

    @staticmethod
    def _refused(audit: AuditLog, declared: Verb, context: CallContext, error: PierError) -> None:
        identity = context.identity
        audit.refused(who=identity.name if identity else "unauthenticated", role=identity.role if identity else None,
                      via=context.transport, source=host_of(context.peer), verb=declared.name,
                      outcome=error.name, message=error.message)

    def _submit_task(self, declared: Verb, handler: Callable[..., Any], params: dict[str, Any],
                     context: CallContext, target: str | None, keys: list[str]) -> dict[str, Any]:
        assert self.tasks is not None, "__init__ refuses task verbs without a task manager"

        def run(task: TaskHandle) -> Any:
            return handler(replace(context, task=task), **params)

        def guard() -> AbstractContextManager[None]:
            return self.locks.hold(keys, f"{declared.name} (a task)")

        task_id = params.get(declared.task_id) if declared.task_id else None
        return self.tasks.submit(declared.name, target, params, run, guard=guard if keys else None,
                                 task_id=task_id)


def _check_signature(declared: Verb, handler: Callable[..., Any]) -> None:
    signature = inspect.signature(handler)
    accepted = list(signature.parameters.values())[1:]  # the first is the CallContext
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted)
    names = {p.name for p in accepted}
    unknown = [p for p in declared.params if p not in names and not takes_any]
    undeclared = [p.name for p in accepted
                  if p.default is inspect.Parameter.empty and p.kind is not inspect.Parameter.VAR_KEYWORD
                  and p.name not in declared.params]
    if unknown or undeclared:
        raise RuntimeError(f"handler of {declared.name} does not match its declaration: "
                           f"takes no {unknown}, requires undeclared {undeclared}")


def _log_call(declared: Verb, target: str | None, context: CallContext, elapsed: float,
              error: PierError | None) -> None:
    elapsed_ms = elapsed * 1000
    on = f" {declared.target.split('|')[0]}={target}" if target and declared.target else ""
    if error is None:
        log.info("%s%s done in %.1f ms (%s)", declared.name, on, elapsed_ms, context.describe())
    else:
        log.warning("%s%s failed: %s (%s %s; %s)", declared.name, on, error.message, error.name,
                    error.code, context.describe())
