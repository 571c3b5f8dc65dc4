"""NBD exports of volumes (VDSM's NBD.start_server / NBD.stop_server) by the real qemu-nbd.

`NbdServers` owns every qemu-nbd it starts: one child process per server id, serving one volume
(or its whole chain, as qcow2 sees it) on the unix socket `<run dir>/<server id>.sock`, read-only
or writable, optionally with a dirty bitmap exported for incremental backup (`qemu-nbd -B`).
`stop_server` ends one, `stop` (at agent shutdown) ends them all. The command is VDSM's: shared by
up to 8 clients, an empty export name (so the URL is `nbd:unix:<socket>`), no host page cache.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pier.host.storage import qemuimg
from pier.host.storage.volumes import Volume, Volumes
from pier.rpc.errors import (
    GeneralStorageError,
    InvalidParameterException,
    SharedVolumeNonWritable,
    StorageUnsupportedOperation,
    TargetBusy,
)

log = logging.getLogger("pier.nbd")

QEMU_NBD = "qemu-nbd"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
SOCKET_PATH_MAX = 107  # sockaddr_un's sun_path, less its terminating NUL


@dataclass
class _Server:
    process: subprocess.Popen[bytes]
    socket: Path
    log_path: Path
    volume: Volume


class NbdServers:
    """The qemu-nbd servers this agent runs; the one owner that starts and stops them."""

    def __init__(self, run_dir: Path, data_center: Path) -> None:
        self.run_dir = Path(run_dir)
        self.volumes = Volumes(Path(data_center))
        self._servers: dict[str, _Server] = {}
        self._lock = threading.Lock()

    def socket_path(self, server_id: str) -> Path:
        return self.run_dir / f"{server_id}.sock"

    def check(self, server_id: str, config: dict[str, Any]) -> Volume:
        """The volume `config` names, with VDSM's refusals; nothing is started."""
        readonly, bitmap = bool(config.get("readonly", False)), config.get("bitmap")
        if bitmap and not config.get("backing_chain", True):
            raise StorageUnsupportedOperation("config.bitmap: cannot export a bitmap with backing_chain=False",
                                              data={"field": "config.bitmap"})
        if bitmap and not readonly:
            raise StorageUnsupportedOperation("config.bitmap: cannot export a bitmap for writing (set readonly)",
                                              data={"field": "config.bitmap"})
        volume = self.volumes.volume(config["sd_id"], config["img_id"], config["vol_id"])
        meta = volume.meta()
        if meta.voltype == "SHARED" and not readonly:
            raise SharedVolumeNonWritable(f"volume {volume.vol} is a shared (template) volume: export it readonly",
                                          data={"volUUID": volume.vol})
        if bitmap:
            if meta.format != "COW":
                raise StorageUnsupportedOperation("config.bitmap: cannot export a bitmap of a raw volume",
                                                  data={"field": "config.bitmap"})
            if bitmap not in [found["name"] for found in qemuimg.bitmaps(volume.path)]:
                raise InvalidParameterException(f"config.bitmap: volume {volume.vol} has no bitmap {bitmap}",
                                                data={"field": "config.bitmap"})
        socket = self.socket_path(server_id)
        if len(os.fsencode(socket)) > SOCKET_PATH_MAX:
            raise GeneralStorageError(f"NBD socket path {socket} is longer than a unix socket allows")
        with self._lock:
            if server_id in self._servers:
                raise TargetBusy(f"NBD server {server_id} is already running; stop it first",
                                 data={"server_id": server_id})
        return volume

    def start_server(self, server_id: str, config: dict[str, Any]) -> str:
        """Start qemu-nbd for `config` (NBDServerConfig); the URL a client connects to."""
        volume = self.check(server_id, config)
        meta = volume.meta()
        self.run_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        socket, log_path = self.socket_path(server_id), self.run_dir / f"{server_id}.log"
        with contextlib.suppress(FileNotFoundError):
            socket.unlink()  # left by an agent that did not stop cleanly
        image: dict[str, Any] = {"driver": qemuimg.fmt(meta.format),
                                 "file": {"driver": "file", "filename": str(volume.path)}}
        if meta.format == "COW" and not config.get("backing_chain", True):
            image["backing"] = None
        args = [QEMU_NBD, "--socket", str(socket), "--persistent", "--shared=8", "--export-name=",
                "--cache=none", "--aio=native"]
        if config.get("readonly", False):
            args.append("--read-only")
        elif config.get("discard", False):
            args.append("--discard=unmap")
        if config.get("detect_zeroes", False):
            args.append("--detect-zeroes=" + ("unmap" if config.get("discard") and not config.get("readonly")
                                              else "on"))
        if config.get("bitmap"):
            args.append(f"--bitmap={config['bitmap']}")
        args.append("json:" + json.dumps(image))
        with open(log_path, "wb") as errors:
            process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                                       start_new_session=True)
        server = _Server(process, socket, log_path, volume)
        with self._lock:
            if server_id in self._servers:  # another call won the race
                self._end(server)
                raise TargetBusy(f"NBD server {server_id} is already running", data={"server_id": server_id})
            self._servers[server_id] = server
        deadline = time.monotonic() + START_TIMEOUT
        while not socket.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                with self._lock:
                    self._servers.pop(server_id, None)
                message = self._end(server)
                raise GeneralStorageError(f"qemu-nbd did not start for volume {volume.vol}: {message or 'timeout'}")
            time.sleep(0.02)
        os.chmod(socket, 0o660)
        log.info("NBD server %s serves volume %s (pid %d) on %s", server_id, volume.vol, process.pid, socket)
        return f"nbd:unix:{socket}"

    def stop_server(self, server_id: str) -> None:
        """Stop one server; one that is not running is fine (as VDSM answers)."""
        with self._lock:
            server = self._servers.pop(server_id, None)
        if server is None:
            log.info("NBD server %s is not running", server_id)
            return
        self._end(server)
        log.info("NBD server %s stopped", server_id)

    def running(self) -> list[str]:
        with self._lock:
            return [server_id for server_id, server in self._servers.items() if server.process.poll() is None]

    def stop(self) -> None:
        """Stop every server (the agent is stopping)."""
        with self._lock:
            servers, self._servers = list(self._servers.items()), {}
        for server_id, server in servers:
            self._end(server)
            log.info("NBD server %s stopped at shutdown", server_id)

    @staticmethod
    def _end(server: _Server) -> str:
        """Terminate (then kill) qemu-nbd, remove its socket and log; what it had logged."""
        if server.process.poll() is None:
            server.process.terminate()
            try:
                server.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()
        message = ""
        with contextlib.suppress(OSError):
            message = server.log_path.read_text(errors="replace").strip()
        for path in (server.socket, server.log_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return message


def nbd_run_dir(state_dir: str) -> Path:
    """Where the sockets go: /run/pier/nbd for root (VDSM's /run/vdsm/nbd; short enough for a unix
    socket's path), else `<state dir>/nbd`."""
    return Path("/run/pier/nbd") if os.geteuid() == 0 else Path(state_dir) / "nbd"
