"""Handlers of image transfer: VDSM's image tickets, and the REST data route of a volume.

Each request of the data route is a task (verb Volume.readData or Volume.writeData, target the
volume), running while its bytes move: Task.getInfo and Task.getAllTasks show the bytes moved so
far, and it ends succeeded, failed (the endpoint's refusal, a broken connection, an upload whose
bytes are not the volume's format) or cancelled (Task.stop ends the transfer between chunks). Its
id is in the answer's X-Pier-Task header; a client that wants to tell it to another before an
upload ends names it itself with the `taskID` param (`?taskID=<uuid>`).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from pier.host.services import TransferService
from pier.rpc.dataplane import HttpEndpoint
from pier.rpc.errors import PierError, Unavailable, UnsupportedOperation
from pier.rpc.registry import CallContext, verb
from pier.rpc.tasks import TaskHandle, TaskManager

_DATA_ROUTE = "/api/v1/storage-domains/{sd}/images/{img}/volumes/{vol}/data"
REPORT_EVERY = 0.5  # seconds between a transfer task's progress records


class TransferApi:
    def __init__(self, transfers: TransferService, tasks: TaskManager | None = None) -> None:
        self._transfers = transfers
        self._tasks = tasks

    @verb("Host.add_image_ticket")
    def add_image_ticket(self, ctx: CallContext, ticket: dict[str, Any]) -> None:
        self._transfers.add_ticket(ticket)

    @verb("Host.get_image_ticket")
    def get_image_ticket(self, ctx: CallContext, uuid: str) -> dict[str, Any]:
        return self._transfers.get_ticket(uuid)

    @verb("Host.extend_image_ticket")
    def extend_image_ticket(self, ctx: CallContext, uuid: str, timeout: int) -> None:
        self._transfers.extend_ticket(uuid, timeout)

    @verb("Host.remove_image_ticket")
    def remove_image_ticket(self, ctx: CallContext, uuid: str) -> None:
        self._transfers.remove_ticket(uuid)

    @verb("Volume.readData")
    def read_data(self, ctx: CallContext, storagedomainID: str, imageID: str, volumeID: str,
                  checksum: str | None = None, taskID: str | None = None) -> HttpEndpoint:
        _need_stream(ctx, "GET", storagedomainID, imageID, volumeID)
        endpoint = self._transfers.open_data(storagedomainID, imageID, volumeID, write=False, checksum=checksum)
        return self._tracked(endpoint, "Volume.readData", storagedomainID, imageID, volumeID, taskID, "read")

    @verb("Volume.writeData")
    def write_data(self, ctx: CallContext, storagedomainID: str, imageID: str, volumeID: str,
                   taskID: str | None = None) -> HttpEndpoint:
        _need_stream(ctx, "PUT", storagedomainID, imageID, volumeID)
        endpoint = self._transfers.open_data(storagedomainID, imageID, volumeID, write=True)
        return self._tracked(endpoint, "Volume.writeData", storagedomainID, imageID, volumeID, taskID, "written")

    def _tracked(self, endpoint: HttpEndpoint, name: str, sd: str, img: str, vol: str, task_id: str | None,
                 done_word: str) -> HttpEndpoint:
        """`endpoint`, with a task that follows its bytes and ends with it."""
        if self._tasks is None:
            return endpoint
        params = {"storagedomainID": sd, "imageID": img, "volumeID": vol}
        try:
            task = self._tasks.begin(name, vol, params, task_id=task_id)
        except BaseException:
            endpoint.release()
            raise
        watch = _Watch(task, endpoint, done_word)
        return replace(endpoint, progress=watch.progress, done=watch.done,
                       headers={**endpoint.headers, "X-Pier-Task": task.id})


class _Watch:
    """A data request's task: its progress in bytes, at most every REPORT_EVERY seconds, and its end."""

    def __init__(self, task: TaskHandle, endpoint: HttpEndpoint, done_word: str) -> None:
        self.task, self.endpoint, self.done_word = task, endpoint, done_word
        self.reported = 0.0
        task.progress(0, f"{endpoint.name}: starting")

    def progress(self, moved: int, total: int) -> None:
        self.task.check_cancelled()
        now = time.monotonic()
        if now - self.reported >= REPORT_EVERY:
            self.reported = now
            percent = 100 * moved // total if total else 0
            self.task.progress(min(percent, 99), f"{moved} of {total} bytes {self.done_word}")

    def done(self, moved: int, failure: Exception | None) -> None:
        error: PierError | None = None
        if failure is not None:
            error = failure if isinstance(failure, PierError) else Unavailable(
                f"{self.endpoint.name}: {failure}", data={"bytes": moved})
        try:
            self.endpoint.done(moved, failure)
        except PierError as exc:
            error = exc
            raise
        finally:
            self.task.end(error, {"bytes": moved})


def _need_stream(ctx: CallContext, method: str, sd: str, img: str, vol: str) -> None:
    if not ctx.channel:
        route = _DATA_ROUTE.format(sd=sd, img=img, vol=vol)
        raise UnsupportedOperation(f"this verb moves a volume's bytes, which {ctx.transport} cannot carry: use "
                                   f"{method} {route}, or an image ticket", data={"route": route})
