"""VDSM's storage jobs (SDM.*) on file-domain volumes, done by the real qemu-img.

Each job finds its volumes through `Volumes` (VDSM's layout), checks everything it can before it
touches anything (`check_*`, also run at the call), and changes a volume the way VDSM's
`Volume.operation` does: the caller's expected generation is checked; a data copy marks the
destination ILLEGAL first; at the end one metadata write sets LEGAL (when it was set ILLEGAL) and
the next generation. So a copy that is aborted or interrupted leaves its destination ILLEGAL with
its generation unchanged, and `reconcile` after a restart tells a finished job by its generation.
Before it marks or writes anything a job saves a step `gen=<N>` through `step`, for that.

copy_data runs `qemu-img convert -n` into the existing destination (with `--bitmaps` on request);
merge runs `qemu-img commit -b base` (VDSM's cold merge: the base's metadata keeps its legality,
the chain is rewired later by StoragePool.finalizeMerge); amend runs `qemu-img amend`; the bitmap
jobs `qemu-img bitmap`. sparsify_volume: VDSM runs `virt-sparsify --in-place`, which needs a
libguestfs appliance built from a host kernel; this host has none (/boot is empty), so the volume
is rewritten by `qemu-img convert` (zeroed clusters dropped, a layer kept over its backing file,
bitmaps kept) into a temporary file renamed over it.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pier.host.storage import qemuimg
from pier.host.storage.qemuimg import QemuImgError
from pier.host.storage.volume_md import BLANK_UUID, DESCRIPTION_SIZE, VolumeMetadata
from pier.host.storage.volumes import Volume, Volumes
from pier.rpc.errors import (
    DestinationVolumeTooSmall,
    GeneralStorageError,
    GenerationMismatch,
    InvalidParameterException,
    InvalidVolumeUpdate,
    PrepareIllegalVolume,
    SharedVolumeNonWritable,
    StorageUnsupportedOperation,
    TaskCancelled,
    VolumeCopyError,
    VolumeIsNotInChain,
    WrongParentVolume,
)

Progress = Callable[[int, str], None]
Step = Callable[[str, int, str], None]
MAX_GENERATION = 999  # VDSM's: the generation after 999 is 0
SPARSIFY_SUFFIX = ".pier-sparsify"
_STEP = re.compile(r"^gen=(\d+)$")
QCOW2_COMPATS = ("0.10", "1.1")


def next_generation(generation: int) -> int:
    return (generation + 1) % (MAX_GENERATION + 1)


def _no_step(name: str, percent: int, message: str) -> None:
    pass


def _no_progress(percent: int, message: str) -> None:
    pass


def _throttled(progress: Progress, message: str) -> Callable[[float], None]:
    """qemu-img's percent as task progress, a couple of records a second at most."""
    last = [0.0]

    def report(percent: float) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5:
            last[0] = now
            progress(min(99, int(percent)), f"{message}: {percent:.0f}%")
    return report


class StorageJobs:
    """The SDM jobs over the volumes of every domain under the data-center root."""

    def __init__(self, data_center: Path) -> None:
        self.volumes = Volumes(Path(data_center))

    # -- finding and checking -----------------------------------------------------------------

    def endpoint(self, info: dict[str, Any], field: str) -> Volume:
        """The volume a CopyDataEndpoint / CopyDataDIVEndpoint names (only `div` endpoints here)."""
        kind = info.get("endpoint_type", "div")
        if kind != "div":
            raise StorageUnsupportedOperation(f"{field}: endpoint_type {kind!r} is not supported; only 'div' "
                                              "(a volume of a storage domain)", data={"field": field})
        return self.volumes.volume(info["sd_id"], info["img_id"], info["vol_id"])

    @staticmethod
    def _check_generation(volume: Volume, meta: VolumeMetadata, expected: int | None) -> None:
        if expected is not None and meta.generation != expected:
            raise GenerationMismatch(
                f"The provided generation does not match the actual generation: volume {volume.vol} "
                f"requested={expected}, actual={meta.generation}",
                data={"volUUID": volume.vol, "requested": expected, "actual": meta.generation})

    def check_copy(self, source: dict[str, Any], destination: dict[str, Any], copy_bitmaps: bool) -> None:
        src, dst = self.endpoint(source, "source"), self.endpoint(destination, "destination")
        if src == dst:
            raise InvalidParameterException("destination: it is the source volume itself",
                                            data={"field": "destination"})
        src_meta, dst_meta = src.meta(), dst.meta()
        if src_meta.legality != "LEGAL":
            raise PrepareIllegalVolume(f"Cannot prepare illegal volume: source {src.vol} is {src_meta.legality}",
                                       data={"volUUID": src.vol})
        if dst_meta.voltype == "SHARED":
            raise SharedVolumeNonWritable(f"destination {dst.vol} is a shared (template) volume",
                                          data={"volUUID": dst.vol})
        if copy_bitmaps and "RAW" in (src_meta.format, dst_meta.format):
            raise StorageUnsupportedOperation("copy_bitmaps: cannot copy bitmaps from or to a volume in raw format",
                                              data={"field": "copy_bitmaps"})
        if dst_meta.capacity < src_meta.capacity:
            raise DestinationVolumeTooSmall(
                f"destination {dst.vol} holds {dst_meta.capacity} bytes, the source {src_meta.capacity}",
                data={"volUUID": dst.vol})
        self._check_generation(src, src_meta, source.get("generation"))
        self._check_generation(dst, dst_meta, destination.get("generation"))

    def subchain(self, info: dict[str, Any]) -> tuple[Volume, Volume]:
        """(base, top) of a SubchainInfo, refused as VDSM refuses them."""
        sd, img, base_id, top_id = info["sd_id"], info["img_id"], info["base_id"], info["top_id"]
        image_dir = self.volumes.image(sd, img)
        present = self.volumes.volume_ids(image_dir)
        for vol in (base_id, top_id):
            if vol not in present:
                raise VolumeIsNotInChain(f"Volume {vol} is not part of the chain of image {img} (domain {sd})",
                                         data={"volUUID": vol, "imgUUID": img, "sdUUID": sd})
        base, top = self.volumes.volume(sd, img, base_id), self.volumes.volume(sd, img, top_id)
        top_meta = top.meta()
        if top_meta.parent != base_id:
            raise WrongParentVolume(f"Wrong parent volume: {base_id} is not the parent of {top_id} "
                                    f"(its parent is {top_meta.parent})",
                                    data={"base_id": base_id, "top_id": top_id, "parent": top_meta.parent})
        for volume in (base, top):
            if volume.meta().voltype == "SHARED":
                raise SharedVolumeNonWritable(f"volume {volume.vol} is a shared (template) volume",
                                              data={"volUUID": volume.vol})
        self._check_generation(base, base.meta(), info.get("base_generation"))
        return base, top

    def check_update(self, vol_info: dict[str, Any], vol_attr: dict[str, Any]) -> None:
        volume = self.endpoint(vol_info, "vol_info")
        meta = volume.meta()
        self._check_generation(volume, meta, vol_info.get("generation"))
        if not any(vol_attr.get(key) is not None for key in ("legality", "description", "generation", "type")):
            raise InvalidParameterException("vol_attr: no attribute to change", data={"field": "vol_attr"})
        if vol_attr.get("type") is not None:
            if meta.voltype != "LEAF" or meta.parent != BLANK_UUID:
                raise InvalidVolumeUpdate(f"{meta.voltype} volume {volume.vol} with parent {meta.parent} cannot be "
                                          f"updated to {vol_attr['type']}: only a leaf without a parent can",
                                          data={"volUUID": volume.vol})
        if vol_attr.get("legality") is not None and vol_attr["legality"] == meta.legality:
            raise InvalidVolumeUpdate(f"{meta.legality} volume {volume.vol} cannot be updated to {meta.legality}",
                                      data={"volUUID": volume.vol})

    def qcow2_volume(self, vol_info: dict[str, Any], why: str) -> Volume:
        """A COW volume that is not shared, for amend and the bitmap jobs."""
        volume = self.endpoint(vol_info, "vol_info")
        meta = volume.meta()
        if meta.format != "COW":
            raise StorageUnsupportedOperation(f"vol_info: volume {volume.vol} is not in COW format: {why}",
                                              data={"field": "vol_info", "volUUID": volume.vol})
        if meta.voltype == "SHARED":
            raise SharedVolumeNonWritable(f"volume {volume.vol} is a shared (template) volume",
                                          data={"volUUID": volume.vol})
        self._check_generation(volume, meta, vol_info.get("generation"))
        return volume

    def check_bitmap(self, vol_info: dict[str, Any], name: str, *, adding: bool) -> None:
        volume = self.qcow2_volume(vol_info, "bitmaps live in qcow2 volumes")
        if adding:
            for layer in self.volumes.chain(volume):
                if layer.meta().format == "COW" and name in _names(layer.path):
                    raise InvalidParameterException(f"bitmap: volume {layer.vol} of the chain already has bitmap "
                                                    f"{name!r}", data={"field": "bitmap"})
        elif name not in _names(volume.path):
            raise InvalidParameterException(f"bitmap: volume {volume.vol} has no bitmap {name!r}",
                                            data={"field": "bitmap"})

    def check_sparsify(self, vol_info: dict[str, Any]) -> Volume:
        volume = self.endpoint(vol_info, "vol_info")
        meta = volume.meta()
        if meta.voltype != "LEAF":
            raise StorageUnsupportedOperation(f"Volume to be sparsified is not a leaf volume: {volume.vol} is "
                                              f"{meta.voltype}", data={"volUUID": volume.vol})
        self._check_generation(volume, meta, vol_info.get("generation"))
        return volume

    # -- the VDSM volume operation ------------------------------------------------------------

    @contextlib.contextmanager
    def _operation(self, volume: Volume, expected: int | None, *, set_illegal: bool,
                   step: Step) -> Iterator[VolumeMetadata]:
        """Check the generation, save the step `gen=<N>`, mark ILLEGAL when asked; on success write
        LEGAL (if it was marked) and the next generation in one metadata write. A failure leaves
        the metadata as it is (ILLEGAL when it was marked), as VDSM does."""
        meta = volume.meta()
        self._check_generation(volume, meta, expected)
        step(f"gen={meta.generation}", 1, f"working on volume {volume.vol} (generation {meta.generation})")
        if set_illegal:
            volume.write(meta.with_(legality="ILLEGAL"))
        yield meta
        now = volume.meta()
        volume.write(now.with_(legality="LEGAL" if set_illegal else now.legality,
                               generation=next_generation(meta.generation)))

    def reconcile(self, vol_info: dict[str, Any], step: str | None) -> bool:
        """After a restart: True when the interrupted job's final metadata write happened (the
        generation moved on from the one its step saved); else GeneralStorageError saying how the
        volume was left (ILLEGAL if the job had marked it), or False when it had not started."""
        volume = self.endpoint(vol_info, "vol_info")
        _remove(volume.image_dir / f".{volume.vol}{SPARSIFY_SUFFIX}")
        found = _STEP.match(step or "")
        if not found:
            return False
        meta = volume.meta()
        if meta.generation == next_generation(int(found.group(1))):
            return True
        raise GeneralStorageError(f"the agent stopped while this job ran; volume {volume.vol} is left "
                                  f"{meta.legality} at generation {meta.generation}",
                                  data={"volUUID": volume.vol, "legality": meta.legality})

    # -- the jobs -----------------------------------------------------------------------------

    def copy_data(self, source: dict[str, Any], destination: dict[str, Any], copy_bitmaps: bool = False, *,
                  step: Step = _no_step, progress: Progress = _no_progress,
                  cancelled: threading.Event | None = None) -> None:
        """Copy the source (through its chain) into the existing destination volume."""
        self.check_copy(source, destination, copy_bitmaps)
        src, dst = self.endpoint(source, "source"), self.endpoint(destination, "destination")
        src_meta, dst_meta = src.meta(), dst.meta()
        args = ["convert", "-p", "-t", "none", "-T", "none", "-f", qemuimg.fmt(src_meta.format),
                "-O", qemuimg.fmt(dst_meta.format), "-n"]
        if dst_meta.parent != BLANK_UUID:
            args += ["-B", str(dst.sibling(dst_meta.parent).path)]
        if copy_bitmaps:
            args += ["--bitmaps", "--skip-broken-bitmaps"]
        args += [str(src.path), str(dst.path)]
        with self._operation(dst, destination.get("generation"), set_illegal=True, step=step):
            self._tool(args, dst.image_dir, progress, cancelled, f"copying {src.vol} to {dst.vol}",
                       VolumeCopyError)

    def merge(self, subchain: dict[str, Any], merge_bitmaps: bool = False, *, step: Step = _no_step,
              progress: Progress = _no_progress, cancelled: threading.Event | None = None) -> None:
        """Commit top's data into its parent base (VDSM's SDM.merge; the chain is not rewired)."""
        base, top = self.subchain(subchain)
        top_meta = top.meta()
        with self._operation(base, subchain.get("base_generation"), set_illegal=False, step=step) as base_meta:
            self._tool(["commit", "-p", "-t", "none", "-b", str(base.path), "-f", qemuimg.fmt(top_meta.format),
                        str(top.path)], top.image_dir, progress, cancelled, f"merging {top.vol} into {base.vol}",
                       GeneralStorageError)
            if merge_bitmaps and base_meta.format == "COW" and top_meta.format == "COW":
                self._merge_bitmaps(base, top)

    def _merge_bitmaps(self, base: Volume, top: Volume) -> None:
        have = {b["name"] for b in qemuimg.bitmaps(base.path)}
        for found in qemuimg.bitmaps(top.path):
            if "in-use" in found.get("flags", []):
                continue  # an inconsistent bitmap: VDSM skips it too
            name = found["name"]
            try:
                if name not in have:
                    qemuimg.bitmap(base.path, "--add", "--enable", "-g", str(found["granularity"]), name)
                qemuimg.bitmap(base.path, "--merge", name, name, source=top.path)
            except QemuImgError as exc:
                raise GeneralStorageError(f"could not merge bitmap {name!r} into {base.vol}: {exc.stderr}") from None

    def update_volume(self, vol_info: dict[str, Any], vol_attr: dict[str, Any], *, step: Step = _no_step) -> None:
        """Change legality, description, type (to SHARED) or generation, in one metadata write."""
        self.check_update(vol_info, vol_attr)
        volume = self.endpoint(vol_info, "vol_info")
        meta = volume.meta()
        step(f"gen={meta.generation}", 1, f"updating volume {volume.vol}")
        changes: dict[str, Any] = {}
        if vol_attr.get("legality") is not None:
            changes["legality"] = vol_attr["legality"]
        if vol_attr.get("description") is not None:
            changes["description"] = vol_attr["description"].encode()[:DESCRIPTION_SIZE].decode(errors="ignore")
        if vol_attr.get("type") is not None:
            changes["voltype"] = vol_attr["type"]
        generation = vol_attr.get("generation")
        changes["generation"] = next_generation(meta.generation) if generation is None else generation
        volume.write(meta.with_(**changes))

    def amend_volume(self, vol_info: dict[str, Any], qcow2_attr: dict[str, Any], *, step: Step = _no_step) -> None:
        """Change a qcow2 volume's compat level (0.10 or 1.1)."""
        compat = qcow2_attr.get("compat")
        if compat not in QCOW2_COMPATS:
            raise InvalidParameterException(f"qcow2_attr.compat: {compat!r} is not one of {QCOW2_COMPATS}",
                                            data={"field": "qcow2_attr.compat"})
        volume = self.qcow2_volume(vol_info, "only qcow2 volumes can be amended")
        with self._operation(volume, vol_info.get("generation"), set_illegal=False, step=step):
            self._tool(["amend", "-p", "-f", "qcow2", "-o", f"compat={compat}", str(volume.path)],
                       volume.image_dir, _no_progress, None, f"amending {volume.vol}", GeneralStorageError)

    def sparsify_volume(self, vol_info: dict[str, Any], *, step: Step = _no_step, progress: Progress = _no_progress,
                        cancelled: threading.Event | None = None) -> None:
        """Free the volume's zeroed space: rewrite it with qemu-img convert, rename it in place."""
        volume = self.check_sparsify(vol_info)
        meta = volume.meta()
        temporary = volume.image_dir / f".{volume.vol}{SPARSIFY_SUFFIX}"
        args = ["convert", "-p", "-t", "none", "-T", "none", "-f", qemuimg.fmt(meta.format), "-O",
                qemuimg.fmt(meta.format)]
        if meta.format == "COW":
            args += ["-o", "compat=1.1", "--bitmaps", "--skip-broken-bitmaps"]
            if meta.parent != BLANK_UUID:
                parent_format = volume.sibling(meta.parent).meta().format
                args += ["-B", meta.parent, "-F", qemuimg.fmt(parent_format)]
        args += [str(volume.path), temporary.name]
        with self._operation(volume, vol_info.get("generation"), set_illegal=False, step=step):
            try:
                self._tool(args, volume.image_dir, progress, cancelled, f"sparsifying {volume.vol}",
                           GeneralStorageError)
                os.replace(temporary, volume.path)
            finally:
                _remove(temporary)

    def add_bitmap(self, vol_info: dict[str, Any], name: str, *, step: Step = _no_step) -> None:
        self.check_bitmap(vol_info, name, adding=True)
        volume = self.endpoint(vol_info, "vol_info")
        with self._operation(volume, vol_info.get("generation"), set_illegal=False, step=step):
            self._bitmap(volume, "--add", "--enable", name)

    def remove_bitmap(self, vol_info: dict[str, Any], name: str, *, step: Step = _no_step) -> None:
        self.check_bitmap(vol_info, name, adding=False)
        volume = self.endpoint(vol_info, "vol_info")
        with self._operation(volume, vol_info.get("generation"), set_illegal=False, step=step):
            self._bitmap(volume, "--remove", name)

    def clear_bitmaps(self, vol_info: dict[str, Any], *, step: Step = _no_step) -> None:
        """Remove every bitmap of the volume (VDSM's clear_bitmaps)."""
        volume = self.qcow2_volume(vol_info, "bitmaps live in qcow2 volumes")
        with self._operation(volume, vol_info.get("generation"), set_illegal=False, step=step):
            for name in _names(volume.path):
                self._bitmap(volume, "--remove", name)

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _bitmap(volume: Volume, *operation: str) -> None:
        try:
            qemuimg.bitmap(volume.path, *operation)
        except QemuImgError as exc:
            raise GeneralStorageError(f"qemu-img bitmap {operation[0]} on {volume.vol}: {exc.stderr}") from None

    @staticmethod
    def _tool(args: list[str], cwd: Path, progress: Progress, cancelled: threading.Event | None, what: str,
              error: type[GeneralStorageError] | type[VolumeCopyError]) -> None:
        try:
            qemuimg.run_with_progress(args, cwd=cwd, progress=_throttled(progress, what), cancelled=cancelled)
        except QemuImgError as exc:
            if cancelled is not None and cancelled.is_set():
                raise TaskCancelled(f"aborted while {what}") from None
            raise error(f"{what} failed: {exc.stderr}") from None


def _names(path: Path) -> list[str]:
    return [str(found["name"]) for found in qemuimg.bitmaps(path)]


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
