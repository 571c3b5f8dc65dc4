"""The real qemu-img, for every image operation: create, info, convert (with progress), resize,
measure and check. Failures raise `QemuImgError` with qemu-img's own message; callers turn it into
the VDSM error of their verb.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

QEMU_IMG = "qemu-img"
_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


class QemuImgError(Exception):
    """qemu-img failed; `str()` is its command and message."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        self.cmd = list(args)
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(f"{' '.join(self.cmd[:2])} failed ({returncode}): {self.stderr}")


def _run(args: list[str], cwd: Path | None = None) -> str:
    done = subprocess.run([QEMU_IMG, *args], capture_output=True, text=True, cwd=cwd, check=False)
    if done.returncode != 0:
        raise QemuImgError([QEMU_IMG, *args], done.returncode, done.stderr or done.stdout)
    return done.stdout


def fmt(volume_format: str) -> str:
    """qemu-img's format name of a VDSM format (COW, RAW)."""
    return "qcow2" if volume_format == "COW" else "raw"


def create(path: Path, volume_format: str, size: int, *, backing: str | None = None,
           backing_format: str | None = None, preallocation: str | None = None) -> None:
    """Make image `path` of `size` bytes; a qcow2 with a backing file named relative to its directory."""
    options = []
    if volume_format == "COW":
        options.append("compat=1.1")
    if backing:
        options += [f"backing_file={backing}", f"backing_fmt={fmt(backing_format or 'COW')}"]
    if preallocation:
        options.append(f"preallocation={preallocation}")
    args = ["create", "-q", "-f", fmt(volume_format)]
    if options:
        args += ["-o", ",".join(options)]
    _run([*args, path.name, str(size)], cwd=path.parent)


def info(path: Path, *, chain: bool = False, volume_format: str | None = None) -> Any:
    """`qemu-img info --output json` (a list top first with `chain`); -U: a running VM may hold it."""
    args = ["info", "--output", "json", "-U"]
    if volume_format:
        args += ["-f", fmt(volume_format)]
    if chain:
        args.append("--backing-chain")
    return json.loads(_run([*args, str(path)]))


def resize(path: Path, volume_format: str, size: int) -> None:
    _run(["resize", "-q", "-f", fmt(volume_format), str(path), str(size)])


def rebase_unsafe(path: Path, volume_format: str, backing: str, backing_format: str) -> None:
    """Point a qcow2 at another backing file (relative to its directory) without copying data."""
    _run(["rebase", "-u", "-f", fmt(volume_format), "-b", backing, "-F", fmt(backing_format), path.name],
         cwd=path.parent)


def measure(path: Path, volume_format: str, target_format: str, *, chain: bool = True) -> dict[str, int]:
    """`qemu-img measure`: bytes the image needs as `target_format` (the top layer alone unless `chain`)."""
    source = str(path)
    if not chain and volume_format == "COW":
        source = "json:" + json.dumps({"driver": "qcow2", "backing": None,
                                       "file": {"driver": "file", "filename": str(path)}})
        args = ["measure", "--output", "json", "-O", fmt(target_format), source]
    else:
        args = ["measure", "--output", "json", "-f", fmt(volume_format), "-O", fmt(target_format), source]
    out = json.loads(_run(args))
    return {"required": int(out["required"]), "fully-allocated": int(out["fully-allocated"])}


def check(path: Path, volume_format: str) -> dict[str, Any]:
    """`qemu-img check` of a qcow2 (raw has nothing to check)."""
    if volume_format != "COW":
        return {}
    done = subprocess.run([QEMU_IMG, "check", "--output", "json", "-f", "qcow2", str(path)],
                          capture_output=True, text=True, check=False)
    if done.returncode not in (0, 3):  # 3: leaked clusters only, which lose no data
        raise QemuImgError([QEMU_IMG, "check"], done.returncode, done.stderr or done.stdout)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def convert(source: Path, source_format: str, target: Path, target_format: str, *,
            backing: str | None = None, backing_format: str | None = None, preallocation: str | None = None,
            progress: Callable[[float], None] | None = None, cancelled: threading.Event | None = None) -> None:
    """Copy `source` (with its backing chain) into `target`, which qemu-img makes.

    With `backing`, the target gets that backing file (relative to its directory) and holds only
    what differs from it. `progress(percent)` follows qemu-img's `-p` output; `cancelled` stops
    qemu-img (QemuImgError then)."""
    args = ["convert", "-p", "-t", "none", "-T", "none", "-f", fmt(source_format), "-O", fmt(target_format)]
    options = ["compat=1.1"] if target_format == "COW" else []
    if preallocation:
        options.append(f"preallocation={preallocation}")
    if options:
        args += ["-o", ",".join(options)]
    if backing:
        args += ["-B", backing, "-F", fmt(backing_format or "COW")]
    run_with_progress([*args, str(source), target.name], cwd=target.parent, progress=progress, cancelled=cancelled)


def _kill_when(process: subprocess.Popen[bytes], cancelled: threading.Event) -> None:
    while process.poll() is None:
        if cancelled.wait(0.2):
            process.terminate()
            return


def run_with_progress(args: list[str], *, cwd: Path | None = None, progress: Callable[[float], None] | None = None,
                      cancelled: threading.Event | None = None) -> None:
    """Run `qemu-img <args>` (a command given `-p`), following its progress; `cancelled` stops it
    (QemuImgError then), as `convert` does for the storage jobs' convert, commit and friends."""
    command = [QEMU_IMG, *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)
    assert process.stdout is not None and process.stderr is not None
    stop = threading.Thread(target=_kill_when, args=(process, cancelled), daemon=True) if cancelled else None
    if stop:
        stop.start()
    buffer = b""
    while chunk := process.stdout.read1(4096):  # type: ignore[attr-defined]  # a BufferedReader
        buffer = (buffer + chunk)[-256:]
        found = _PROGRESS.findall(buffer)
        if found and progress:
            progress(float(found[-1]))
            buffer = b""
    stderr = process.stderr.read().decode(errors="replace")
    returncode = process.wait()
    if returncode != 0:
        raise QemuImgError(command, returncode, stderr or "killed")


def bitmaps(path: Path) -> list[dict[str, Any]]:
    """The persistent dirty bitmaps of one qcow2 file (name, granularity, flags); none for raw."""
    found = info(path).get("format-specific", {}).get("data", {}).get("bitmaps", [])
    return list(found)


def bitmap(path: Path, *operations: str, source: Path | None = None) -> None:
    """`qemu-img bitmap` on a qcow2: e.g. bitmap(path, "--add", "--enable", name)."""
    *options, name = operations
    args = ["bitmap", *options, "-f", "qcow2"]
    if source is not None:
        args += ["-b", str(source), "-F", "qcow2"]
    _run([*args, str(path), name])
