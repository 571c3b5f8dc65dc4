"""A network lab for the network tests: a host namespace with veth NICs, and a peer namespace.

`NetLab` makes two network namespaces of its own, `pier-h-<pid>-<n>` (the host Pier manages) and
`pier-p-<pid>-<n>` (the world outside it). Each NIC of the host (`nic0`, `nic1`, ...) is one end
of a veth pair whose other end is a port of the bridge `lab` in the peer namespace, so the NICs
share one segment; the peer has 10.77.0.1/24 and fd77::1/64 on it and runs dnsmasq as the DHCP
server of the segment (10.77.0.100 to 10.77.0.199, router 10.77.0.1). The veths are made inside
the namespaces directly: nothing ever touches the machine's own namespace's links.

`start_libvirtd()` runs a libvirtd of the lab's own in the host namespace and a mount namespace
of its own (fresh /run and /var/lib/libvirt), so a VM's NIC can land on a bridge Pier made there;
`enter` is the command prefix that runs a program beside it (pierd with `qemu:///system`).

`close()` stops dnsmasq and the lab's libvirtd, kills whatever else still runs in the namespaces
(a DHCP client), and deletes them, which takes every device in them along; the fixtures call it
in `finally`. `sweep()` deletes the namespaces left by a test process that died
(their names carry its pid), and never those of a process still running.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
PEER_V4, PEER_V6 = "10.77.0.1", "fd77::1"
DHCP_RANGE = ("10.77.0.100", "10.77.0.199")
_NAME = re.compile(r"^pier-[hp]-(\d+)-\d+$")
_counter = itertools.count()


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    """Run `ip` (in `netns` when given) and return its output."""
    command = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")
    return done.stdout


def namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def sweep() -> list[str]:
    """Delete the lab namespaces of test processes that are gone; returns their names."""
    gone = []
    for name in namespaces():
        match = _NAME.match(name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            ip("netns", "del", name, check=False)
            gone.append(name)
    return gone


def lab_unusable() -> str | None:
    """Why this machine cannot host a lab (not root, no `ip`, no dnsmasq), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if not os.path.exists(DNSMASQ):
        return "dnsmasq (dnsmasq-base) is not installed"
    return None


class NetLab:
    """Two namespaces joined by `nics` veth pairs, with DHCP on the peer side."""

    def __init__(self, workdir: Path, nics: int = 2, dhcp: bool = True) -> None:
        suffix = f"{os.getpid()}-{next(_counter)}"
        self.host = f"pier-h-{suffix}"
        self.peer = f"pier-p-{suffix}"
        self.workdir = workdir
        self.nics = [f"nic{i}" for i in range(nics)]
        self.dnsmasq: subprocess.Popen[str] | None = None
        self.libvirt_holder: subprocess.Popen[str] | None = None
        self.enter = ["ip", "netns", "exec", self.host]
        try:
            self._build(dhcp)
        except BaseException:
            self.close()
            raise

    def _build(self, dhcp: bool) -> None:
        for ns in (self.host, self.peer):
            ip("netns", "add", ns)
            ip("link", "set", "lo", "up", netns=ns)
        ip("link", "add", "lab", "type", "bridge", netns=self.peer)
        for i, nic in enumerate(self.nics):
            ip("link", "add", nic, "netns", self.host, "type", "veth", "peer", "name", f"peer{i}",
               "netns", self.peer)
            ip("link", "set", f"peer{i}", "master", "lab", "up", netns=self.peer)
        ip("addr", "add", f"{PEER_V4}/24", "dev", "lab", netns=self.peer)
        ip("-6", "addr", "add", f"{PEER_V6}/64", "dev", "lab", "nodad", netns=self.peer)
        ip("link", "set", "lab", "up", netns=self.peer)
        if dhcp:
            self._start_dnsmasq()

    def _start_dnsmasq(self) -> None:
        leases = self.workdir / f"{self.peer}.leases"
        command = ["ip", "netns", "exec", self.peer, DNSMASQ, "--keep-in-foreground", "--no-resolv", "--no-hosts",
                   "--port=0", "--interface=lab", "--bind-interfaces", "--except-interface=lo",
                   f"--dhcp-range={DHCP_RANGE[0]},{DHCP_RANGE[1]},255.255.255.0,10m",
                   f"--dhcp-option=3,{PEER_V4}", f"--dhcp-leasefile={leases}", "--log-dhcp",
                   f"--pid-file={self.workdir / (self.peer + '.pid')}"]
        self.dnsmasq = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.1)
        if self.dnsmasq.poll() is not None:
            raise RuntimeError(f"dnsmasq did not start: {self.dnsmasq.stderr.read() if self.dnsmasq.stderr else ''}")

    def start_libvirtd(self) -> None:
        """A libvirtd (and virtlogd) in the host namespace with private /run and /var/lib/libvirt."""
        script = ("set -e; mount -t tmpfs none /run; mkdir -p /run/libvirt; mount -t tmpfs none /var/lib/libvirt; "
                  "mkdir -p /var/lib/libvirt/qemu; virtlogd -d; libvirtd -d; echo ready; exec sleep 86400")
        self.libvirt_holder = subprocess.Popen(["ip", "netns", "exec", self.host, "unshare", "--mount",
                                                "--propagation", "private", "sh", "-c", script],
                                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.libvirt_holder.stdout is not None
        if self.libvirt_holder.stdout.readline().strip() != "ready":
            raise RuntimeError("the lab's libvirtd did not start: " + (self.libvirt_holder.stderr.read()
                                                                      if self.libvirt_holder.stderr else ""))
        holder = self._holder_pid()
        self.enter = ["nsenter", f"--mount=/proc/{holder}/ns/mnt", f"--net=/var/run/netns/{self.host}"]
        deadline = time.monotonic() + 15
        while subprocess.run([*self.enter, "virsh", "-c", "qemu:///system", "version"],
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the lab's libvirtd does not answer")
            time.sleep(0.1)

    def _holder_pid(self) -> int:
        """The pid of the process holding the lab's mount namespace (`sleep`, once it has exec'd)."""
        assert self.libvirt_holder is not None
        return self.libvirt_holder.pid if self.libvirt_holder.poll() is None else 0

    def _stop_libvirtd(self) -> None:
        if self.libvirt_holder is None:
            return
        holder = self._holder_pid()
        if holder:
            mount_ns = os.readlink(f"/proc/{holder}/ns/mnt")
            for pid in [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != holder]:
                try:
                    if os.readlink(f"/proc/{pid}/ns/mnt") == mount_ns:
                        os.kill(pid, signal.SIGTERM)  # the lab's libvirtd, virtlogd and guests
                except (FileNotFoundError, ProcessLookupError, PermissionError):
                    continue
        self.libvirt_holder.kill()
        self.libvirt_holder.wait()
        for stream in (self.libvirt_holder.stdout, self.libvirt_holder.stderr):
            if stream is not None:
                stream.close()
        self.libvirt_holder = None

    # -- looking at the host namespace ---------------------------------------------------------

    def run(self, *command: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command in the host namespace."""
        done = subprocess.run(["ip", "netns", "exec", self.host, *command], capture_output=True, text=True,
                              timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} in {self.host}: {done.stderr.strip()}")
        return done

    def addr(self, by_name: bool = False) -> list[dict[str, Any]]:
        """`ip -j addr` of the host namespace, without what changes by itself (address lifetimes and
        tentative flags, the operational state that follows the peer) and the queueing discipline, which the kernel
        gives a device the first time it goes up and keeps when it goes down again (`noop` becomes
        `noqueue` for good): so two of them compare equal when the links and addresses are as they were.
        `by_name` leaves out the devices' numbers too, for a device deleted and made again."""
        found = json.loads(ip("-j", "addr", netns=self.host))
        for link in found:
            link.pop("operstate", None)
            link.pop("qdisc", None)
            if by_name:
                link.pop("ifindex", None)
                link.pop("link_index", None)
            for info in link.get("addr_info", []):
                info.pop("valid_life_time", None)
                info.pop("preferred_life_time", None)
                info.pop("tentative", None)  # duplicate address detection still running: it ends by itself
        return sorted(found, key=lambda link: link["ifname"])

    def links(self) -> dict[str, dict[str, Any]]:
        return {link["ifname"]: link for link in json.loads(ip("-d", "-j", "link", netns=self.host))}

    def ping_from_peer(self, address: str, count: int = 3) -> bool:
        done = subprocess.run(["ip", "netns", "exec", self.peer, "ping", "-c", str(count), "-i", "0.2", "-W", "1",
                               address], capture_output=True, text=True, timeout=30)
        return done.returncode == 0

    # -- the end -------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop dnsmasq and the lab's libvirtd, and delete both namespaces (and every device in them)."""
        self._stop_libvirtd()
        if self.dnsmasq is not None and self.dnsmasq.poll() is None:
            self.dnsmasq.send_signal(signal.SIGTERM)
            try:
                self.dnsmasq.wait(5)
            except subprocess.TimeoutExpired:
                self.dnsmasq.kill()
                self.dnsmasq.wait()
        if self.dnsmasq is not None and self.dnsmasq.stderr is not None:
            self.dnsmasq.stderr.close()
        for ns in (self.host, self.peer):
            if ns in namespaces():
                for pid in ip("netns", "pids", ns, check=False).split():  # a DHCP client, a stray pierd
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                ip("netns", "del", ns, check=False)
