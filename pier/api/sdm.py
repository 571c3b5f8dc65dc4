"""Handlers of VDSM's storage jobs (SDM.*) and of the NBD verbs.

A job is a task whose id is the caller's job_id; its precheck refuses bad input (unknown volume,
a base that is not the top's parent, a bad generation, a volume a running VM uses when the job
needs it idle) at the call, before the task starts, with nothing changed. After a restart each
job's reconciler says whether it finished (the changed volume's generation moved on) or not.
"""

from __future__ import annotations

from typing import Any

from pier.api.volume import VolumeApi
from pier.host.services import NbdService, StorageJobService
from pier.rpc.registry import CallContext, precheck, reconciler, verb


def _base(subchain_info: dict[str, Any]) -> dict[str, Any]:
    """The base volume of a SubchainInfo, as a CopyDataDIVEndpoint."""
    return {"sd_id": subchain_info["sd_id"], "img_id": subchain_info["img_id"], "vol_id": subchain_info["base_id"]}


class SdmApi:
    def __init__(self, jobs: StorageJobService, nbd: NbdService, volumes: VolumeApi) -> None:
        self._jobs = jobs
        self._nbd = nbd
        self._volumes = volumes

    def _idle(self, *endpoints: dict[str, Any]) -> None:
        for endpoint in endpoints:
            self._volumes.refuse_busy(endpoint["sd_id"], endpoint["img_id"], endpoint["vol_id"])

    # -- prechecks ----------------------------------------------------------------------------

    @precheck("SDM.copy_data")
    def copy_allowed(self, ctx: CallContext, job_id: str, source: dict[str, Any], destination: dict[str, Any],
                     copy_bitmaps: bool = False) -> None:
        self._jobs.check_copy(source, destination, copy_bitmaps)
        self._idle(destination)

    @precheck("SDM.merge")
    def merge_allowed(self, ctx: CallContext, job_id: str, subchain_info: dict[str, Any],
                      merge_bitmaps: bool = False) -> None:
        self._jobs.subchain(subchain_info)
        self._idle(_base(subchain_info), {**_base(subchain_info), "vol_id": subchain_info["top_id"]})

    @precheck("SDM.update_volume")
    def update_allowed(self, ctx: CallContext, job_id: str, vol_info: dict[str, Any],
                       vol_attr: dict[str, Any]) -> None:
        self._jobs.check_update(vol_info, vol_attr)

    @precheck("SDM.amend_volume")
    def amend_allowed(self, ctx: CallContext, job_id: str, vol_info: dict[str, Any],
                      qcow2_attr: dict[str, Any]) -> None:
        self._jobs.qcow2_volume(vol_info, "only qcow2 volumes can be amended")
        self._idle(vol_info)

    @precheck("SDM.sparsify_volume")
    def sparsify_allowed(self, ctx: CallContext, job_id: str, vol_info: dict[str, Any]) -> None:
        self._jobs.check_sparsify(vol_info)
        self._idle(vol_info)

    @precheck("SDM.add_bitmap")
    def add_bitmap_allowed(self, ctx: CallContext, job_id: str, vol_info: dict[str, Any], bitmap: str) -> None:
        self._jobs.check_bitmap(vol_info, bitmap, adding=True)
        self._idle(vol_info)

    @precheck("SDM.remove_bitmap")
    def remove_bitmap_allowed(self, ctx: CallContext, job_id: str, vol_info: dict[str, Any], bitmap: str) -> None:
        self._jobs.check_bitmap(vol_info, bitmap, adding=False)
        self._idle(vol_info)

    @precheck("SDM.clear_bitmaps")
    def clear_bitmaps_allowed(self, ctx: CallContext, job_id: str, vol_info: dict[str, Any]) -> None:
        self._jobs.qcow2_volume(vol_info, "bitmaps live in qcow2 volumes")
        self._idle(vol_info)

    # -- the jobs -----------------------------------------------------------------------------

    @verb("SDM.copy_data")
    def copy_data(self, ctx: CallContext, job_id: str, source: dict[str, Any], destination: dict[str, Any],
                  copy_bitmaps: bool = False) -> None:
        self._idle(destination)
        self._jobs.copy_data(source, destination, copy_bitmaps, step=ctx.task.step, progress=ctx.task.progress,
                             cancelled=ctx.task.cancelled)

    @reconciler("SDM.copy_data")
    def copy_done(self, params: dict[str, Any], step: str | None) -> bool:
        return self._jobs.reconcile(params["destination"], step)

    @verb("SDM.merge")
    def merge(self, ctx: CallContext, job_id: str, subchain_info: dict[str, Any], merge_bitmaps: bool = False) -> None:
        self._idle(_base(subchain_info), {**_base(subchain_info), "vol_id": subchain_info["top_id"]})
        self._jobs.merge(subchain_info, merge_bitmaps, step=ctx.task.step, progress=ctx.task.progress,
                         cancelled=ctx.task.cancelled)

    @reconciler("SDM.merge")
    def merge_done(self, params: dict[str, Any], step: str | None) -> bool:
        return self._jobs.reconcile(_base(params["subchain_info"]), step)

    @verb("SDM.update_volume")
    def update_volume(self, ctx: CallContext, job_id: str, vol_info: dict[str, Any], vol_attr: dict[str, Any]) -> None:
        self._jobs.update_volume(vol_info, vol_attr, step=ctx.task.step)

    @reconciler("SDM.update_volume")
    def update_done(self, params: dict[str, Any], step: str | None) -> bool:
        return self._jobs.reconcile(params["vol_info"], step)

    @verb("SDM.amend_volume")
    def amend_volume(self, ctx: CallContext, job_id: str, vol_info: dict[str, Any],
                     qcow2_attr: dict[str, Any]) -> None:
        self._idle(vol_info)
        self._jobs.amend_volume(vol_info, qcow2_attr, step=ctx.task.step)

    @reconciler("SDM.amend_volume")
    def amend_done(self, params: dict[str, Any], step: str | None) -> bool:
        return self._jobs.reconcile(params["vol_info"], step)

    @verb("SDM.sparsify_volume")
    def sparsify_volume(self, ctx: CallContext, job_id: str, vol_info: dict[str, Any]) -> None:
        self._idle(vol_info)
        self._jobs.sparsify_volume(vol_info, step=ctx.task.step, progress=ctx.task.progress,
                                   cancelled=ctx.task.cancelled)

    @reconciler("SDM.sparsify_volume")
    def sparsify_done(self, params: dict[str, Any], step: str | None) -> bool:
        return self._jobs.reconcile(params["vol_info"], step)

    @verb("SDM.add_bitmap")
    def add_bitmap(self, ctx: CallContext, job_id: str, vol_info: dict[str, Any], bitmap: str) -> None:
        self._idle(vol_info)
        self._jobs.add_bitmap(vol_info, bitmap, step=ctx.task.step)

    @reconciler("SDM.add_bitmap")
    def add_bitmap_done(self, params: dict[str, Any], step: str | None) -> bool:
        return self._jobs.reconcile(params["vol_info"], step)

    @verb("SDM.remove_bitmap")
    def remove_bitmap(self, ctx: CallContext, job_id: str, vol_info: dict[str, Any], bitmap: str) -> None:
        self._idle(vol_info)
        self._jobs.remove_bitmap(vol_info, bitmap, step=ctx.task.step)

    @reconciler("SDM.remove_bitmap")
    def remove_bitmap_done(self, params: dict[str, Any], step: str | None) -> bool:
        return self._jobs.reconcile(params["vol_info"], step)

    @verb("SDM.clear_bitmaps")
    def clear_bitmaps(self, ctx: CallContext, job_id: str, vol_info: dict[str, Any]) -> None:
        self._idle(vol_info)
        self._jobs.clear_bitmaps(vol_info, step=ctx.task.step)

    @reconciler("SDM.clear_bitmaps")
    def clear_bitmaps_done(self, params: dict[str, Any], step: str | None) -> bool:
        return self._jobs.reconcile(params["vol_info"], step)

    # -- NBD ----------------------------------------------------------------------------------

    @verb("NBD.start_server")
    def start_server(self, ctx: CallContext, server_id: str, config: dict[str, Any]) -> str:
        return self._nbd.start_server(server_id, config)

    @verb("NBD.stop_server")
    def stop_server(self, ctx: CallContext, server_id: str) -> None:
        self._nbd.stop_server(server_id)
