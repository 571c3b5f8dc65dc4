"""Images and volumes as the verbs see them (pier.host.services.VolumeService): VDSM's answers
(VolumeInfo, VolumeSizeInfo, QemuImageInfo, the prepared image), image-wide work (delete, move,
clone, sync, reconcile) and the pool verbs on images.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from pier.host.storage import layout, ovf, qemuimg
from pier.host.storage.qemuimg import QemuImgError
from pier.host.storage.volume_md import BLANK_UUID
from pier.host.storage.volumes import (
    REMOVE_PREFIX,
    Progress,
    Volume,
    Volumes,
    _no_progress,
    leftover_images,
    remove_files,
    remove_illegal_leftovers,
    zero,
)
from pier.rpc.errors import (
    ImageIsNotLegalChain,
    ImageVerificationError,
    PierError,
    PrepareIllegalVolume,
    VolumeAlreadyExists,
    VolumeCopyError,
    VolumeMetadataReadError,
)


class VolumeStore(Volumes):
    """pier.host.services.VolumeService over the domains under one data-center root."""

    def __init__(self, data_center: Path) -> None:
        super().__init__(data_center)
        self._prepared: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()
        self._listings: dict[str, dict[str, tuple[int, list[str]]]] = {}  # images dir: {image: (mtime, vols)}

    # -- reading ------------------------------------------------------------------------------

    def volume_path(self, sd: str, img: str, vol: str) -> str:
        return str(self.volume(sd, img, vol).path)

    def info(self, sp: str, sd: str, img: str, vol: str) -> dict[str, Any]:
        """VDSM's VolumeInfo."""
        volume = self.volume(sd, img, vol)
        meta = volume.meta()
        sizes = _sizes(volume.path)
        status = "ILLEGAL" if meta.legality == "ILLEGAL" else "OK"
        if not volume.path.exists():
            status = "INVALID"
        return {
            "uuid": vol, "type": meta.type, "format": meta.format, "disktype": meta.disktype,
            "voltype": meta.voltype, "capacity": str(meta.capacity), "parent": meta.parent,
            "description": meta.description, "pool": sp if sp != BLANK_UUID else "", "domain": sd, "image": img,
            "ctime": str(meta.ctime), "mtime": "0", "legality": meta.legality, "status": status,
            "apparentsize": str(sizes["apparentsize"]), "truesize": str(sizes["truesize"]),
            "generation": meta.generation, "sequence": meta.sequence,
            "lease": {"path": str(volume.lease_path), "offset": 0, "owners": [], "version": None},
        }

    def size(self, sd: str, img: str, vol: str) -> dict[str, str]:
        sizes = _sizes(self.volume(sd, img, vol).path)
        return {key: str(value) for key, value in sizes.items()}

    def qemu_info(self, sd: str, img: str, vol: str) -> dict[str, Any]:
        """VDSM's QemuImageInfo, from qemu-img info."""
        volume = self.volume(sd, img, vol)
        try:
            found = qemuimg.info(volume.path, volume_format=volume.meta().format)
        except QemuImgError as exc:
            raise ImageVerificationError(f"qemu-img cannot read volume {vol}: {exc.stderr}") from None
        out: dict[str, Any] = {"format": found["format"], "virtualsize": found["virtual-size"]}
        if "cluster-size" in found:
            out["clustersize"] = found["cluster-size"]
        if "backing-filename" in found:
            out["backingfile"] = found["backing-filename"]
        compat = found.get("format-specific", {}).get("data", {}).get("compat")
        if compat:
            out["compat"] = compat
        return out

    def measure(self, sd: str, img: str, vol: str, dst_format: str, backing_chain: bool = True,
                base: str | None = None) -> dict[str, int]:
        volume = self.volume(sd, img, vol)
        if base is not None:
            self.volume(sd, img, base)
        try:
            return qemuimg.measure(volume.path, volume.meta().format, dst_format, chain=backing_chain)
        except QemuImgError as exc:
            raise ImageVerificationError(f"qemu-img cannot measure volume {vol}: {exc.stderr}") from None

    def volumes_of(self, sd: str, img: str) -> list[str]:
        """The volumes of an image (of the whole domain when `img` is the blank UUID)."""
        if img == BLANK_UUID:
            return self._domain_volumes(str(layout.images_dir(self.domain(sd))))
        return self.volume_ids(self.image(sd, img))

    def _domain_volumes(self, images: str) -> list[str]:
        """Every volume under `images`: each image directory is listed again only when its mtime
        changed (a stat costs about half a listing; 1000 images are 1000 of either). A listing
        taken within 50 ms of its directory's change is not kept: mtimes have a coarse tick."""
        out: list[str] = []
        try:
            names = sorted(os.listdir(images))
        except FileNotFoundError:
            return out
        kept = self._listings.get(images, {})
        fresh: dict[str, tuple[int, list[str]]] = {}
        settled = time.time_ns() - 50_000_000
        for name in names:
            if not layout.is_uuid(name):
                continue
            path = images + "/" + name
            try:
                mtime = os.stat(path).st_mtime_ns
            except FileNotFoundError:
                continue
            listing = kept.get(name)
            if listing is None or listing[0] != mtime:
                listing = (mtime, self.volume_ids(Path(path)))
            if mtime < settled:
                fresh[name] = listing
            out += listing[1]
        self._listings[images] = fresh
        return out

    def images_with(self, sp: str, img: str) -> list[str]:
        """The domains of pool `sp` that hold image `img`."""
        self.check_pool(sp)
        return sorted(sd for sd, domain in layout.pool_domain_links(self.data_center, sp).items()
                      if layout.image_dir(domain, img).is_dir())

    def chain_of(self, sd: str, img: str, vol: str) -> list[str]:
        """The volumes from the base to `vol`, by the metadata's parents."""
        return [v.vol for v in self.chain(self.volume(sd, img, vol))]

    def children_of(self, sd: str, img: str, vol: str) -> list[str]:
        return self.children(self.volume(sd, img, vol))

    def legality(self, sd: str, img: str, vol: str) -> str | None:
        """A volume's LEGALITY, or None when it is not there (for reconcilers)."""
        try:
            volume = self.volume(sd, img, vol)
            return None if volume.pending_path.exists() else volume.meta().legality
        except PierError:
            return None

    def remove_leftovers(self, sd: str, img: str | None = None) -> list[str]:
        """What an interrupted create, copy or delete left on domain `sd`, removed."""
        return remove_illegal_leftovers(self.domain(sd), img)

    def leftover_images(self, sd: str) -> list[str]:
        """The images of domain `sd` holding what `remove_leftovers` would remove."""
        return leftover_images(self.domain(sd))

    # -- changing one volume --------------------------------------------------------------------

    def set_description(self, sd: str, img: str, vol: str, description: str) -> None:
        volume = self.volume(sd, img, vol)
        volume.write(volume.meta().with_(description=description))

    def set_legality(self, sd: str, img: str, vol: str, legality: str) -> None:
        volume = self.volume(sd, img, vol)
        volume.write(volume.meta().with_(legality=legality))

    def extend_size(self, sd: str, img: str, vol: str, new_size: str) -> None:
        self.extend(self.volume(sd, img, vol), new_size)

    def record_capacity(self, sd: str, img: str, vol: str, size: int) -> None:
        """A running VM's QEMU grew the volume (VM.diskSizeExtend): its metadata says so too."""
        volume = self.volume(sd, img, vol)
        volume.write(volume.meta().with_(capacity=size))

    def delete_volume(self, sd: str, img: str, vol: str, post_zero: bool = False, progress: Progress = _no_progress,
                      cancelled: threading.Event | None = None) -> None:
        self.delete(self.volume(sd, img, vol), post_zero=post_zero, progress=progress, cancelled=cancelled)

    def verify_untrusted(self, sd: str, img: str, vol: str) -> None:
        """An image that came from outside: its format and backing file are what its metadata says."""
        volume = self.volume(sd, img, vol)
        meta = volume.meta()
        try:
            found = qemuimg.info(volume.path)  # qemu-img's own probe, not the metadata's word
        except QemuImgError as exc:
            raise ImageVerificationError(f"volume {vol} is not an image qemu-img reads: {exc.stderr}") from None
        expected = qemuimg.fmt(meta.format)
        if found["format"] != expected:
            raise ImageVerificationError(f"volume {vol} is {found['format']}, its metadata says {expected}")
        backing = found.get("backing-filename")
        if meta.parent == BLANK_UUID and backing:
            raise ImageVerificationError(f"volume {vol} has backing file {backing!r} but no parent")
        if meta.parent != BLANK_UUID and backing != meta.parent:
            raise ImageVerificationError(f"volume {vol}'s backing file is {backing!r}, not its parent {meta.parent}")
        if meta.format == "COW":
            try:
                qemuimg.check(volume.path, meta.format)
            except QemuImgError as exc:
                raise ImageVerificationError(f"volume {vol} is corrupt: {exc.stderr}") from None

    # -- images -------------------------------------------------------------------------------

    def prepare(self, sd: str, img: str, vol: str, allow_illegal: bool = False) -> dict[str, Any]:
        """What a VM's drive uses: the leaf's path and the chain base first (PreparedImageInfo)."""
        leaf = self.volume(sd, img, vol)
        chain = self.chain(leaf)
        for volume in chain:
            if volume.meta().legality == "ILLEGAL" and not allow_illegal:
                raise PrepareIllegalVolume(f"Cannot prepare illegal volume {volume.vol} of image {img}",
                                           data={"volUUID": volume.vol})
        with self._lock:
            self._prepared.add((sd, img, vol))
        path = str(leaf.path)
        return {
            "path": path, "info": {"type": "file", "path": path},
            "imgVolumesInfo": [{"domainID": sd, "imageID": img, "volumeID": v.vol, "path": str(v.path),
                                "leasePath": str(v.lease_path), "leaseOffset": 0} for v in chain],
        }

    def teardown(self, sd: str, img: str, vol: str | None = None) -> None:
        """A prepared image is no longer used; file domains have nothing to deactivate."""
        self.image(sd, img)
        with self._lock:
            for key in [k for k in self._prepared if k[:2] == (sd, img) and (vol is None or k[2] == vol)]:
                self._prepared.discard(key)

    def delete_image(self, sd: str, img: str, post_zero: bool = False, progress: Progress = _no_progress,
                     cancelled: threading.Event | None = None) -> None:
        """Rename the image directory to `_remove_me_<img>` (VDSM's garbage name), zero if asked, remove."""
        directory = self.image(sd, img)
        doomed = directory.with_name(REMOVE_PREFIX + img)
        os.rename(directory, doomed)
        if post_zero:
            volumes = self.volume_ids(doomed)
            for number, vol in enumerate(volumes):
                def report(percent: int, message: str, done: int = number) -> None:
                    progress(int((done * 100 + percent) / len(volumes) * 0.9), message)
                zero(doomed / vol, report, cancelled)
        shutil.rmtree(doomed)
        progress(100, f"image {img} deleted")

    def delete_volumes(self, sd: str, img: str, vols: list[str], post_zero: bool = False,
                       progress: Progress = _no_progress, cancelled: threading.Event | None = None) -> None:
        """Delete volumes of one image, children before their parents."""
        volumes = [self.volume(sd, img, vol) for vol in vols]
        order = {v.vol: len(self.chain(v)) for v in volumes}
        for volume in sorted(volumes, key=lambda v: -order[v.vol]):
            self.delete(volume, post_zero=post_zero, cancelled=cancelled)
        progress(100, f"{len(vols)} volumes deleted")

    def copy_volume(self, sd: str, img: str, vol: str, dst_sd: str, dst_img: str, dst_vol: str, description: str,
                    voltype: str, volume_format: str, preallocate: str, progress: Progress = _no_progress,
                    cancelled: threading.Event | None = None) -> str:
        """Volume.copy (VDSM's copyImage): the chain up to `vol`, collapsed into one new volume."""
        self.check_copy(sd, img, vol, dst_sd, dst_img, dst_vol)
        source = self.volume(sd, img, vol)
        meta = source.meta()
        target = Volume(self.domain(dst_sd), dst_sd, dst_img, dst_vol)
        needed = self._measure_or_zero(source, volume_format)
        self._check_space(target.domain, dst_sd, meta.capacity if preallocate == "PREALLOCATED" else needed,
                          meta.capacity)
        new = meta.with_(domain=dst_sd, image=dst_img, parent=BLANK_UUID, format=volume_format, type=preallocate,
                         voltype=voltype, description=description, legality="ILLEGAL", generation=0, sequence=0)
        try:
            self.copy_into(source, target, new, progress=progress, cancelled=cancelled)
        except VolumeAlreadyExists:
            raise
        except Exception as exc:
            if isinstance(exc, (VolumeMetadataReadError,)) or not hasattr(exc, "code"):
                raise VolumeCopyError(f"copying volume {vol} failed: {exc}") from exc
            raise
        return dst_vol

    def _measure_or_zero(self, source: Volume, volume_format: str) -> int:
        try:
            return qemuimg.measure(source.path, source.meta().format, volume_format)["required"]
        except QemuImgError:
            return 0

    def move(self, sd: str, img: str, dst_sd: str, *, remove_source: bool, structure_only: bool = False,
             post_zero: bool = False, progress: Progress = _no_progress,
             cancelled: threading.Event | None = None) -> None:
        """Image.move / cloneStructure: every volume of the image, with its chain, made in `dst_sd`
        (data too unless `structure_only`); the source removed after when `remove_source`."""
        self.check_move(sd, img, dst_sd)
        source_dir = self.image(sd, img)
        dst_domain = self.domain(dst_sd)
        volumes = self._ordered(sd, img, source_dir)
        needed = sum(self._measure_or_zero(v, v.meta().format) for v in volumes) if not structure_only else 0
        self._check_space(dst_domain, dst_sd, needed, 0)
        made: list[Volume] = []
        try:
            for number, source in enumerate(volumes):
                meta = source.meta()
                target = Volume(dst_domain, dst_sd, img, source.vol)
                backing = target.sibling(meta.parent) if meta.parent != BLANK_UUID else None
                if structure_only:
                    self.create(dst_sd, img, source.vol, str(meta.capacity), meta.format, meta.type, meta.disktype,
                                meta.description, img, meta.parent, sequence=meta.sequence)
                    target.write(target.meta().with_(voltype=meta.voltype, legality=meta.legality,
                                                     ctime=meta.ctime, generation=meta.generation))
                else:
                    self.copy_into(source, target, meta.with_(domain=dst_sd), backing=backing, progress=progress,
                                   cancelled=cancelled, start=number * 90 // len(volumes), span=90 // len(volumes),
                                   legality=meta.legality)
                made.append(target)
        except BaseException:
            shutil.rmtree(layout.image_dir(dst_domain, img), ignore_errors=True)
            raise
        if remove_source:
            self.delete_image(sd, img, post_zero, cancelled=cancelled)
        progress(100, f"image {img} {'moved' if remove_source else 'copied'} to {dst_sd}")

    def sync_data(self, sd: str, img: str, dst_sd: str, sync_type: str, progress: Progress = _no_progress,
                  cancelled: threading.Event | None = None) -> None:
        """Image.syncData: the data of an image's volumes (INTERNAL: all but the leaf, LEAF, ALL)
        written again into the same structure on `dst_sd` (made by cloneStructure)."""
        volumes = self._ordered(sd, img, self.image(sd, img))
        self.image(dst_sd, img)
        wanted = {"INTERNAL": [v for v in volumes if v.meta().voltype != "LEAF"],
                  "LEAF": [v for v in volumes if v.meta().voltype == "LEAF"]}.get(sync_type, volumes)
        for number, source in enumerate(wanted):
            target = self.volume(dst_sd, img, source.vol)
            meta = target.meta()
            backing = target.sibling(meta.parent) if meta.parent != BLANK_UUID else None
            remove_files(target)  # made again below; a failure leaves it absent, never half-written
            self.copy_into(source, target, meta, backing=backing, progress=progress, cancelled=cancelled,
                           start=number * 100 // max(len(wanted), 1), span=100 // max(len(wanted), 1))
        progress(100, f"{len(wanted)} volumes of image {img} synced to {dst_sd}")

    def _ordered(self, sd: str, img: str, directory: Path) -> list[Volume]:
        """The volumes of an image, parents before children."""
        volumes = [self.volume(sd, img, vol) for vol in self.volume_ids(directory)]
        depth = {v.vol: len(self.chain(v)) for v in volumes}
        return sorted(volumes, key=lambda v: depth[v.vol])

    def reconcile_chain(self, sd: str, img: str, leaf_vol: str) -> list[str]:
        """The chain qemu-img sees from the leaf, base first; the metadata made to agree with it,
        volumes of the image outside it marked ILLEGAL, and half-made volumes removed."""
        domain = self.domain(sd)
        remove_illegal_leftovers(domain, img)
        leaf = self.volume(sd, img, leaf_vol)
        try:
            found = qemuimg.info(leaf.path, chain=True)
        except QemuImgError as exc:
            raise ImageIsNotLegalChain(f"qemu-img cannot read the chain of {leaf_vol}: {exc.stderr}") from None
        chain = [Path(entry["filename"]).name for entry in found][::-1]
        for name in chain:
            if not layout.is_uuid(name) or not (leaf.image_dir / name).exists():
                raise ImageIsNotLegalChain(f"volume {leaf_vol}'s chain leaves image {img} at {name}")
        for index, vol in enumerate(chain):
            volume = leaf.sibling(vol)
            meta = volume.meta()
            parent = chain[index - 1] if index else BLANK_UUID
            voltype = "LEAF" if vol == leaf_vol else ("SHARED" if meta.voltype == "SHARED" else "INTERNAL")
            if (meta.parent, meta.voltype) != (parent, voltype):
                volume.write(meta.with_(parent=parent, voltype=voltype))
        for vol in self.volume_ids(leaf.image_dir):
            if vol not in chain:
                other = leaf.sibling(vol)
                meta = other.meta()
                if meta.legality != "ILLEGAL":
                    other.write(meta.with_(legality="ILLEGAL"))
        return chain

    def finalize_merge(self, sd: str, img: str, base: str, top: str) -> None:
        """After a cold merge of `top` into `base`: the child of top now stands on base, base takes
        top's place in the chain, top is ILLEGAL (the caller deletes it)."""
        base_volume = self.volume(sd, img, base)
        top_volume = self.volume(sd, img, top)
        top_meta = top_volume.meta()
        if top_meta.parent != base:
            raise ImageIsNotLegalChain(f"volume {top}'s parent is {top_meta.parent}, not {base}")
        for child in self.children(top_volume):
            child_volume = top_volume.sibling(child)
            child_meta = child_volume.meta()
            try:
                qemuimg.rebase_unsafe(child_volume.path, child_meta.format, base, base_volume.meta().format)
            except QemuImgError as exc:
                raise ImageIsNotLegalChain(f"could not rebase {child} on {base}: {exc.stderr}") from None
            child_volume.write(child_meta.with_(parent=base))
        base_volume.write(base_volume.meta().with_(voltype=top_meta.voltype, capacity=max(
            base_volume.meta().capacity, top_meta.capacity)))
        top_volume.write(top_meta.with_(legality="ILLEGAL"))


def _sizes(path: Path) -> dict[str, int]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return {"apparentsize": 0, "truesize": 0}
    return {"apparentsize": st.st_size, "truesize": st.st_blocks * 512}


class PoolImages(VolumeStore):
    """VolumeStore with the pool verbs that keep VMs' OVF descriptions (pier.host.storage.ovf)."""

    def _ovf_domain(self, sp: str, sd: str | None) -> Path:
        self.check_pool(sp)
        return ovf.ovf_domain(self.data_center, sp, sd, self.domain)

    def update_vms(self, sp: str, vms: list[dict[str, Any]], sd: str | None = None) -> None:
        ovf.update(self._ovf_domain(sp, sd), vms)

    def remove_vm(self, sp: str, vm: str, sd: str | None = None) -> None:
        ovf.remove(self._ovf_domain(sp, sd), vm)

    def backed_up_vms(self, sp: str, sd: str) -> list[str]:
        return ovf.listing(self._ovf_domain(sp, sd))

    def backed_up_vms_info(self, sp: str, sd: str, vms: list[str]) -> dict[str, str]:
        return ovf.info(self._ovf_domain(sp, sd), vms)
