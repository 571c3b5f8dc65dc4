"""The task manager: slow verbs run here and are tracked in sqlite.

A task has an id, its verb and target, a state (pending, running, succeeded, failed, cancelled),
progress 0-100 with a message, a result or an error, and times. Every change is written to
sqlite and published as a `|jobs|status|<taskID>` event. Callers can wait for a task to end,
cancel it, and clear it once it has ended. A handler saves a step marker (`TaskHandle.step`)
before each action whose effect it cannot undo, so after a restart its reconciler knows how far
the task got. A task left pending or running is reconciled at start: the verb's reconciler,
given the task's params and last step, says whether its effect is there (then it succeeded), or
not (it failed), or raises a PierError naming why it failed. VDSM's views of the same task
(`Task.getStatus`, `Host.getJobs`) are derived here too.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager as ContextManager
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from pier.rpc.errors import JobExists, JobNotDone, PierError, TaskCancelled, Unexpected, UnknownTask
from pier.rpc.store import open_state

log = logging.getLogger("pier.tasks")

ENDED = ("succeeded", "failed", "cancelled")
_JOB_TYPES = {"SDM": "storage", "Volume": "storage", "Image": "storage", "StoragePool": "storage",
              "StorageDomain": "storage", "VM": "virt"}
"""VDSM's HostJobType of a verb's namespace (others: the namespace in lower case)."""
_COLUMNS = "id, verb, target, params, state, progress, message, result, error, created, started, ended, step"

Reconciler = Callable[[dict[str, Any], "str | None"], bool]
"""Called at start with a task's params and last step marker (None when it saved none): True
when the task's effect is there, False when not; a PierError it raises fails the task with it."""


@dataclass
class _Task:
    id: str
    verb: str
    target: str | None
    params: dict[str, Any]
    state: str = "pending"
    progress: int = 0
    message: str = ""
    result: Any = None
    error: dict[str, Any] | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    step: str | None = None  # the last step marker the handler saved (for reconciliation)
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def info(self) -> dict[str, Any]:
        return {
            "taskID": self.id, "verb": self.verb, "target": self.target, "state": self.state,
            "progress": self.progress, "message": self.message, "result": self.result,
            "error": self.error, "created": self.created, "started": self.started, "ended": self.ended,
        }

    def vdsm_status(self) -> dict[str, Any]:
        """VDSM's TaskStatus view: taskState/taskResult/code/message."""
        state = {"pending": "init", "running": "aborting" if self.cancel.is_set() else "running"}.get(
            self.state, "finished")
        result = {"succeeded": "success", "failed": "cleanSuccess", "cancelled": "cleanSuccess"}.get(self.state, "")
        error = self.error or {}
        return {"taskID": self.id, "taskState": state, "taskResult": result,
                "code": error.get("code", 0), "message": error.get("message", self.message or self.state)}

    def vdsm_job(self) -> dict[str, Any]:
        """VDSM's HostJobInfo view."""
        status = {"succeeded": "done", "cancelled": "aborted"}.get(self.state, self.state)
        namespace = self.verb.split(".")[0]
        job = {"id": self.id, "job_type": _JOB_TYPES.get(namespace, namespace.lower()), "status": status,
               "description": self.verb + (f" {self.target}" if self.target else ""),
               "progress": self.progress}
        if self.error:
            job["error"] = {"code": self.error["code"], "message": self.error["message"]}
        return job


class TaskHandle:
    """What a running task's handler sees: report progress, notice cancellation."""

    def __init__(self, manager: TaskManager, task: _Task) -> None:
        self._manager = manager
        self._task = task

    @property
    def id(self) -> str:
        return self._task.id

    @property
    def cancelled(self) -> threading.Event:
        return self._task.cancel

    def progress(self, percent: int, message: str = "") -> None:
        """Report progress (0-100) and what is happening now."""
        self._manager._update(self._task, progress=max(0, min(100, int(percent))), message=message)

    def step(self, name: str, percent: int, message: str = "") -> None:
        """Save that the task reaches step `name` (with its progress) before doing it, so that
        after a restart the verb's reconciler knows what may have been done."""
        self._manager._update(self._task, step=name, progress=max(0, min(100, int(percent))), message=message)

    @property
    def agent_stopping(self) -> bool:
        """Whether `cancelled` is set because the agent stops (the task is then reconciled at the
        next start) rather than by Task.stop: work that goes on without the agent may be left to."""
        return self._manager._stopping

    def check_cancelled(self) -> None:
        """Raise TaskCancelled if someone asked to stop this task."""
        if self._task.cancel.is_set():
            raise TaskCancelled()

    def end(self, error: PierError | None = None, result: Any = None) -> None:
        """End a task made by `TaskManager.begin`: succeeded, or cancelled (TaskCancelled) or failed
        with `error`. Idempotent: a task that has ended stays as it ended."""
        if self._task.state in ENDED or self._manager._stopping:
            return  # when the agent stops, the record stays running, to be reconciled at the next start
        if isinstance(error, TaskCancelled):
            self._manager._finish(self._task, "cancelled", message=error.message)
        elif error is not None:
            self._manager._finish(self._task, "failed", error=error.to_dict(), message=error.message)
        else:
            self._manager._finish(self._task, "succeeded", result=True if result is None else result, progress=100)


class TaskManager:
    """Runs task verbs on a worker pool and keeps their records in sqlite."""

    def __init__(self, db_path: str, publish: Callable[[str, dict[str, Any]], Any], *,
                 workers: int = 8, keep_ended: float = 3600.0) -> None:
        self._publish = publish
        self.keep_ended = keep_ended
        self._db = open_state(db_path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS tasks (id TEXT PRIMARY KEY, verb TEXT, target TEXT, params TEXT,"
            " state TEXT, progress INTEGER, message TEXT, result TEXT, error TEXT, created REAL,"
            " started REAL, ended REAL)"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(tasks)")}
        if "step" not in columns:  # a state database from before step markers
            self._db.execute("ALTER TABLE tasks ADD COLUMN step TEXT")
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._tasks: dict[str, _Task] = {}
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._stopping = False

    # -- life cycle ---------------------------------------------------------------------------

    def start(self, reconcilers: dict[str, Reconciler] | None = None) -> None:
        """Load kept tasks, reconcile those a previous run left unfinished, start the workers."""
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM tasks").fetchall()
        for row in rows:
            task = _Task(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5], row[6],
                         json.loads(row[7]), json.loads(row[8]), row[9], row[10], row[11], row[12])
            self._tasks[task.id] = task
            if task.state not in ENDED:
                self._reconcile(task, (reconcilers or {}).get(task.verb))
        self._stopping = False
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="task-worker")

    def end_waits(self) -> None:
        """Refuse new tasks, make every wait return at once and ask running tasks to stop (the agent
        is stopping; their records stay as they are, to be reconciled at the next start)."""
        with self._changed:
            self._stopping = True
            for task in self._tasks.values():
                if task.state not in ENDED:
                    task.cancel.set()
            self._changed.notify_all()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask running tasks to stop, wait for the workers, close sqlite.

        A task interrupted this way keeps its `running` record, to be reconciled at the next start.
        """
        self.end_waits()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        with self._lock:
            self._db.close()

    def _reconcile(self, task: _Task, reconcile: Reconciler | None) -> None:
        error: PierError = Unexpected("the agent stopped while this task was running and its effect is not there")
        try:
            done = bool(reconcile(task.params, task.step)) if reconcile else False
        except PierError as exc:  # the reconciler knows why the task did not take effect
            error, done = exc, False
        except Exception as exc:  # a reconciler that cannot tell counts as "not done"
            log.warning("could not reconcile task %s (%s): %s", task.id, task.verb, exc)
            done = False
        if done:
            self._finish(task, "succeeded", result=True,
                         message="finished while the agent was down (reconciled at start)")
        else:
            self._finish(task, "failed", error=error.to_dict(), message=error.message)
        log.info("task %s (%s %s) reconciled after restart: %s", task.id, task.verb, task.target or "", task.state)

    # -- submitting and running ---------------------------------------------------------------

    def submit(self, verb: str, target: str | None, params: dict[str, Any],
               run: Callable[[TaskHandle], Any], *, guard: Callable[[], ContextManager[Any]] | None = None,
               task_id: str | None = None) -> dict[str, Any]:
        """Record a pending task and queue `run(handle)` on a worker; returns the task's info.

        `task_id` is the caller's id for it (VDSM's job_id); JobExists when a kept task has it."""
        if self._pool is None or self._stopping:
            raise PierError("the agent is stopping; no new tasks are accepted")
        task = _Task(task_id or str(uuid.uuid4()), verb, target, params)
        with self._lock:
            if task.id in self._tasks:
                raise JobExists(f"Job id already exists: {task.id}", data={"job_id": task.id})
            self._tasks[task.id] = task
            self._save(task)
        self._announce(task)
        self._pool.submit(self._run, task, run, guard)
        self._expire()
        return task.info()

    def begin(self, verb: str, target: str | None, params: dict[str, Any], *,
              task_id: str | None = None) -> TaskHandle:
        """Record a running task whose work the caller does in its own thread (a transfer the REST
        facade relays) and ends with `TaskHandle.end`; JobExists when a kept task has `task_id`."""
        if self._stopping:
            raise PierError("the agent is stopping; no new tasks are accepted")
        now = time.time()
        task = _Task(task_id or str(uuid.uuid4()), verb, target, params, state="running", created=now, started=now)
        with self._lock:
            if task.id in self._tasks:
                raise JobExists(f"Job id already exists: {task.id}", data={"job_id": task.id})
            self._tasks[task.id] = task
            self._save(task)
        self._announce(task)
        self._expire()
        return TaskHandle(self, task)

    def _run(self, task: _Task, run: Callable[[TaskHandle], Any],
             guard: Callable[[], ContextManager[Any]] | None) -> None:
        if task.cancel.is_set():
            if not self._stopping:
                self._finish(task, "cancelled", message="cancelled before it started")
            return
        with (guard() if guard else nullcontext()):
            if task.cancel.is_set():
                if not self._stopping:
                    self._finish(task, "cancelled", message="cancelled before it started")
                return
            self._update(task, state="running", started=time.time())
            try:
                result = run(TaskHandle(self, task))
            except TaskCancelled as exc:
                if not self._stopping:
                    self._finish(task, "cancelled", message=exc.message)
            except PierError as exc:
                self._finish(task, "failed", error=exc.to_dict(), message=exc.message)
            except Exception:
                reference = uuid.uuid4().hex[:12]
                log.exception("task %s (%s) failed unexpectedly (reference %s)", task.id, task.verb, reference)
                error = Unexpected(f"Unexpected error in {task.verb}; reference {reference} in the agent's log")
                self._finish(task, "failed", error=error.to_dict(), message=error.message)
            else:
                self._finish(task, "succeeded", result=True if result is None else result, progress=100)

    def _finish(self, task: _Task, state: str, **changes: Any) -> None:
        self._update(task, state=state, ended=time.time(), **changes)
        log.info("task %s %s %s: %s", task.id, task.verb, task.target or "", state)

    def _update(self, task: _Task, **changes: Any) -> None:
        with self._changed:
            for key, value in changes.items():
                setattr(task, key, value)
            if task.id in self._tasks:
                self._save(task)
            self._changed.notify_all()
        self._announce(task)

    def _save(self, task: _Task) -> None:
        self._db.execute(
            f"INSERT OR REPLACE INTO tasks ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (task.id, task.verb, task.target, json.dumps(task.params, default=str), task.state,
             task.progress, task.message, json.dumps(task.result, default=str), json.dumps(task.error),
             task.created, task.started, task.ended, task.step),
        )

    def _announce(self, task: _Task) -> None:
        try:
            self._publish(f"|jobs|status|{task.id}", {task.id: task.info()})
        except Exception:  # the event log is closed during shutdown
            log.debug("could not publish the status of task %s", task.id, exc_info=True)

    # -- reading and acting -------------------------------------------------------------------

    def get(self, task_id: str) -> dict[str, Any]:
        return self._get(task_id).info()

    def wait(self, task_id: str, timeout: float) -> dict[str, Any]:
        """The task's info once it has ended, or when `timeout` seconds have passed."""
        task = self._get(task_id)
        deadline = time.monotonic() + (timeout if math.isfinite(timeout) else 0.0)
        with self._changed:
            while task.state not in ENDED and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
        return task.info()

    def stop_task(self, task_id: str) -> dict[str, Any]:
        """Ask a task to stop; a pending one is cancelled at once, a running one when it notices."""
        task = self._get(task_id)
        if task.state not in ENDED:
            task.cancel.set()
            if task.state == "pending":
                self._finish(task, "cancelled", message="cancelled before it started")
            else:
                self._update(task, message="cancelling")
        return task.info()

    def stop_tasks_on(self, target: str, reason: str) -> list[str]:
        """Ask every task that has not ended on `target` to stop; returns their ids."""
        with self._lock:
            doomed = [task for task in self._tasks.values() if task.target == target and task.state not in ENDED]
        for task in doomed:
            log.info("stopping task %s (%s) on %s: %s", task.id, task.verb, target, reason)
            self.stop_task(task.id)
        return [task.id for task in doomed]

    def clear(self, task_id: str) -> None:
        task = self._get(task_id)
        if task.state not in ENDED:
            raise JobNotDone(f"task {task_id} is still {task.state}; stop it first", data={"state": task.state})
        with self._lock:
            self._tasks.pop(task_id, None)
            self._db.execute("DELETE FROM tasks WHERE id = ?", (task_id,))

    def all(self) -> dict[str, dict[str, Any]]:
        self._expire()
        return {task.id: task.info() for task in list(self._tasks.values())}

    def vdsm_statuses(self) -> dict[str, dict[str, Any]]:
        return {task.id: task.vdsm_status() for task in list(self._tasks.values())}

    def vdsm_status(self, task_id: str) -> dict[str, Any]:
        return self._get(task_id).vdsm_status()

    def vdsm_jobs(self, job_type: str | None = None, job_ids: list[str] | None = None) -> dict[str, dict[str, Any]]:
        jobs = {task.id: task.vdsm_job() for task in list(self._tasks.values())}
        return {job_id: job for job_id, job in jobs.items()
                if (job_type is None or job["job_type"] == job_type) and (job_ids is None or job_id in job_ids)}

    def _get(self, task_id: str) -> _Task:
        task = self._tasks.get(task_id)
        if task is None:
            raise UnknownTask(f"Task id unknown: {task_id}", data={"taskID": task_id})
        return task

    def _expire(self) -> None:
        cutoff = time.time() - self.keep_ended
        with self._lock:
            old = [t.id for t in self._tasks.values() if t.ended is not None and t.ended < cutoff]
            for task_id in old:
                del self._tasks[task_id]
                self._db.execute("DELETE FROM tasks WHERE id = ?", (task_id,))
