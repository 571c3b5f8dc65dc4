"""ovirt-imageio as a child of pierd: its configuration, its certificate, its process, its control socket.

ovirt-imageio (PyPI, the daemon VDSM hands image tickets to) serves a volume's bytes over HTTPS to
whoever holds a ticket for it, with ranges, flush, zero, extents and checksums. `Imageio` owns one
such process: it writes a configuration directory of its own under pierd's state directory
(`<state>/imageio/conf.d/50-pier.conf`), gives it a TLS certificate, starts it, learns the remote
port it bound (the setting may be 0: an ephemeral port) from its log, and passes tickets on its
control unix socket (PUT/GET/PATCH/DELETE /tickets/<id>, as VDSM does). Its local service, a unix
socket serving the same /images/ API without TLS, is what pierd's own REST data route talks to.

The process is started on first use (`ensure_running`), started again if it died (its tickets die
with it, as they do under VDSM), and stopped by `stop` with SIGTERM, then SIGKILL after a grace.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pier.rpc.errors import ImageDaemonError, ImageTicketsError, NoSuchImageTicket

log = logging.getLogger("pier.imageio")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CONTROL_TIMEOUT = 30.0
REMOVE_TIMEOUT = 10  # seconds imageio waits for a ticket's requests to end before a removal is refused
_LISTENING = re.compile(r"remote\.service listening on \('([^']*)', (\d+)")
_READY = "Ready for requests"
_SUN_PATH_MAX = 100  # sockaddr_un holds 108 bytes; leave room


@dataclass(frozen=True)
class ImageioTls:
    """The certificate imageio serves, its key, and the CA a client trusts it by."""

    cert: str
    key: str
    ca: str


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket (imageio's control and local services)."""

    def __init__(self, path: str, timeout: float = CONTROL_TIMEOUT) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Imageio:
    """One ovirt-imageio process, owned by pierd."""

    def __init__(self, directory: Path, remote: tuple[str, int], tls: ImageioTls) -> None:
        self.directory = Path(directory)
        self.remote_host, self.remote_port_setting = remote
        self.tls = tls
        self.remote_port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._socket_dir = self.directory / "run"
        self._own_socket_dir = False

    # -- paths ------------------------------------------------------------------------------

    @property
    def conf_dir(self) -> Path:
        return self.directory

    @property
    def log_path(self) -> Path:
        return self.directory / "daemon.log"

    @property
    def control_socket(self) -> str:
        return str(self._socket_dir / "ctl.sock")

    @property
    def local_socket(self) -> str:
        return str(self._socket_dir / "local.sock")

    @property
    def url(self) -> str:
        """Where clients reach images: https://HOST:PORT/images/ (HOST as configured, '::' for any)."""
        host = self.remote_host
        shown = "localhost" if host in ("", "::", "0.0.0.0") else (f"[{host}]" if ":" in host else host)
        return f"https://{shown}:{self.remote_port}/images/"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # -- the process ------------------------------------------------------------------------

    def ensure_running(self) -> None:
        """Start imageio unless it runs; ImageTicketsError when it cannot be started."""
        with self._lock:
            if self.running:
                return
            if self._process is not None:
                log.warning("ovirt-imageio (pid %s) exited with %s; its tickets are gone; starting it again",
                            self._process.pid, self._process.returncode)
                self._process = None
            self._start()

    def _start(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._pick_socket_dir()
        for path in (self.control_socket, self.local_socket):
            Path(path).unlink(missing_ok=True)
        conf = self.directory / "conf.d"
        conf.mkdir(mode=0o700, exist_ok=True)
        (conf / "50-pier.conf").write_text(self._config())
        if self.log_path.exists():
            os.replace(self.log_path, self.log_path.with_suffix(".log.1"))
        started = time.monotonic()
        with open(self.log_path, "ab") as output:
            self._process = subprocess.Popen(
                [sys.executable, "-c", "from ovirt_imageio._internal import server; server.main()",
                 "--conf-dir", str(self.directory)],
                stdin=subprocess.DEVNULL, stdout=output, stderr=output, start_new_session=True)
        try:
            self.remote_port = self._wait_ready(started)
        except BaseException:
            self._kill()
            raise
        log.info("ovirt-imageio (pid %d) serves %s (certificate %s, CA %s); control socket %s, local socket %s, "
                 "started in %.2f s", self._process.pid, self.url, self.tls.cert, self.tls.ca, self.control_socket,
                 self.local_socket, time.monotonic() - started)

    def _pick_socket_dir(self) -> None:
        """Sockets under the state directory, or in a private temporary directory when that path
        is too long for a unix socket address."""
        if len(str(self.directory / "run" / "local.sock")) <= _SUN_PATH_MAX:
            self._socket_dir = self.directory / "run"
            self._socket_dir.mkdir(mode=0o700, exist_ok=True)
        else:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="pier-imageio-"))
            self._own_socket_dir = True

    def _config(self) -> str:
        logfile = str(self.log_path)
        return "\n".join([
            "# Written by pierd at each start of ovirt-imageio; changes here are lost.",
            "[daemon]", "drop_privileges = false", "systemd_enable = false", f"run_dir = {self._socket_dir}",
            "poll_interval = 0.2",  # how soon it notices SIGTERM (its default, 1 s, makes a stop take 2 s)
            "[tls]", "enable = true", f"cert_file = {self.tls.cert}", f"key_file = {self.tls.key}",
            f"ca_file = {self.tls.ca}",
            "[remote]", f"host = {self.remote_host}", f"port = {self.remote_port_setting}",
            "[local]", "enable = true", f"socket = {self.local_socket}",
            "[control]", "transport = unix", f"socket = {self.control_socket}", f"remove_timeout = {REMOVE_TIMEOUT}",
            "[profile]", f"filename = {self._socket_dir / 'profile'}",
            "[handlers]", "keys = logfile",
            "[logger_root]", "level = INFO",
            "[handler_logfile]", "keyword__class = logging.FileHandler", f"args = ({logfile!r},)", "kwargs = {}",
            "level = INFO", "",
        ])

    def _wait_ready(self, started: float) -> int:
        """The remote port, once imageio says it is ready; ImageTicketsError if it exits or stalls."""
        assert self._process is not None
        deadline = started + START_TIMEOUT
        while time.monotonic() < deadline:
            text = self._read_log()
            if _READY in text:
                match = _LISTENING.search(text)
                if match is None:
                    raise ImageTicketsError("ovirt-imageio is ready but did not say which port it listens on")
                return int(match.group(2))
            if self._process.poll() is not None:
                raise ImageTicketsError(f"ovirt-imageio exited with {self._process.returncode} at start: "
                                        f"{self._log_tail(text)}", data={"log": str(self.log_path)})
            time.sleep(0.02)
        raise ImageTicketsError(f"ovirt-imageio did not become ready within {START_TIMEOUT:.0f} s",
                                data={"log": str(self.log_path)})

    def _read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @staticmethod
    def _log_tail(text: str, lines: int = 5) -> str:
        return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM and wait; SIGKILL after STOP_TIMEOUT. Idempotent."""
        with self._lock:
            process = self._process
            if process is None:
                return
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    log.warning("ovirt-imageio (pid %d) did not stop within %.0f s: killed", process.pid,
                                STOP_TIMEOUT)
                    self._kill()
            log.info("ovirt-imageio (pid %d) stopped", process.pid)
            self._process = None
            self._remove_sockets()

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def _remove_sockets(self) -> None:
        if self._own_socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._own_socket_dir = False
        else:
            for path in (self.control_socket, self.local_socket):
                Path(path).unlink(missing_ok=True)

    # -- the control socket -----------------------------------------------------------------

    def control(self, method: str, ticket_id: str, body: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """One request to /tickets/<id>; the JSON answer (None when it has none).

        NoSuchImageTicket for a 404, ImageDaemonError for another refusal, ImageTicketsError when
        imageio cannot be reached."""
        self.ensure_running()
        payload = json.dumps(body).encode() if body is not None else None
        connection = UnixHTTPConnection(self.control_socket)
        try:
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            connection.request(method, f"/tickets/{ticket_id}", body=payload, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except OSError as exc:
            raise ImageTicketsError(f"cannot talk to ovirt-imageio on {self.control_socket}: {exc}") from None
        finally:
            connection.close()
        if response.status == 404:
            raise NoSuchImageTicket(f"no such image ticket: {ticket_id}", data={"uuid": ticket_id})
        if response.status >= 300:
            reason = data.decode(errors="replace").strip()
            raise ImageDaemonError(f"ovirt-imageio refused {method} /tickets/{ticket_id}: {response.status} {reason}",
                                   data={"status": response.status, "reason": reason})
        if not data:
            return None
        answer = json.loads(data)
        return answer if isinstance(answer, dict) else None
