"""pierd's settings: defaults, a TOML file, then command-line flags, each overriding the last."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_HTTP = "127.0.0.1:8042"
DEFAULT_WS = "127.0.0.1:8043"
VDSM_PORT = 54321


def default_state_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/pier"
    return str(Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "pier")


@dataclass
class Settings:
    libvirt_uri: str = "auto"
    http: str = DEFAULT_HTTP
    ws: str = DEFAULT_WS
    state_dir: str = ""
    log_level: str = "INFO"
    event_retention: float = 86400.0
    max_events: int = 100_000
    task_workers: int = 8
    http_threads: int = 16
    stats_interval: float = 2.0
    slow_stats_interval: float = 15.0
    hotunplug_timeout: float = 30.0  # seconds a guest has to let go of an unplugged device (VDSM's default)
    stomp_broker: str = ""
    stomp_login: str = ""
    stomp_passcode: str = field(default="", repr=False)  # settings are logged at DEBUG
    stomp_vhost: str = "/"
    stomp_prefix: str = "pier"
    stomp_tls: bool = False
    stomp_ca: str = ""
    stomp_cert: str = ""
    stomp_key: str = ""
    stomp_workers: int = 8
    stomp_reply_ttl: float = 300.0
    stomp_max_age: float = 180.0
    vdsm_stomp: str = ""
    insecure_loopback: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    unix_socket: str = ""
    admin_group: str = "pier-admin"
    rate_limit: float = 0.0  # opt-in: honest clients in a tight loop must never be refused
    rate_burst: int = 200
    auth_failures: int = 20  # failed authentications from one address in a minute before it must wait
    max_client_connections: int = 32
    audit_retention_days: float = 90.0
    metrics_open: bool = False  # /metrics without credentials (by default a viewer token or certificate)
    manage_network: bool = False  # opt-in: Host.setupNetworks changes this host's links, addresses and routes
    data_center: str = "/rhev/data-center"  # VDSM's storage root: connections under mnt/, pool links
    storage_monitor_interval: float = 10.0  # seconds between two checks of each watched storage domain
    imageio_remote: str = "[::]:54322"  # where ovirt-imageio serves image tickets over HTTPS (VDSM's port)
    max_ticket_timeout: int = 7 * 86400  # the longest timeout an image ticket may ask for, in seconds
    migration_cert: str = ""  # client certificate shown to a migration's destination pierd (default: STATE_DIR/tls)
    migration_key: str = ""
    migration_ca: str = ""  # CA that signs other pierds' server certificates (default: STATE_DIR/tls/ca.pem)
    migration_libvirt_uri: str = "qemu+tls://{host}/system"  # how this libvirtd reaches a destination's

    def __post_init__(self) -> None:
        if not self.state_dir:
            self.state_dir = default_state_dir()
        if not self.unix_socket:
            self.unix_socket = default_unix_socket(self.state_dir)


# Keys a config file may no longer set, and what replaced each.
REMOVED = {
    "stomp_role": "each request through the broker carries its caller's bearer token in the frame's header "
                  "'authorization: Bearer pier_...' (an admin makes one with 'pier token create --role admin "
                  "--name engine'); a broker user has no role of its own",
}


def default_unix_socket(state_dir: str) -> str:
    """Where the local socket goes: /run/pier for root, the state directory otherwise."""
    return "/run/pier/pier.sock" if os.geteuid() == 0 else str(Path(state_dir) / "pier.sock")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_address(text: str) -> tuple[str, int]:
    """'HOST:PORT', '[v6]:PORT' or ':PORT' -> (host, port); raises ValueError on anything else."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pierd", description="Pier node agent: serves this host's API.")
    parser.add_argument("--config", metavar="FILE", help="TOML file with the same keys as these flags")
    parser.add_argument("--libvirt-uri", help="libvirt URI; 'auto' (default) uses qemu:///system when "
                        "libvirtd answers, else libvirt's embedded test driver")
    parser.add_argument("--http", metavar="HOST:PORT", help=f"REST facade and JSON-RPC over HTTP (default {DEFAULT_HTTP})")
    parser.add_argument("--ws", metavar="HOST:PORT", help=f"JSON-RPC over WebSocket (default {DEFAULT_WS})")
    parser.add_argument("--state-dir", metavar="DIR", help="where events and tasks are kept")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)
    parser.add_argument("--manage-network", action="store_true", default=None,
                        help="let Host.setupNetworks change this host's links, addresses and routes, and restore "
                        "the safe network configuration at start (off by default: the network is only read)")
    parser.add_argument("--data-center", metavar="DIR",
                        help="the storage root, VDSM's /rhev/data-center: connections under DIR/mnt, pool links")
    parser.add_argument("--storage-monitor-interval", type=float, metavar="S",
                        help="seconds between two checks of each watched storage domain (default 10)")
    parser.add_argument("--imageio-remote", metavar="HOST:PORT",
                        help="where ovirt-imageio, started on the first image ticket, serves images over HTTPS "
                        "(default [::]:54322, VDSM's; port 0 picks a free one)")
    parser.add_argument("--max-ticket-timeout", type=int, metavar="S",
                        help="the longest timeout an image ticket may ask for (default 604800, a week)")
    security = parser.add_argument_group("security", "TCP listeners speak TLS; the unix socket trusts local root")
    security.add_argument("--insecure-loopback", action="store_true", default=None,
                          help="plain HTTP/WS/STOMP without TLS, allowed only on 127.0.0.1 and ::1")
    security.add_argument("--tls-cert", metavar="FILE", help="server certificate (default: made at first start "
                          "in STATE_DIR/tls, like 'pier init-tls')")
    security.add_argument("--tls-key", metavar="FILE", help="server key")
    security.add_argument("--tls-ca", metavar="FILE", help="CA that signs client certificates")
    security.add_argument("--unix-socket", metavar="PATH", help="local socket for the CLI and local admins "
                          "(default /run/pier/pier.sock as root; 'off' to disable)")
    security.add_argument("--metrics-open", action="store_true", default=None,
                          help="serve /metrics without credentials (by default Prometheus needs a viewer token, "
                          "as its bearer_token, or a trusted client certificate)")
    security.add_argument("--rate-limit", type=float, metavar="CALLS",
                          help="calls a second per caller, beyond which calls are refused (default 0: no limit; "
                          "root on the local socket is never limited)")
    migration = parser.add_argument_group("migration", "how this pierd reaches a migration's destination")
    migration.add_argument("--migration-cert", metavar="FILE", help="client certificate shown to the destination's "
                           "pierd (default: STATE_DIR/tls/client.pem when it exists)")
    migration.add_argument("--migration-key", metavar="FILE", help="its key")
    migration.add_argument("--migration-ca", metavar="FILE", help="CA that signs the destination pierd's certificate "
                           "(default: STATE_DIR/tls/ca.pem when it exists)")
    migration.add_argument("--migration-libvirt-uri", metavar="URI", help="how this host's libvirtd reaches the "
                           "destination's, {host} being its address (default qemu+tls://{host}/system)")
    parser.add_argument("--vdsm-stomp", metavar="HOST[:PORT]",
                        help="also serve VDSM's own STOMP dialect here, for unchanged VDSM clients "
                        f"(off by default; the port defaults to VDSM's, {VDSM_PORT})")
    stomp = parser.add_argument_group("STOMP", "JSON-RPC through a message broker, for a management engine "
                                      "(off unless --stomp-broker is given)")
    stomp.add_argument("--stomp-broker", metavar="HOST:PORT", help="the broker's STOMP port, e.g. 127.0.0.1:61613")
    stomp.add_argument("--stomp-login", metavar="USER")
    stomp.add_argument("--stomp-passcode", metavar="SECRET",
                       help="better in the --config file: other users can read a command line")
    stomp.add_argument("--stomp-vhost", metavar="VHOST", help="the broker's virtual host (default /)")
    stomp.add_argument("--stomp-prefix", metavar="PREFIX",
                       help="destinations are /queue/PREFIX.<hostId>.requests and /topic/PREFIX.<hostId>.events.* "
                       "(default pier)")
    stomp.add_argument("--stomp-tls", action="store_true", default=None, help="connect with TLS")
    stomp.add_argument("--stomp-ca", metavar="FILE", help="CA certificates to check the broker's certificate with")
    stomp.add_argument("--stomp-cert", metavar="FILE", help="client certificate (mutual TLS)")
    stomp.add_argument("--stomp-key", metavar="FILE", help="client certificate's key")
    return parser


def load_settings(argv: list[str] | None = None) -> Settings:
    """Settings from defaults, then `--config FILE`, then flags. Exits with a message on bad input."""
    parser = argument_parser()
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    known = {f.name for f in fields(Settings)}
    if args.config:
        try:
            with open(args.config, "rb") as stream:
                document = tomllib.load(stream)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            parser.error(f"cannot read --config {args.config}: {exc}")
        document = {key.replace("-", "_"): value for key, value in document.items()}
        for key in sorted(set(document) & set(REMOVED)):
            parser.error(f"{args.config}: {key} is no longer a setting: {REMOVED[key]}")
        unknown = sorted(set(document) - known)
        if unknown:
            parser.error(f"unknown key(s) in {args.config}: {', '.join(unknown)}")
        values.update(document)
    values.update({key: value for key, value in vars(args).items() if key != "config" and value is not None})
    settings = Settings(**values)
    if settings.vdsm_stomp and not re.search(r":\d+$", settings.vdsm_stomp):
        settings.vdsm_stomp += f":{VDSM_PORT}"  # VDSM's own port when none is given
    addresses = {"http": settings.http, "ws": settings.ws}
    if settings.stomp_broker:
        addresses["stomp-broker"] = settings.stomp_broker
    try:
        parse_address(settings.imageio_remote)
    except ValueError as exc:
        parser.error(f"--imageio-remote: {exc}")
    if settings.vdsm_stomp:
        addresses["vdsm-stomp"] = settings.vdsm_stomp
    for flag, address in addresses.items():
        try:
            host, _ = parse_address(address)
        except ValueError as exc:
            parser.error(f"--{flag}: {exc}")
        if settings.insecure_loopback and flag != "stomp-broker" and not is_loopback(host):
            parser.error(f"--{flag} {address}: --insecure-loopback serves plain text on 127.0.0.1 or ::1 only")
    if bool(settings.tls_cert) != bool(settings.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if not re.fullmatch(r"[\w-]+(\.[\w-]+)*", settings.stomp_prefix):
        parser.error(f"--stomp-prefix: {settings.stomp_prefix!r} is not a name like 'pier' or 'dc1.pier'")
    return settings
