"""The network configuration Pier keeps: the running one and the safe one.

A configuration is what setupNetworks was asked for, normalised: `{"networks": {name: attrs},
"bondings": {name: attrs}}`. The running configuration changes with every setupNetworks; the
safe one only with `Host.setSafeNetworkConfig`. Both are JSON files in the state directory
(`running.json`, `safe.json`), written to a temporary file and renamed, so a crash leaves the
old file or the new one, never half of one. Without a directory they live in memory (tests).
pierd is their only writer, so each file is read once and then served from memory.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

Config = dict[str, dict[str, dict[str, Any]]]


def empty() -> Config:
    return {"networks": {}, "bondings": {}}


class ConfigStore:
    """The running and the safe configuration, on disk when a directory is given."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self._dir = Path(directory) if directory is not None else None
        if self._dir is not None:
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._memory: dict[str, Config | None] = {"running": None, "safe": None}
        self._loaded: set[str] = set()

    def _path(self, which: str) -> Path | None:
        return self._dir / f"{which}.json" if self._dir is not None else None

    def _read(self, which: str) -> Config | None:
        path = self._path(which)
        if path is not None and which not in self._loaded:
            try:
                loaded = json.loads(path.read_text())
                self._memory[which] = {"networks": dict(loaded.get("networks", {})),
                                       "bondings": dict(loaded.get("bondings", {}))}
            except FileNotFoundError:
                self._memory[which] = None
            self._loaded.add(which)
        found = self._memory[which]
        return copy.deepcopy(found) if found is not None else None

    def _write(self, which: str, config: Config) -> None:
        self._memory[which] = copy.deepcopy(config)
        self._loaded.add(which)
        path = self._path(which)
        if path is None:
            return
        temporary = path.with_suffix(".tmp")
        with open(temporary, "w") as f:
            json.dump(config, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)

    def running(self) -> Config:
        """The running configuration (empty before the first setupNetworks)."""
        return self._read("running") or empty()

    def safe(self) -> Config | None:
        """The safe configuration, or None when none was ever saved."""
        return self._read("safe")

    def set_running(self, config: Config) -> None:
        self._write("running", config)

    def save(self) -> None:
        """The running configuration becomes the safe one."""
        self._write("safe", self.running())

    def dirty(self) -> bool:
        """Whether the running configuration differs from the safe one (no safe one: the empty one)."""
        return self.running() != (self.safe() or empty())
