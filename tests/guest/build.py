"""Build Pier's tiny test guest: a Debian cloud kernel and an initramfs with busybox and qemu-ga.

Direct kernel boot (`kernel`, `initrd`, `kernelArgs` in vmParams) under KVM reaches a running guest
agent in a second or two. Everything comes from Debian packages fetched with `apt-get download`
(never installed on the host): `linux-image-cloud-amd64` (its kernel and the virtio/ACPI modules it
builds as modules), `busybox-static` and `qemu-guest-agent`, whose shared libraries are copied
from the host (found with `ldd`; the host is the same Debian release). /init is tests/guest/init.sh.

The result is cached in `<cache>/<key>/{vmlinuz,initrd.img}`, where the key hashes this
directory's files and the packages' versions; <cache> is $PIER_GUEST_CACHE, else
/var/lib/libvirt/images/pier-guest (readable by libvirt's qemu user) as root, else
~/.cache/pier-guest.

    python3 tests/guest/build.py            build when missing; print the kernel and initrd paths
    python3 tests/guest/build.py --check    print them if built, else exit 1
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KERNEL_PACKAGE = "linux-image-cloud-amd64"
PACKAGES = ("busybox-static", "qemu-guest-agent")
KERNEL_ARGS = "console=ttyS0 quiet"
# Loaded at boot with what they depend on; those the kernel has built in are skipped.
MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "virtio_console", "virtio_scsi", "sd_mod", "sr_mod",
           "isofs", "ata_piix", "virtio_balloon", "virtio-rng", "virtio_input", "button", "evdev")
ACPI_POWER_BUTTON = "#!/bin/sh\n/sbin/pier-poweroff\n"
POWEROFF = "#!/bin/sh\nsync\nexec poweroff -f\n"
# qemu-ga's guest-shutdown runs `/sbin/shutdown -h|-P|-r +0 "hypervisor initiated shutdown"` and
# wants it to exit 0; the reboot system call comes a moment later, once the agent has seen that.
SHUTDOWN = """#!/bin/sh
action=poweroff
for arg; do [ "$arg" = -r ] && action=reboot; [ "$arg" = -H ] && action=halt; done
(sleep 0.2; sync; $action -f) >/dev/null 2>&1 &
exit 0
"""
OS_RELEASE = 'NAME="Pier test guest"\nID=pier-guest\nVERSION_ID="1"\nPRETTY_NAME="Pier test guest"\n'


def cache_root() -> Path:
    if os.environ.get("PIER_GUEST_CACHE"):
        return Path(os.environ["PIER_GUEST_CACHE"])
    if os.geteuid() == 0:
        return Path("/var/lib/libvirt/images/pier-guest")
    return Path.home() / ".cache" / "pier-guest"


def candidate_versions(packages: list[str]) -> dict[str, str]:
    """apt's candidate version of each package, in one apt-cache call."""
    out = subprocess.run(["apt-cache", "policy", *packages], capture_output=True, text=True, check=True).stdout
    found = dict(re.findall(r"^(\S+):\n\s+Installed:.*\n\s+Candidate:\s*(\S+)", out, re.M))
    versions = {}
    for package in packages:
        if found.get(package, "(none)") == "(none)":
            raise RuntimeError(f"apt knows no installable {package} (run apt-get update?)")
        versions[package] = found[package]
    return versions


def kernel_package() -> str:
    """The versioned kernel package that the metapackage depends on (linux-image-6.1.0-N-cloud-amd64)."""
    out = subprocess.run(["apt-cache", "depends", KERNEL_PACKAGE], capture_output=True, text=True, check=True).stdout
    match = re.search(r"Depends:\s*(linux-image-\S+)", out)
    if not match:
        raise RuntimeError(f"cannot tell which kernel {KERNEL_PACKAGE} depends on:\n{out}")
    return match.group(1)


def inputs() -> dict[str, str]:
    """What the image is made of: this directory's files and the packages' versions."""
    made: dict[str, str] = {}
    for path in sorted(HERE.iterdir()):
        if path.is_file() and path.suffix in (".py", ".sh"):
            made[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    made.update(candidate_versions([kernel_package(), *PACKAGES]))
    return made


def image_key(made: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(made, sort_keys=True).encode()).hexdigest()[:16]


def find(made: dict[str, str] | None = None) -> dict[str, str] | None:
    """The built image's paths (kernel, initrd, kernelArgs), or None when it is not built."""
    directory = cache_root() / image_key(made or inputs())
    kernel, initrd = directory / "vmlinuz", directory / "initrd.img"
    if kernel.is_file() and initrd.is_file():
        return {"kernel": str(kernel), "initrd": str(initrd), "kernelArgs": KERNEL_ARGS}
    return None


# -- the initramfs -------------------------------------------------------------------------------


class Cpio:
    """A newc archive, written in order, every file owned by root."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.ino = 1
        self.names: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        encoded = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        self.out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        self.out.write(b"\0" * (-(110 + len(encoded)) % 4) + data + b"\0" * (-len(data) % 4))
        self.ino += 1

    def directory(self, name: str) -> None:
        parts = name.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            path = "/".join(parts[:i])
            if path not in self.names:
                self.names.add(path)
                self._entry(path, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        name = name.strip("/")
        self.directory(os.path.dirname(name))
        self.names.add(name)
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        name = name.strip("/")
        if name in self.names:
            return
        self.directory(os.path.dirname(name))
        self.names.add(name)
        self._entry(name, 0o120777, target.encode())

    def close(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.out.getvalue()


def module_depends(path: Path) -> list[str]:
    """The `depends=` of a .ko's .modinfo section (the host need not have modinfo)."""
    match = re.search(rb"(?:^|\0)depends=([^\0]*)\0", path.read_bytes())
    return [d for d in match.group(1).decode().split(",") if d] if match else []


def module_order(modules_dir: Path) -> list[Path]:
    """MODULES and what they need, each after its dependencies."""
    by_name = {p.name[:-3].replace("-", "_"): p for p in modules_dir.rglob("*.ko")}
    order: list[Path] = []

    def add(name: str) -> None:
        path = by_name.get(name.replace("-", "_"))
        if path is None or path in order:
            return  # built in (or absent from this kernel)
        for dep in module_depends(path):
            add(dep)
        order.append(path)

    for name in MODULES:
        add(name)
    return order


def shared_libraries(binary: Path) -> list[Path]:
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    libs = [Path(m.group(1)) for m in re.finditer(r"=>\s*(/\S+)", out)]
    libs += [Path(m.group(1)) for m in re.finditer(r"^\s*(/\S+ld-linux\S*)", out, re.M)]
    return libs


def build_initrd(root: Path, modules_dir: Path) -> tuple[bytes, list[str]]:
    archive = Cpio()
    for directory in ("dev", "proc", "sys", "run", "tmp", "root", "etc", "var/log", "lib/modules", "usr/bin",
                      "usr/sbin", "mnt"):
        archive.directory(directory)
    busybox = root / "bin" / "busybox"
    archive.file("bin/busybox", busybox.read_bytes(), 0o755)
    applets = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True).stdout
    for applet in applets.split():
        if applet != "bin/busybox":
            archive.symlink(applet, "/bin/busybox")
    qemu_ga = root / "usr" / "sbin" / "qemu-ga"
    archive.file("usr/sbin/qemu-ga", qemu_ga.read_bytes(), 0o755)
    for lib in shared_libraries(qemu_ga):
        archive.file(str(lib), lib.resolve().read_bytes(), 0o755)
    if not any(str(lib).startswith("/lib64/") for lib in shared_libraries(qemu_ga)):
        raise RuntimeError("qemu-ga's dynamic loader was not found by ldd")
    loaded = []
    for module in module_order(modules_dir):
        relative = module.relative_to(modules_dir)
        archive.file(f"lib/modules/{relative}", module.read_bytes())
        loaded.append(str(relative))
    archive.file("etc/modules.order", "".join(f"{m}\n" for m in loaded).encode())
    archive.file("init", (HERE / "init.sh").read_bytes(), 0o755)
    archive.file("etc/udhcpc.sh", (root / "usr/share/doc/busybox-static/examples/udhcp/simple.script").read_bytes(),
                 0o755)
    archive.file("etc/acpi/PWRF/00000080", ACPI_POWER_BUTTON.encode(), 0o755)
    archive.file("sbin/pier-poweroff", POWEROFF.encode(), 0o755)
    archive.file("sbin/shutdown", SHUTDOWN.encode(), 0o755)
    archive.file("etc/os-release", OS_RELEASE.encode())
    archive.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    archive.file("etc/group", b"root:x:0:\n")
    archive.file("etc/profile", b"export PS1='pier-guest# '\n")
    return gzip.compress(archive.close(), compresslevel=6, mtime=0), loaded


def build(made: dict[str, str] | None = None) -> dict[str, str]:
    """Build the image unless it is there; its paths."""
    made = made or inputs()
    found = find(made)
    if found:
        return found
    target = cache_root() / image_key(made)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pier-guest-") as temp:
        work = Path(temp)
        packages = [f"{p}={v}" for p, v in made.items() if not p.endswith((".py", ".sh"))]
        subprocess.run(["apt-get", "download", "-q", *packages], cwd=work, check=True, capture_output=True)
        root = work / "root"
        for deb in sorted(work.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        (kernel,) = (root / "boot").glob("vmlinuz-*")
        (modules_dir,) = (root / "lib" / "modules").iterdir()
        initrd, loaded = build_initrd(root, modules_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(target.parent, 0o755)
        staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
        shutil.copyfile(kernel, staging / "vmlinuz")
        (staging / "initrd.img").write_bytes(initrd)
        (staging / "inputs.json").write_text(json.dumps({**made, "modules": loaded}, indent=1) + "\n")
        for path in staging.iterdir():
            os.chmod(path, 0o644)
        os.chmod(staging, 0o755)
        try:
            staging.rename(target)
        except OSError:  # built meanwhile by someone else
            shutil.rmtree(staging, ignore_errors=True)
    print(f"pier-guest: built {target} in {time.monotonic() - started:.1f} s", file=sys.stderr)
    found = find(made)
    assert found is not None
    return found


def main(argv: list[str]) -> int:
    if "--check" in argv:
        found = find()
        if found is None:
            print("pier-guest: not built", file=sys.stderr)
            return 1
    else:
        found = build()
    print(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
