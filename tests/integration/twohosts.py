"""Two hypervisors on one machine, for the migration tests: the machine's own, and a second in namespaces.

**Host A** is the machine itself: its own libvirtd (qemu:///system) and a pierd in the root
namespaces. It is the migration's source. Using the machine's libvirtd keeps the tiny guest's
helpers (`tests.integration.guest`) as they are, and changes nothing in that libvirtd's
configuration: a peer-to-peer migration is driven by the source libvirtd connecting *out* to the
destination's, so A needs no listener. (The price: migrations go from A to B only; B to A would
need A's libvirtd to listen on TCP.)

**Host B** (`SecondHost`) is a network namespace `pier-m-<pid>-<n>` joined to A by a veth pair
(A's end `pm<pid>x<n>` with 10.79.<k>.1/30, B's `eth0` with 10.79.<k>.2/30), and a mount
namespace in which
- /run is a tmpfs (B's libvirtd, virtlogd and their sockets and pid files),
- /etc/libvirt is a temporary directory holding a libvirtd.conf of its own (its own `host_uuid`,
  listening on TCP at B's address without authentication: the namespace is private), a copy of
  the machine's qemu.conf and virtlogd.conf, and libvirt's `default` NAT network (autostarted, in
  B's namespace, so a guest's NIC on `default` finds its network there too),
- /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt are temporary directories, with the
  machine's /var/lib/libvirt/images bound into the first: both hosts see the tiny guest's kernel
  and the guests' disks at the same path, as shared storage would give them,
- /etc/machine-id is a file of its own, so B's pierd has a host id of its own.

B runs libvirtd (`--listen`) and virtlogd there, and a pierd (`start_pierd`) serving TLS on B's
address. `close()` destroys B's guests through B's libvirtd, stops its pierd, kills whatever still
runs in B's network namespace (libvirtd, virtlogd, dnsmasq, qemu) and deletes the namespace, which
takes the veth pair along; callers run it in `finally`. Nothing is ever defined in the machine's
own libvirtd by the lab itself.

**TLS between them**: one lab CA (`pier.tlsfiles.init_tls`) signs B's server certificate (for B's
address) and A's client certificate; B trusts that client certificate as an operator (Trust.add
over B's local socket), and A's pierd checks B's certificate against the CA.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import libvirt

from pier.tlsfiles import TlsFiles, init_tls, issue_server
from tests.integration.clients import TOKEN, unix_request
from tests.integration.conftest import Pierd
from tests.integration.netlab import ip, namespaces

_counter = itertools.count()
SUBNET_BASE = "10.79"


def lab_unusable() -> str | None:
    """Why this machine cannot host a second hypervisor, or None."""
    if os.geteuid() != 0:
        return "namespaces and a second libvirtd need root"
    for tool in ("ip", "unshare", "nsenter", "libvirtd", "virtlogd"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def _free_subnet() -> int:
    """A third octet k for 10.79.k.0/30 that no address of the root namespace uses yet."""
    used = ip("-4", "-o", "addr")
    start = (os.getpid() + next(_counter) * 7) % 250
    for step in range(250):
        k = (start + step) % 250 + 1
        if f" {SUBNET_BASE}.{k}." not in used:
            return k
    raise RuntimeError(f"no free subnet under {SUBNET_BASE}.0.0/16")


class SecondHost:
    """Host B: libvirtd, virtlogd and (once started) a pierd in namespaces of their own."""

    def __init__(self, workdir: Path) -> None:
        n = next(_counter)
        self.netns = f"pier-m-{os.getpid()}-{n}"
        self.veth = f"pm{os.getpid() % 100000}x{n}"[:15]
        k = _free_subnet()
        self.address, self.peer_address = f"{SUBNET_BASE}.{k}.2", f"{SUBNET_BASE}.{k}.1"
        self.base = workdir
        self.host_uuid = str(uuid.uuid4())
        self.holder: subprocess.Popen[str] | None = None
        self.pierd: Pierd | None = None
        self.enter: list[str] = []
        try:
            self._network()
            self._configure()
            self._start_libvirtd()
        except BaseException:
            self.close()
            raise

    @property
    def libvirt_uri(self) -> str:
        """B's libvirtd as A (and the tests, from the root namespace) reach it."""
        return f"qemu+tcp://{self.address}/system"

    # -- making it ------------------------------------------------------------------------------

    def _network(self) -> None:
        ip("netns", "add", self.netns)
        ip("link", "set", "lo", "up", netns=self.netns)
        ip("link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        ip("addr", "add", f"{self.peer_address}/30", "dev", self.veth)
        ip("link", "set", self.veth, "up")
        ip("addr", "add", f"{self.address}/30", "dev", "eth0", netns=self.netns)
        ip("link", "set", "eth0", "up", netns=self.netns)

    def _configure(self) -> None:
        etc = self.base / "etc"
        for sub in ("etc/qemu/networks/autostart", "var/images", "var/qemu", "log/qemu", "cache"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        for name in ("qemu.conf", "virtlogd.conf"):
            if Path("/etc/libvirt", name).exists():
                shutil.copy(Path("/etc/libvirt", name), etc / name)
        (etc / "libvirtd.conf").write_text(
            f'listen_tls = 0\nlisten_tcp = 1\nlisten_addr = "{self.address}"\nauth_tcp = "none"\n'
            f'host_uuid = "{self.host_uuid}"\n')
        default = Path("/etc/libvirt/qemu/networks/default.xml")
        if default.exists():
            shutil.copy(default, etc / "qemu/networks/default.xml")
            (etc / "qemu/networks/autostart/default.xml").symlink_to("../default.xml")
        (self.base / "machine-id").write_text(uuid.uuid4().hex + "\n")

    def _start_libvirtd(self) -> None:
        b = self.base
        script = ("set -e; mount -t tmpfs none /run; mkdir -p /run/libvirt /run/lock; "
                  f"mount --bind {b}/etc /etc/libvirt; "
                  f"mount --bind /var/lib/libvirt/images {b}/var/images; "
                  f"mount --rbind {b}/var /var/lib/libvirt; "
                  f"mount --bind {b}/log /var/log/libvirt; mount --bind {b}/cache /var/cache/libvirt; "
                  f"mount --bind {b}/machine-id /etc/machine-id; "
                  "virtlogd -d; libvirtd -d --listen; echo ready; exec sleep infinity")
        self.holder = subprocess.Popen(["ip", "netns", "exec", self.netns, "unshare", "--mount", "--propagation",
                                        "private", "sh", "-c", script],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.holder.stdout is not None
        if self.holder.stdout.readline().strip() != "ready":
            raise RuntimeError("host B's libvirtd did not start: "
                               + (self.holder.stderr.read() if self.holder.stderr else ""))
        self.enter = ["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", f"--net=/var/run/netns/{self.netns}"]
        deadline = time.monotonic() + 20
        while True:
            try:
                conn = libvirt.open(self.libvirt_uri)
                break
            except libvirt.libvirtError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"host B's libvirtd does not answer at {self.libvirt_uri}: {exc}") from None
                time.sleep(0.1)
        try:
            found = conn.getCapabilities()
        finally:
            conn.close()
        if self.host_uuid not in found:
            raise RuntimeError(f"host B's libvirtd does not report host_uuid {self.host_uuid}")

    def start_pierd(self, state_dir: Path, tls: TlsFiles, client_cert: Path, *extra: str) -> Pierd:
        """B's pierd on qemu:///system (B's libvirtd), serving TLS on B's address with `tls`'s
        server certificate, trusting `client_cert` (A's) as an operator."""
        token = TOKEN["value"]
        self.pierd = Pierd(state_dir, "qemu:///system", "--http", f"{self.address}:0", "--ws", f"{self.address}:0",
                           "--tls-cert", str(tls.server), "--tls-key", str(tls.server_key), "--tls-ca", str(tls.ca),
                           *extra, secure=True, prefix=self.enter)
        TOKEN["value"] = token  # Pierd sets the global test token to its own: A's stays the default
        status, made = unix_request(self.pierd.socket, "POST", "/api/v1/trust",
                                    {"certificate": client_cert.read_text(), "role": "operator",
                                     "name": "host A (migrations)"})
        assert status == 201, made
        return self.pierd

    def stop_pierd(self) -> None:
        if self.pierd is not None:
            self.pierd.stop()

    # -- looking at it --------------------------------------------------------------------------

    def connect(self) -> libvirt.virConnect:
        return libvirt.open(self.libvirt_uri)

    # -- the end --------------------------------------------------------------------------------

    def close(self) -> None:
        """Destroy B's guests, stop its pierd and every process in its namespace, delete it."""
        if self.holder is not None and self.holder.poll() is None:
            try:
                conn = libvirt.open(self.libvirt_uri)
                for dom in conn.listAllDomains():
                    try:
                        if dom.isActive():
                            dom.destroy()
                        if dom.isPersistent():
                            dom.undefine()
                    except libvirt.libvirtError:
                        pass
                conn.close()
            except libvirt.libvirtError:
                pass
        if self.pierd is not None:
            try:
                self.pierd.stop()
            except AssertionError:
                pass
        if self.netns in namespaces():
            for signum in (signal.SIGTERM, signal.SIGKILL):
                pids = [int(p) for p in ip("netns", "pids", self.netns, check=False).split()]
                for pid in pids:
                    try:
                        os.kill(pid, signum)
                    except ProcessLookupError:
                        pass
                deadline = time.monotonic() + 5
                while pids and time.monotonic() < deadline:
                    pids = [p for p in pids if Path(f"/proc/{p}").exists() and _state(p) != "Z"]
                    time.sleep(0.1)
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait()
            for stream in (self.holder.stdout, self.holder.stderr):
                if stream is not None:
                    stream.close()
            self.holder = None
        ip("netns", "del", self.netns, check=False)
        ip("link", "del", self.veth, check=False)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


class Lab:
    """Both hosts: A's pierd (root namespaces, qemu:///system) and host B with its pierd, and the
    lab CA their TLS comes from."""

    def __init__(self, workdir: Path, *a_extra: str) -> None:
        self.workdir = workdir
        self.tls = init_tls(workdir / "ca", hostname="pier-lab-a")
        self.b = SecondHost(workdir / "b")
        self.a: Pierd | None = None
        try:
            b_tls = TlsFiles(workdir / "b-tls")
            b_tls.directory.mkdir(mode=0o700)
            issue_server(self.tls.directory, b_tls.server, b_tls.server_key, "pier-lab-b", addresses=(self.b.address,))
            shutil.copy(self.tls.ca, b_tls.ca)
            self.b.start_pierd(workdir / "b-state", b_tls, self.tls.client)
            self.a = Pierd(workdir / "a-state", "qemu:///system", "--migration-cert", str(self.tls.client),
                           "--migration-key", str(self.tls.client_key), "--migration-ca", str(self.tls.ca),
                           "--migration-libvirt-uri", "qemu+tcp://{host}/system", *a_extra)
        except BaseException:
            self.close()
            raise

    @property
    def b_pierd(self) -> Pierd:
        assert self.b.pierd is not None
        return self.b.pierd

    @property
    def dst(self) -> str:
        """VDSM's `dst` for a migration to B: its pierd's address."""
        return self.b_pierd.http.removeprefix("https://")

    def close(self) -> None:
        try:
            if self.a is not None:
                self.a.stop()
        finally:
            self.b.close()
