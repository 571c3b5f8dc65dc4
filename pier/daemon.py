"""`pierd`: reads its settings, builds the parts, starts them in order and stops them in reverse.

Order of start: the event log, the libvirt node (its threads), the task manager (reconciling what
a previous run left), the registry, then the listeners (HTTP, WebSocket, VDSM's STOMP dialect when
asked for, and the broker link when a broker is configured). Stop runs backwards: listeners first (so no call arrives at a part that is gone),
then tasks, ovirt-imageio (a child started on the first image ticket), the node, and the event log. SIGTERM and SIGINT stop it cleanly.
"""

from __future__ import annotations

import functools
import logging
import resource
import signal
import sys
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from prometheus_client import make_wsgi_app

from pier.api import Services, handlers
from pier.config import Settings, load_settings, parse_address
from pier.facade.app import make_app
from pier.host.backup import backup_run_dir
from pier.host.node import Node
from pier.host.peer import PeerCredentials
from pier.host.storage.imageio import Imageio, ImageioTls
from pier.host.storage.jobs import StorageJobs
from pier.host.storage.nbd import NbdServers, nbd_run_dir
from pier.host.storage.sharing import ImageSharing
from pier.host.storage.transfer import ImageTransfers
from pier.host.storage.volumes import Volumes
from pier.host.testdriver import make_test_uri, unusable_reason
from pier.rpc.audit import AuditLog
from pier.rpc.auth import Authenticator, Credentials
from pier.rpc.events import EventLog
from pier.rpc.jsonrpc import JsonRpc
from pier.rpc.limits import FailedLogins, RateLimiter
from pier.rpc.logcontrol import quiet_wire_loggers
from pier.rpc.metrics import METRICS, gauge
from pier.rpc.registry import Registry
from pier.rpc.schema import Schema
from pier.rpc.store import private_directory
from pier.rpc.tasks import TaskManager
from pier.transports.http import HttpListener, identified_only, jsonrpc_app
from pier.transports.stomp import StompListener, StompOptions
from pier.transports.tls import CertificateState, ServerTls
from pier.transports.vdsm_stomp import VdsmStompListener
from pier.transports.websocket import WebSocketListener
from pier.transports.xmlrpc import xmlrpc_app

log = logging.getLogger("pier.daemon")

SYSTEM_URI = "qemu:///system"


@functools.cache
def agent_version() -> str:
    """The installed version (read once: importlib.metadata scans every installed package)."""
    try:
        return version("pier-agent")
    except PackageNotFoundError:
        return "0+unknown"


def resolve_libvirt_uri(settings: Settings) -> str:
    """The URI to use: the configured one, or for 'auto' qemu:///system or the test driver."""
    if settings.libvirt_uri != "auto":
        return settings.libvirt_uri
    reason = unusable_reason(SYSTEM_URI)
    if reason is None:
        return SYSTEM_URI
    uri = make_test_uri(Path(settings.state_dir) / "testnode.xml")
    log.warning("libvirtd is not reachable at %s (%s): using libvirt's embedded test driver %s; "
                "VMs created now are simulated, not real. Start libvirtd and restart pierd for real VMs.",
                SYSTEM_URI, reason, uri)
    return uri


class Daemon:
    """Every part of a running pierd, with `start()` and `stop()`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started_at = time.time()
        self.stopping = threading.Event()
        self.events: EventLog | None = None
        self.node: Node | None = None
        self.tasks: TaskManager | None = None
        self.nbd: NbdServers | None = None
        self.registry: Registry | None = None
        self.credentials: Credentials | None = None
        self.audit: AuditLog | None = None
        self.transfers: ImageTransfers | None = None
        self.tls: ServerTls | None = None
        self.listeners: dict[str, Any] = {}
        self._facts: dict[str, Any] = {}  # what `about` says that does not change while pierd runs

    def start(self) -> None:
        settings = self.settings
        log.debug("settings: %s", settings)
        private_directory(settings.state_dir, "state directory")
        db = str(Path(settings.state_dir) / "pier.db")
        self.events = EventLog(db, retention=settings.event_retention, max_events=settings.max_events)
        self.credentials = Credentials(db)
        self.audit = AuditLog(db, retention=settings.audit_retention_days * 86400)
        self.tls = self._server_tls(self.credentials)
        self.node = Node(resolve_libvirt_uri(settings), self.events.publish,
                         stats_interval=settings.stats_interval, slow_stats_interval=settings.slow_stats_interval,
                         last_events=self.events.latest, network_dir=Path(settings.state_dir) / "network",
                         manage_network=settings.manage_network, hotunplug_timeout=settings.hotunplug_timeout,
                         data_center=settings.data_center,
                         storage_monitor_interval=settings.storage_monitor_interval,
                         peer_credentials=peer_credentials(settings),
                         migration_uri=settings.migration_libvirt_uri, backup_dir=backup_run_dir(settings.state_dir))
        self.node.start()
        self.tasks = TaskManager(db, self.events.publish, workers=settings.task_workers)
        self.nbd = NbdServers(nbd_run_dir(settings.state_dir), Path(settings.data_center))
        limiter = RateLimiter(settings.rate_limit, settings.rate_burst) if settings.rate_limit > 0 else None
        schema = Schema.load()
        self.transfers = self._transfers(self.node.volumes)
        services = Services(self.node.host, self.node.vms, self.tasks, self.events, self.credentials, self.audit,
                            self.about, self.node.network, ksm=self.node.ksm, lldp=self.node.lldp,
                            hostdevs=self.node.hostdevs, secrets=self.node.secrets, domain_xmls=self.node.domain_xmls,
                            guest=self.node.guest, consoles=self.node.consoles,
                            vm_devices=self.node.vm_devices, storage=self.node.storage,
                            volumes=self.node.volumes, block_devices=self.node.block_devices,
                            jobs=StorageJobs(Path(settings.data_center)), nbd=self.nbd, transfers=self.transfers,
                            sharing=ImageSharing(self.node.volumes), migrations=self.node.migrations,
                            snapshots=self.node.snapshots, backups=self.node.backups, memory=self.node.memory)
        self.registry = Registry(schema, handlers(services, schema.verbs),
                                 self.tasks, audit=self.audit, limiter=limiter, credentials=self.credentials)
        self.tasks.start(self.registry.reconcilers)
        self._start_listeners(JsonRpc(self.registry), db)
        self._facts = {"name": "pier", "version": agent_version(), "hostId": self.node.host.uuid(),
                       "libvirtUri": self.node.uri,
                       "transports": {name: listener.address for name, listener in self.listeners.items()},
                       "verbs": len(self.registry.verbs)}
        log.info("pierd %s ready in %.2f s: %d verbs, libvirt %s, state in %s", agent_version(),
                 time.time() - self.started_at, len(self.registry.verbs), self.node.uri, settings.state_dir)

    def _server_tls(self, credentials: Credentials) -> ServerTls | None:
        """The TCP listeners' TLS, from the configured files or those made at the first start."""
        settings = self.settings
        if settings.insecure_loopback:
            log.warning("--insecure-loopback: TCP listeners speak plain text on loopback; callers still need "
                        "a token (or the local socket)")
            return None
        if settings.tls_cert:
            cert, key, ca = settings.tls_cert, settings.tls_key, settings.tls_ca
        else:
            from pier.tlsfiles import TlsFiles, init_tls  # cryptography: 13 MB, only when certificates are made

            files = TlsFiles(Path(settings.state_dir) / "tls")
            if not files.exist():
                init_tls(files.directory)
                credentials.trust(files.client.read_text(), "admin", "pier-admin (made at first start)")
                log.warning("made a CA and certificates in %s for TLS; %s (key %s) is a client certificate "
                            "trusted as admin", files.directory, files.client, files.client_key)
            cert, key, ca = str(files.server), str(files.server_key), str(files.ca)
        tls = ServerTls(cert, key, ca, credentials.trusted_pems())
        credentials.on_trust = tls.trust
        self._warn_expiry(tls.state)
        return tls

    def _transfers(self, volumes: Volumes) -> ImageTransfers:
        """Image tickets over an ovirt-imageio child (started on the first ticket), with a certificate
        pierd's CA signs (or pierd's own configured one)."""
        settings = self.settings
        state = Path(settings.state_dir)
        if settings.tls_cert:
            tls = ImageioTls(settings.tls_cert, settings.tls_key, settings.tls_ca)
        else:
            from pier.tlsfiles import second_server  # cryptography: 13 MB, only when certificates are made

            (state / "imageio").mkdir(mode=0o700, exist_ok=True)
            tls = ImageioTls(*map(str, second_server(state / "imageio" / "tls", state / "tls")))
        imageio = Imageio(state / "imageio", parse_address(settings.imageio_remote), tls)
        return ImageTransfers(volumes, imageio, max_timeout=settings.max_ticket_timeout)

    def _warn_expiry(self, state: CertificateState) -> None:
        described = state.describe()
        if "warning" in described:
            log.warning("%s", described["warning"])

    def reload_tls(self) -> None:
        """SIGHUP: load the certificate files again; open connections keep theirs."""
        if self.tls is None:
            log.info("SIGHUP: no TLS to reload (--insecure-loopback)")
            return
        try:
            state = self.tls.reload()
        except (OSError, ValueError) as exc:
            log.error("SIGHUP: could not reload the TLS certificate, keeping the old one: %s", exc)
            return
        log.info("SIGHUP: reloaded the TLS certificate %s (valid until %s)", self.tls.cert, state.not_after)
        self._warn_expiry(state)

    def _start_listeners(self, jsonrpc: JsonRpc, db: str) -> None:
        assert (self.registry is not None and self.events is not None and self.node is not None
                and self.credentials is not None), "start() builds them before the listeners"
        settings = self.settings
        authenticator = Authenticator(self.credentials, admin_group=settings.admin_group,
                                      failures=FailedLogins(settings.auth_failures))
        context = self.tls.context if self.tls else None
        facade = make_app(self.registry, self.events, info=self.about, stopping=self.stopping,
                          max_streams=max(1, settings.http_threads // 2))
        self._register_gauges()
        metrics = make_wsgi_app(METRICS)
        mounts = {"/jsonrpc": jsonrpc_app(jsonrpc), "/RPC2": xmlrpc_app(self.registry),
                  "/metrics": metrics if settings.metrics_open else identified_only(metrics)}
        own: list[tuple[str, Any]] = [
            ("http", HttpListener(parse_address(settings.http), mounts, facade, authenticator, tls=self.tls,
                                  threads=settings.http_threads, before_stop=self._end_waits)),
            ("ws", WebSocketListener(jsonrpc, *parse_address(settings.ws), authenticator, ssl=context,
                                     max_per_client=settings.max_client_connections)),
        ]
        if settings.unix_socket != "off":
            own.append(("unix", HttpListener(settings.unix_socket, mounts, facade, authenticator,
                                             threads=4, before_stop=self._end_waits,
                                             unix_group=settings.admin_group)))
        if settings.vdsm_stomp:
            own.append(("vdsm-stomp", VdsmStompListener(jsonrpc, self.events, *parse_address(settings.vdsm_stomp),
                                                        authenticator=authenticator, ssl_context=context,
                                                        max_per_client=settings.max_client_connections)))
        for name, listener in own:
            listener.start()
            self.listeners[name] = listener
        http = self.listeners["http"]
        log.info("REST facade on %s/api/v1, JSON-RPC on %s/jsonrpc, XML-RPC on %s/RPC2, metrics on %s/metrics",
                 http.address, http.address, http.address, http.address)
        log.info("JSON-RPC over WebSocket on %s", self.listeners["ws"].address)
        if "unix" in self.listeners:
            log.info("local socket (REST and JSON-RPC, for root and %s) on %s", settings.admin_group,
                     self.listeners["unix"].address)
        if "vdsm-stomp" in self.listeners:
            log.info("VDSM-compatible STOMP on %s", self.listeners["vdsm-stomp"].address)
        if settings.stomp_broker:
            stomp = StompListener(jsonrpc, self.events, db, stomp_options(settings, self.node.host.uuid()),
                                  authenticator=authenticator)
            stomp.start()  # connects in the background: a broker that is down delays nothing else
            self.listeners["stomp"] = stomp

    def _register_gauges(self) -> None:
        events, node = self.events, self.node
        assert events is not None and node is not None, "start() builds them before the listeners"
        gauge("pier_events_last_seq", "Sequence number of the newest event.", lambda: events.last_seq)
        gauge("pier_libvirt_connected", "1 while the libvirt connection is up.", lambda: int(node.connected))
        gauge("pier_vms", "VMs defined on this host.", lambda: len(node.vms.listing()))

    def _end_waits(self) -> None:
        """Release every long-poll and stream so the listeners' workers can finish."""
        self.stopping.set()
        if self.events is not None:
            self.events.end_waits()
        if self.tasks is not None:
            self.tasks.end_waits()

    def stop(self) -> None:
        self._end_waits()
        for name in reversed(list(self.listeners)):
            self.listeners.pop(name).stop()
        if self.tasks is not None:
            self.tasks.stop()
        if self.nbd is not None:
            self.nbd.stop()
        if self.transfers is not None:
            self.transfers.stop()
        if self.node is not None:
            self.node.stop()
        for store in (self.events, self.credentials, self.audit):
            if store is not None:
                store.close()
        log.info("pierd stopped")

    def about(self) -> dict[str, Any]:
        """What `Host.getAgentInfo` (GET /api/v1) answers: facts kept since start, and the live state."""
        return {
            **self._facts,
            "libvirtConnected": bool(self.node and self.node.connected),
            "tls": self.tls.state.describe() if self.tls else {"insecureLoopback": True},
            "lastEventSeq": self.events.last_seq if self.events else 0,
            "imageio": self.transfers.serving() if self.transfers else {},
        }


def peer_credentials(settings: Settings) -> PeerCredentials:
    """The client certificate this pierd shows other pierds, and the CA it checks theirs with: as
    configured, else those `pier init-tls` made in the state directory, if any."""
    made = Path(settings.state_dir) / "tls"
    cert = settings.migration_cert or (str(made / "client.pem") if (made / "client.pem").exists() else "")
    key = settings.migration_key or (str(made / "client-key.pem") if cert and not settings.migration_cert else "")
    ca = settings.migration_ca or (str(made / "ca.pem") if (made / "ca.pem").exists() else "")
    return PeerCredentials(cert, key, ca)


def stomp_options(settings: Settings, host_id: str) -> StompOptions:
    """The STOMP listener's options from pierd's settings."""
    host, port = parse_address(settings.stomp_broker)
    return StompOptions(host=host, port=port, host_id=host_id, login=settings.stomp_login,
                        passcode=settings.stomp_passcode, vhost=settings.stomp_vhost, prefix=settings.stomp_prefix,
                        tls=settings.stomp_tls, ca=settings.stomp_ca, cert=settings.stomp_cert, key=settings.stomp_key,
                        workers=settings.stomp_workers, reply_ttl=settings.stomp_reply_ttl,
                        max_age=settings.stomp_max_age)


def raise_descriptor_limit() -> None:
    """Take every file descriptor the hard limit allows (as systemd's LimitNOFILE would): each
    client connection is one, and a soft limit of 1024 is soon reached by idle keep-alive ones."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    settings = load_settings(argv)
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_wire_loggers()  # whatever --log-level says
    sys.setswitchinterval(0.0005)  # one busy thread otherwise adds the GIL's 5 ms switch interval to every reply
    raise_descriptor_limit()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    daemon = Daemon(settings)
    signal.signal(signal.SIGHUP, lambda *_: daemon.reload_tls())
    try:
        daemon.start()
    except OSError as exc:
        log.error("cannot start: %s", exc)
        daemon.stop()
        return 2
    except Exception:
        log.exception("cannot start")
        daemon.stop()
        return 2
    # A signal may land on any thread, and Python runs its handler only when the main thread runs
    # bytecode: an untimed wait would sleep through SIGTERM (seen: 1 stop in 8 hung).
    while not stop.wait(0.5):
        pass
    log.info("stopping")
    daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
