"""KSM (kernel same-page merging) tuning: writes the kernel's knobs under <sysfs>/kernel/mm/ksm/.

`Ksm` takes the sysfs root, so tests can point it at a directory of their own. A change is all or
nothing: the knobs' values are read first, and when one write fails the ones already written get
their old values back. A knob that cannot be written (a read-only sysfs, a kernel without KSM, a
value the kernel refuses) is a KsmError naming the file and what the kernel said.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Mapping
from pathlib import Path

from pier.rpc.errors import KsmError

log = logging.getLogger(__name__)

# The knobs VDSM's KsmTuneParams name, in the order they are written: merge_across_nodes first,
# since the kernel refuses to change it while pages are merged, and run last, so that KSM starts
# with the new rate rather than before it.
KNOBS = ("merge_across_nodes", "pages_to_scan", "sleep_millisecs", "run")


class Ksm:
    """Implements `pier.host.services.KsmService` over <sysfs_root>/kernel/mm/ksm."""

    def __init__(self, sysfs_root: str | Path = "/sys") -> None:
        self.directory = Path(sysfs_root) / "kernel" / "mm" / "ksm"

    def read(self) -> dict[str, int]:
        """The current value of each knob this kernel has."""
        values = {}
        for knob in KNOBS:
            try:
                values[knob] = int((self.directory / knob).read_text().strip())
            except (OSError, ValueError):
                continue
        return values

    def tune(self, params: Mapping[str, int]) -> None:
        """Write the knobs in `params` (names from KNOBS); the others keep their values."""
        wanted = [(knob, int(params[knob])) for knob in KNOBS if knob in params]
        unknown = sorted(set(params) - set(KNOBS))
        if unknown:
            raise KsmError(f"unknown KSM knob(s) {', '.join(unknown)}; known: {', '.join(KNOBS)}",
                           data={"knobs": unknown})
        before = {knob: self._read(knob) for knob, _ in wanted}
        written: list[str] = []
        try:
            for knob, value in wanted:
                if before[knob] != value:
                    self._write(knob, value)
                    written.append(knob)
        except KsmError:
            for knob in reversed(written):
                try:
                    self._write(knob, before[knob])
                except KsmError as exc:
                    log.error("could not give KSM knob %s its old value %s back: %s", knob, before[knob], exc)
            raise
        if written:
            log.info("KSM tuned: %s", ", ".join(f"{knob}={value}" for knob, value in wanted if knob in written))

    def _read(self, knob: str) -> int:
        path = self.directory / knob
        try:
            return int(path.read_text().strip())
        except FileNotFoundError:
            raise KsmError(f"cannot tune KSM: {path} does not exist (a kernel without KSM?)",
                           data={"file": str(path)}) from None
        except (OSError, ValueError) as exc:
            raise KsmError(f"cannot read {path}: {exc}", data={"file": str(path)}) from None

    def _write(self, knob: str, value: int) -> None:
        path = self.directory / knob
        try:
            with open(path, "w") as stream:
                stream.write(f"{value}\n")
        except OSError as exc:
            reason = {
                errno.EROFS: "the file system is read-only (is /sys mounted read-only, as in a container?)",
                errno.EACCES: "permission denied",
                errno.EPERM: "permission denied",
                errno.EBUSY: "the kernel refuses while pages are merged; unmerge them first (run: 2)",
                errno.EINVAL: "the kernel refuses this value",
            }.get(exc.errno or 0, exc.strerror or str(exc))
            raise KsmError(f"cannot write {value} to {path}: {reason}",
                           data={"file": str(path), "knob": knob, "errno": exc.errno}) from None
