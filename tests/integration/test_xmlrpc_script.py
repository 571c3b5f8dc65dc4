"""contrib/vdsm_xmlrpc_example.py, a VDSM-era XML-RPC script, runs unchanged against a real pierd's /RPC2."""

from __future__ import annotations

import subprocess
import sys
import xmlrpc.client
from pathlib import Path

import pytest

from tests.integration.conftest import Pierd

EXAMPLE = Path(__file__).resolve().parents[2] / "contrib" / "vdsm_xmlrpc_example.py"


def run_example(daemon: Pierd) -> str:
    # The only change an old script needs: its URL carries a Pier token as the password.
    url = daemon.http.replace("http://", f"http://vdsm:{daemon.make_token('operator')}@") + "/RPC2"
    with xmlrpc.client.ServerProxy(url, allow_none=True) as proxy:
        try:
            proxy.ping()
        except xmlrpc.client.ProtocolError as exc:
            pytest.fail(f"pierd does not serve XML-RPC at {url} ({exc.errcode} {exc.errmsg}); "
                        "pier/daemon.py must mount xmlrpc_app(self.registry) at /RPC2")
    done = subprocess.run([sys.executable, str(EXAMPLE), url], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}\npierd:\n{''.join(daemon.log[-30:])}"
    return done.stdout


def test_the_vdsm_script_runs_unchanged_on_the_test_driver(pierd: Pierd) -> None:
    out = run_example(pierd)
    for step in ("host ", "created ", "listed: ", "paused", "resumed", "destroyed"):
        assert step in out, out


@pytest.mark.kvm
def test_the_vdsm_script_runs_unchanged_on_qemu_system(tmp_path: Path, system_libvirt: str) -> None:
    daemon = Pierd(tmp_path / "state", system_libvirt)
    try:
        out = run_example(daemon)
    finally:
        assert daemon.stop() == 0
    assert "destroyed" in out, out
