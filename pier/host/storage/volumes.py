"""Volumes of file domains, in VDSM's layout, made and changed through the real qemu-img.

A volume is `<domain>/images/<imgUUID>/<volUUID>` (raw or qcow2) with `<volUUID>.meta` and
`<volUUID>.lease` beside it. Crash safety: before a volume is made or removed, a marker file
`<volUUID>.pier-pending` is written and its metadata says ILLEGAL; the marker goes last. What a
crash leaves half-done is found by `remove_illegal_leftovers` and removed, as are image
directories an image delete renamed to VDSM's `_remove_me_<imgUUID>` and did not finish.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pier.host.storage import layout, qemuimg
from pier.host.storage import volume_md as md
from pier.host.storage.domain_md import fsync_dir
from pier.host.storage.qemuimg import QemuImgError
from pier.host.storage.volume_md import BLANK_UUID, VolumeMetadata
from pier.rpc.errors import (
    ImageDoesNotExistInSD,
    InvalidParameterException,
    MoveImageError,
    NoSpaceLeftOnDomain,
    StoragePoolUnknown,
    TaskCancelled,
    VolumeAlreadyExists,
    VolumeCannotGetParent,
    VolumeCreationError,
    VolumeDoesNotExist,
    VolumeImageHasChildren,
    VolumeMetadataReadError,
    VolumeResizeValueError,
    VolumeSizeError,
)

Progress = Callable[[int, str], None]
PENDING_EXT = ".pier-pending"
REMOVE_PREFIX = "_remove_me_"
LEASE_SIZE = 1024 * 1024  # a sanlock volume lease on 512-byte sectors; Pier itself holds none
ZERO_CHUNK = 8 * 1024 * 1024


def _no_progress(percent: int, message: str) -> None:
    pass


@dataclass(frozen=True)
class Volume:
    """Where one volume's files are."""

    domain: Path
    sd: str
    img: str
    vol: str

    @property
    def image_dir(self) -> Path:
        return layout.image_dir(self.domain, self.img)

    @property
    def path(self) -> Path:
        return layout.volume_path(self.domain, self.img, self.vol)

    @property
    def meta_path(self) -> Path:
        return layout.volume_meta_path(self.domain, self.img, self.vol)

    @property
    def lease_path(self) -> Path:
        return layout.volume_lease_path(self.domain, self.img, self.vol)

    @property
    def pending_path(self) -> Path:
        return self.image_dir / (self.vol + PENDING_EXT)

    def meta(self) -> VolumeMetadata:
        return md.read(self.meta_path)

    def write(self, meta: VolumeMetadata) -> None:
        md.write(self.meta_path, meta)

    def sibling(self, vol: str) -> Volume:
        return Volume(self.domain, self.sd, self.img, vol)

    def files(self) -> list[Path]:
        return [self.path, self.lease_path, self.meta_path, self.pending_path]


def parse_size(text: str | int, field: str) -> int:
    """Bytes from VDSM's decimal string; InvalidParameterException or VolumeSizeError naming `field`."""
    try:
        size = int(str(text).strip())
    except ValueError:
        raise InvalidParameterException(f"{field}: {text!r} is not a number of bytes",
                                        data={"field": field}) from None
    if size < 1:
        raise VolumeSizeError(f"{field}: {size} bytes; a volume needs at least 1", data={"field": field})
    return size


def free_space(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def domain_size(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_blocks * st.f_frsize


class Volumes:
    """The volumes of every domain under the data-center root."""

    def __init__(self, data_center: Path) -> None:
        self.data_center = Path(data_center)

    # -- finding ------------------------------------------------------------------------------

    def check_pool(self, sp: str) -> None:
        """StoragePoolUnknown unless pool `sp` is connected (the blank UUID names no pool)."""
        if sp == BLANK_UUID:
            return
        if not layout.pool_dir(self.data_center, sp).is_dir():
            raise StoragePoolUnknown(f"Unknown pool id, pool not connected: {sp}", data={"spUUID": sp})

    def domain(self, sd: str) -> Path:
        return layout.find_domain(self.data_center, sd)

    def image(self, sd: str, img: str) -> Path:
        """The image directory; ImageDoesNotExistInSD when the domain has no such image."""
        domain = self.domain(sd)
        directory = layout.image_dir(domain, img) if layout.is_uuid(img) else None
        if directory is None or not directory.is_dir():
            raise ImageDoesNotExistInSD(f"Image does not exist in domain: image={img}, domain={sd}",
                                        data={"imgUUID": img, "sdUUID": sd})
        return directory

    def volume(self, sd: str, img: str, vol: str) -> Volume:
        """An existing volume; VolumeDoesNotExist when its metadata is not there."""
        self.image(sd, img)
        found = Volume(self.domain(sd), sd, img, vol)
        if not layout.is_uuid(vol) or not found.meta_path.is_file():
            raise VolumeDoesNotExist(f"Volume does not exist: {vol} (image {img}, domain {sd})",
                                     data={"volUUID": vol, "imgUUID": img, "sdUUID": sd})
        return found

    def volume_ids(self, image_dir: Path) -> list[str]:
        """The volumes of an image directory, by their metadata files."""
        try:
            names = os.listdir(image_dir)
        except FileNotFoundError:
            return []
        return sorted(name[:-5] for name in names if name.endswith(layout.META_EXT) and layout.is_uuid(name[:-5]))

    def children(self, volume: Volume) -> list[str]:
        """The volumes of the same image whose parent is `volume`."""
        return [vol for vol in self.volume_ids(volume.image_dir)
                if vol != volume.vol and volume.sibling(vol).meta().parent == volume.vol]

    def chain(self, leaf: Volume) -> list[Volume]:
        """The chain from base to `leaf`, by the metadata's parents."""
        chain = [leaf]
        seen = {leaf.vol}
        parent = leaf.meta().parent
        while parent != BLANK_UUID:
            if parent in seen:
                raise VolumeCannotGetParent(f"volume {parent} is its own ancestor in image {leaf.img}")
            above = self.volume(leaf.sd, leaf.img, parent)
            chain.append(above)
            seen.add(parent)
            parent = above.meta().parent
        return chain[::-1]

    # -- making -------------------------------------------------------------------------------

    def create(self, sd: str, img: str, vol: str, size: str, volume_format: str, preallocate: str,
               disktype: str, description: str, parent_img: str, parent_vol: str, *,
               initial_size: str | None = None, legal: bool = True, sequence: int | None = None,
               progress: Progress = _no_progress) -> str:
        """Make a volume (a qcow2 layer over `parent_vol` when not blank); every check is done
        before anything is written, and a failure leaves nothing behind."""
        domain, target, parent, parent_meta, capacity = self._plan_create(
            sd, img, vol, size, volume_format, preallocate, parent_img, parent_vol, initial_size)
        meta = VolumeMetadata(
            domain=sd, image=img, parent=parent_vol if parent else BLANK_UUID, capacity=capacity,
            format=volume_format, type=preallocate, voltype="LEAF", disktype=disktype, description=description,
            legality="ILLEGAL", ctime=md.now(),
            sequence=sequence if sequence is not None else (parent_meta.sequence + 1 if parent_meta else 0))
        with self._making(target, meta) as finish:
            if preallocate == "PREALLOCATED":
                progress(10, f"allocating {capacity} bytes for volume {vol}")
            try:
                qemuimg.create(target.path, volume_format, capacity,
                               backing=parent.vol if parent else None,
                               backing_format=parent_meta.format if parent_meta else None,
                               preallocation="falloc" if preallocate == "PREALLOCATED" else None)
            except QemuImgError as exc:
                raise VolumeCreationError(f"qemu-img could not create volume {vol}: {exc.stderr}") from None
            if parent is not None and parent_meta is not None and parent_meta.voltype == "LEAF":
                parent.write(parent_meta.with_(voltype="INTERNAL"))
            finish(meta.with_(legality="LEGAL" if legal else "ILLEGAL"))
        return vol

    def check_create(self, sd: str, img: str, vol: str, size: str, volume_format: str, preallocate: str,
                     parent_img: str, parent_vol: str) -> None:
        """What `create` would refuse, refused now, with nothing written."""
        self._plan_create(sd, img, vol, size, volume_format, preallocate, parent_img, parent_vol, None)

    def _plan_create(self, sd: str, img: str, vol: str, size: str, volume_format: str, preallocate: str,
                     parent_img: str, parent_vol: str, initial_size: str | None
                     ) -> tuple[Path, Volume, Volume | None, VolumeMetadata | None, int]:
        capacity = parse_size(size, "size")
        if initial_size is not None:
            parse_size(initial_size, "initialSize")
        domain = self.domain(sd)
        target = Volume(domain, sd, img, vol)
        if target.meta_path.exists() or target.path.exists():
            raise VolumeAlreadyExists(f"Volume already exists: {vol} (image {img})", data={"volUUID": vol})
        parent: Volume | None = None
        parent_meta: VolumeMetadata | None = None
        if parent_vol != BLANK_UUID:
            if parent_img not in (img, BLANK_UUID):
                raise VolumeCannotGetParent(
                    f"parent volume {parent_vol} is in image {parent_img}, not image {img}: a snapshot layer's "
                    "parent must be in its own image", data={"field": "srcImgUUID"})
            parent = self.volume(sd, img, parent_vol)
            parent_meta = parent.meta()
            if volume_format != "COW":
                raise InvalidParameterException("volFormat: a layer over a parent volume must be COW (qcow2)",
                                                data={"field": "volFormat"})
            if capacity < parent_meta.capacity:
                raise InvalidParameterException(
                    f"size: {capacity} bytes is less than the parent's {parent_meta.capacity}", data={"field": "size"})
        self._check_space(domain, sd, capacity if preallocate == "PREALLOCATED" else 0, capacity)
        return domain, target, parent, parent_meta, capacity

    def check_copy(self, sd: str, img: str, vol: str, dst_sd: str, dst_img: str, dst_vol: str) -> None:
        self.volume(sd, img, vol)
        target = Volume(self.domain(dst_sd), dst_sd, dst_img, dst_vol)
        if target.meta_path.exists() or target.path.exists():
            raise VolumeAlreadyExists(f"Volume already exists: {dst_vol} (image {dst_img}, domain {dst_sd})",
                                      data={"volUUID": dst_vol})

    def check_delete(self, sd: str, img: str, vol: str) -> None:
        volume = self.volume(sd, img, vol)
        kids = self.children(volume)
        if kids:
            raise VolumeImageHasChildren(f"volume {vol} has children {', '.join(kids)}: delete them first",
                                         data={"volUUID": vol, "children": kids})

    def check_extend(self, sd: str, img: str, vol: str, new_size: str) -> None:
        size = parse_size(new_size, "newSize")
        capacity = self.volume(sd, img, vol).meta().capacity
        if size < capacity:
            raise VolumeResizeValueError(f"newSize: {size} bytes is less than the volume's {capacity}; "
                                         "volumes only grow", data={"field": "newSize"})

    def check_move(self, sd: str, img: str, dst_sd: str) -> None:
        self.image(sd, img)
        dst_domain = self.domain(dst_sd)
        if dst_sd == sd:
            raise InvalidParameterException("dstSdUUID: the image is already on that domain",
                                            data={"field": "dstSdUUID"})
        if layout.image_dir(dst_domain, img).exists():
            raise MoveImageError(f"image {img} already exists on domain {dst_sd}", data={"imgUUID": img})

    def volumes_of_any(self, sd: str, img: str) -> list[str]:
        """The volumes of an image, none when the image is not there."""
        return self.volume_ids(layout.image_dir(self.domain(sd), img))

    def _check_space(self, domain: Path, sd: str, needed: int, capacity: int) -> None:
        free = free_space(domain)
        if needed > free:
            raise NoSpaceLeftOnDomain(f"No space left on domain {sd}: {needed} bytes needed, {free} free",
                                      data={"sdUUID": sd, "needed": needed, "free": free})
        total = domain_size(domain)
        if capacity > total:
            raise NoSpaceLeftOnDomain(f"No space left on domain {sd}: a {capacity}-byte volume is larger than the "
                                      f"domain ({total} bytes)", data={"sdUUID": sd, "needed": capacity, "size": total})

    @contextlib.contextmanager
    def _making(self, target: Volume, meta: VolumeMetadata) -> Iterator[Callable[[VolumeMetadata], None]]:
        """Mark a volume being made (marker, ILLEGAL metadata, lease) and yield `finish(meta)`, which
        drops the marker and writes the final metadata durably (one fsync of the file, one of the
        directory, for both); on failure remove it all. Until `finish`, nothing is fsynced: what a
        crash leaves is a marker, or a data file without metadata, both removed at the next start."""
        created_dir = not target.image_dir.exists()
        target.image_dir.mkdir(parents=True, exist_ok=True)

        def finish(final: VolumeMetadata) -> None:
            target.pending_path.unlink()
            target.write(final)

        try:
            target.pending_path.touch()
            md.write(target.meta_path, meta.with_(legality="ILLEGAL"), durable=False)
            with open(target.lease_path, "wb") as lease:
                lease.truncate(LEASE_SIZE)
            yield finish
        except BaseException:
            remove_files(target)
            if created_dir:
                with contextlib.suppress(OSError):
                    target.image_dir.rmdir()
            raise

    def copy_into(self, source: Volume, target: Volume, meta: VolumeMetadata, *, backing: Volume | None = None,
                  progress: Progress = _no_progress, cancelled: threading.Event | None = None,
                  start: int = 0, span: int = 100, legality: str = "LEGAL") -> None:
        """Write `target` (new) from `source` with qemu-img convert; a layer over `backing` when given."""
        backing_meta = backing.meta() if backing else None
        with self._making(target, meta) as finish:
            reported = [0.0]

            def report(percent: float) -> None:
                now = time.monotonic()  # each report is a task record written: a few a second
                if now - reported[0] >= 0.5:
                    reported[0] = now
                    progress(start + int(percent * span / 100), f"copying {source.vol} to {target.sd}: {percent:.0f}%")
            try:
                qemuimg.convert(source.path, source.meta().format, target.path, meta.format,
                                backing=backing.vol if backing else None,
                                backing_format=backing_meta.format if backing_meta else None,
                                preallocation="falloc" if meta.type == "PREALLOCATED" else None,
                                progress=report, cancelled=cancelled)
            except QemuImgError as exc:
                if cancelled is not None and cancelled.is_set():
                    raise TaskCancelled("the copy was stopped") from None
                raise VolumeCreationError(f"qemu-img could not copy {source.vol}: {exc.stderr}") from None
            finish(meta.with_(legality=legality))

    # -- changing -----------------------------------------------------------------------------

    def extend(self, volume: Volume, new_size: str) -> None:
        self.check_extend(volume.sd, volume.img, volume.vol, new_size)
        size = parse_size(new_size, "newSize")
        meta = volume.meta()
        if size == meta.capacity:
            return
        self._check_space(volume.domain, volume.sd, size - meta.capacity if meta.type == "PREALLOCATED" else 0, size)
        try:
            qemuimg.resize(volume.path, meta.format, size)
        except QemuImgError as exc:
            raise VolumeResizeValueError(f"qemu-img could not resize {volume.vol}: {exc.stderr}") from None
        volume.write(meta.with_(capacity=size))

    def delete(self, volume: Volume, *, post_zero: bool = False, progress: Progress = _no_progress,
               cancelled: threading.Event | None = None) -> None:
        """Remove a volume without children; its parent becomes the leaf."""
        self.check_delete(volume.sd, volume.img, volume.vol)
        meta = volume.meta()
        volume.pending_path.touch()
        volume.write(meta.with_(legality="ILLEGAL"))
        if post_zero:
            zero(volume.path, progress, cancelled)
        if meta.parent != BLANK_UUID:
            parent = volume.sibling(meta.parent)
            with contextlib.suppress(OSError, VolumeMetadataReadError):
                if not [kid for kid in self.children(parent) if kid != volume.vol]:
                    parent.write(parent.meta().with_(voltype="LEAF"))
        remove_files(volume)
        with contextlib.suppress(OSError):
            volume.image_dir.rmdir()  # the image's last volume: nothing stays behind
        progress(100, f"volume {volume.vol} deleted")


def remove_files(volume: Volume) -> None:
    """Remove a volume's data, lease, metadata, then its marker; missing files are fine."""
    for path in volume.files():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    with contextlib.suppress(OSError):
        fsync_dir(volume.image_dir)


def zero(path: Path, progress: Progress, cancelled: threading.Event | None) -> None:
    """Overwrite a volume's file with zeros (postZero), reporting progress."""
    size = path.stat().st_size
    done = 0
    block = bytes(ZERO_CHUNK)
    with open(path, "r+b") as out:
        while done < size:
            if cancelled is not None and cancelled.is_set():
                raise TaskCancelled("zeroing was stopped")
            done += out.write(block[:min(ZERO_CHUNK, size - done)])
            progress(int(done * 90 / max(size, 1)), f"zeroing {path.name}: {done} of {size} bytes")
        out.flush()
        os.fsync(out.fileno())


def leftover_images(domain_dir: Path) -> list[str]:
    """The images in which an interrupted create, copy or delete left something that
    `remove_illegal_leftovers` removes."""
    images = layout.images_dir(domain_dir)
    try:
        entries = sorted(os.listdir(images))
    except FileNotFoundError:
        return []
    found = {name[len(REMOVE_PREFIX):] for name in entries if name.startswith(REMOVE_PREFIX)}
    found |= {name for name in entries if layout.is_uuid(name) and _half_volumes(images / name)}
    return sorted(found)


def _half_volumes(directory: Path) -> list[str]:
    """Volumes of an image directory with a pending marker, or data whose metadata a crash lost."""
    try:
        files = os.listdir(directory)
    except OSError:
        return []
    names = set(files)
    half = []
    for entry in files:
        if entry.endswith(PENDING_EXT):
            half.append(entry[:-len(PENDING_EXT)])
        elif layout.is_uuid(entry) and entry + layout.META_EXT not in names:
            half.append(entry)  # data whose metadata a crash lost before it was ever durable
    return sorted(set(half))


def remove_illegal_leftovers(domain_dir: Path, img: str | None = None) -> list[str]:
    """Remove what an interrupted create, copy or delete left in a domain (or one image of it):
    volumes with a pending marker, image directories renamed for removal. Returns what went."""
    images = layout.images_dir(domain_dir)
    removed: list[str] = []
    try:
        entries = sorted(os.listdir(images))
    except FileNotFoundError:
        return removed
    for name in entries:
        if name.startswith(REMOVE_PREFIX):
            if img is None or name == REMOVE_PREFIX + img:
                shutil.rmtree(images / name, ignore_errors=True)
                removed.append(name)
            continue
        if not layout.is_uuid(name) or (img is not None and name != img):
            continue
        directory = images / name
        for vol in _half_volumes(directory):
            remove_files(Volume(domain_dir, domain_dir.name, name, vol))
            removed.append(f"{name}/{vol}")
        with contextlib.suppress(OSError):
            if not os.listdir(directory):
                directory.rmdir()
    return removed
