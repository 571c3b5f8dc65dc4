"""Host tunables on this machine: KSM on the real sysfs (writable, and read-only in a mount
namespace of the test's own), the log level of a running pierd, echo, MOM and LLDP over its wires."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pier.host.ksm import Ksm
from tests.integration.clients import CallFailed, RestClient, WsClient
from tests.integration.conftest import Pierd

KSM = Path("/sys/kernel/mm/ksm")
REPO = Path(__file__).resolve().parents[2]
needs_ksm = pytest.mark.skipif(not (KSM / "sleep_millisecs").exists(), reason="this kernel has no KSM")


@needs_ksm
@pytest.mark.skipif(not os.access(KSM / "sleep_millisecs", os.W_OK), reason="needs root and a writable sysfs")
def test_ksm_tune_writes_the_real_knob_and_it_is_given_back(tmp_path: Path) -> None:
    ksm = Ksm("/sys")
    before = ksm.read()
    try:
        ksm.tune({"sleep_millisecs": before["sleep_millisecs"] + 7})
        assert int((KSM / "sleep_millisecs").read_text()) == before["sleep_millisecs"] + 7
        assert ksm.read()["run"] == before["run"]
    finally:
        ksm.tune(before)
    assert ksm.read() == before


@needs_ksm
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root to make a mount namespace")
def test_a_read_only_sysfs_gets_an_error_naming_the_file() -> None:
    """The real /sys, remounted read-only in a mount namespace that only this child process sees."""
    before = int((KSM / "sleep_millisecs").read_text())
    script = textwrap.dedent(f"""
        from pier.host.ksm import Ksm
        from pier.rpc.errors import KsmError
        try:
            Ksm("/sys").tune({{"sleep_millisecs": {before + 7}}})
        except KsmError as exc:
            print(exc.code, exc.message)
        else:
            print("written")
    """)
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           'mount -o remount,bind,ro /sys && exec "$0" -c "$1"', sys.executable, script],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    if "mount:" in done.stderr or "unshare:" in done.stderr:
        pytest.skip(f"cannot make a read-only /sys here: {done.stderr.strip()}")
    assert done.stdout.strip() == (f"71 cannot write {before + 7} to /sys/kernel/mm/ksm/sleep_millisecs: the file "
                                   "system is read-only (is /sys mounted read-only, as in a container?)"), done
    assert int((KSM / "sleep_millisecs").read_text()) == before


def test_set_log_level_turns_debug_on_for_one_logger_at_run_time(pierd: Pierd) -> None:
    WsClient(pierd.ws, pierd.token).close()
    rest = RestClient(pierd.http, pierd.token)
    assert rest.call("Host.echo", message="before") == "before"
    assert pierd.wait_logged("'before'")
    assert not pierd.logged("DEBUG pier.transports.ws: connection from")
    rest.call("Host.setLogLevel", level="DEBUG", name="pier.transports.ws")
    WsClient(pierd.ws, pierd.token).close()
    assert pierd.wait_logged("DEBUG pier.transports.ws: connection from")
    with pytest.raises(CallFailed) as refused:
        rest.call("Host.setLogLevel", level="DEBUG", name="pier.transports.ws.server")
    assert refused.value.status == 400 and "params.name" in str(refused.value.data)


def test_mom_and_lldp_over_json_rpc(pierd: Pierd) -> None:
    client = WsClient(pierd.ws, pierd.token)
    try:
        with pytest.raises(CallFailed) as raised:
            client.call("Host.setMOMPolicy", policy="(defvar x 1)")
        assert raised.value.code == 54 and "runs no MOM" in str(raised.value)
        lldp = client.call("Host.getLldp", filter={})
        nics = sorted(link.name for link in Path("/sys/class/net").iterdir() if (link / "device").exists())
        assert sorted(lldp) == nics
        assert all(info["enabled"] is False and info["tlvs"] == [] for info in lldp.values())
        assert all("runs on this host" in info["message"] for info in lldp.values())
    finally:
        client.close()
