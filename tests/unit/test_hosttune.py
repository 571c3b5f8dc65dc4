"""Host tunables and the rest: KSM on a sysfs of the test's own, MOM, the log level, echo, LLDP."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pier.host.ksm import Ksm
from pier.host.lldp import Lldp
from pier.rpc.errors import InvalidParams, KsmError, MomError, NoSuchDevice
from pier.rpc.logcontrol import set_log_level
from tests.unit.conftest import Stack

# A sysfs attribute the kernel offers no write for: writing it fails even for root.
READ_ONLY_ATTRIBUTE = Path("/sys/kernel/uevent_seqnum")


def fake_sysfs(root: Path, **values: int) -> Path:
    """A sysfs root holding KSM's knobs with `values` (others at defaults)."""
    ksm = root / "kernel" / "mm" / "ksm"
    ksm.mkdir(parents=True)
    for knob, value in {"run": 0, "sleep_millisecs": 20, "pages_to_scan": 100, "merge_across_nodes": 1,
                        **values}.items():
        (ksm / knob).write_text(f"{value}\n")
    return ksm


def test_ksm_writes_the_knobs_given_and_leaves_the_others(tmp_path: Path) -> None:
    fake_sysfs(tmp_path)
    ksm = Ksm(tmp_path)
    ksm.tune({"run": 1, "pages_to_scan": 64})
    assert ksm.read() == {"run": 1, "sleep_millisecs": 20, "pages_to_scan": 64, "merge_across_nodes": 1}


def test_a_kernel_without_ksm_gets_an_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(KsmError) as raised:
        Ksm(tmp_path).tune({"run": 1})
    assert str(tmp_path / "kernel/mm/ksm/run") in raised.value.message
    assert raised.value.data["file"] == str(tmp_path / "kernel/mm/ksm/run")


@pytest.mark.skipif(not READ_ONLY_ATTRIBUTE.exists(), reason="needs Linux's sysfs")
def test_a_knob_that_cannot_be_written_names_the_file_and_undoes_the_others(tmp_path: Path) -> None:
    ksm_dir = fake_sysfs(tmp_path)
    (ksm_dir / "run").unlink()
    (ksm_dir / "run").symlink_to(READ_ONLY_ATTRIBUTE)
    ksm = Ksm(tmp_path)
    before = ksm.read()
    with pytest.raises(KsmError) as raised:
        ksm.tune({"pages_to_scan": 5, "sleep_millisecs": 7, "run": 1})
    assert f"cannot write 1 to {ksm_dir / 'run'}" in raised.value.message
    assert raised.value.data["file"] == str(ksm_dir / "run")
    assert ksm.read() == before  # pages_to_scan and sleep_millisecs got their old values back


def test_ksm_refuses_an_unknown_knob(tmp_path: Path) -> None:
    fake_sysfs(tmp_path)
    with pytest.raises(KsmError, match="unknown KSM knob"):
        Ksm(tmp_path).tune({"run": 1, "npages": 3})
    assert Ksm(tmp_path).read()["run"] == 0


def test_set_ksm_tune_validates_then_tunes(stack: Stack) -> None:
    assert stack.call("Host.setKsmTune", tuningParams={"run": 1, "sleep_millisecs": 50}) is True
    assert stack.ksm.knobs["run"] == 1 and stack.ksm.knobs["sleep_millisecs"] == 50
    for bad in ({"run": 3}, {"sleep_millisecs": -1}, {"npages": 1}, {"merge_across_nodes": "1"}):
        with pytest.raises(InvalidParams, match="tuningParams"):
            stack.call("Host.setKsmTune", tuningParams=bad)
    stack.ksm.read_only = True
    with pytest.raises(KsmError, match="read-only"):
        stack.call("Host.setKsmTune", tuningParams={"run": 0})


@pytest.mark.parametrize("verb, params", [("Host.setMOMPolicy", {"policy": "(defvar a 1)"}),
                                          ("Host.setMOMPolicyParameters", {"key_value_store": {"ksmEnabled": True}})])
def test_mom_verbs_say_pier_runs_no_mom(stack: Stack, verb: str, params: dict[str, object]) -> None:
    with pytest.raises(MomError) as raised:
        stack.call(verb, **params)
    assert raised.value.code == 54 and "runs no MOM" in raised.value.message


@pytest.fixture
def restore_levels() -> object:
    names = ["", "pier.test.tune", "websockets", "websockets.client"]
    saved = {name: logging.getLogger(name or None).level for name in names}
    yield
    for name, level in saved.items():
        logging.getLogger(name or None).setLevel(level)


def test_set_log_level_changes_one_logger_at_run_time(stack: Stack, restore_levels: object,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("pier.test.tune")
    logger.setLevel(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="pier.test.tune.child")  # let records through to the capture
    logging.getLogger("pier.test.tune.child").setLevel(logging.NOTSET)
    child = logging.getLogger("pier.test.tune.child")
    child.debug("before")
    stack.call("Host.setLogLevel", level="DEBUG", name="pier.test.tune")
    child.debug("after")
    stack.call("Host.setLogLevel", level="WARN", name="pier.test.tune")
    child.info("muted")
    messages = [record.getMessage() for record in caplog.records if record.name == "pier.test.tune.child"]
    assert messages == ["after"]
    assert logger.level == logging.WARNING


def test_set_log_level_keeps_the_wire_loggers_above_debug(stack: Stack, restore_levels: object) -> None:
    for name in ("websockets", "websockets.client"):
        with pytest.raises(InvalidParams, match="name"):
            stack.call("Host.setLogLevel", level="DEBUG", name=name)
    assert logging.getLogger("websockets.client").level != logging.DEBUG
    set_log_level("ERROR", "websockets")
    assert logging.getLogger("websockets").level == logging.ERROR
    with pytest.raises(InvalidParams, match="level"):
        stack.call("Host.setLogLevel", level="LOUD")


def test_echo_logs_and_answers_the_message(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pier.api.hosttune")
    assert stack.call("Host.echo", message="hello\nworld") == "hello\nworld"
    assert any("'hello\\nworld'" in record.getMessage() for record in caplog.records)


def fake_net(root: Path, nics: list[str], virtual: list[str]) -> Path:
    net = root / "class" / "net"
    for name in nics + virtual:
        (net / name).mkdir(parents=True)
    for name in nics:
        (net / name / "device").mkdir()
    return root


def test_lldp_says_no_agent_runs_on_each_nic(tmp_path: Path) -> None:
    sysfs = fake_net(tmp_path / "sys", ["eth0", "eth1"], ["lo", "virbr0"])
    proc = tmp_path / "proc"
    (proc / "1").mkdir(parents=True)
    (proc / "1" / "comm").write_text("systemd\n")
    lldp = Lldp(sysfs, proc)
    info = lldp.info()
    assert sorted(info) == ["eth0", "eth1"]
    assert info["eth0"] == {"enabled": False, "tlvs": [], "agent": None,
                            "message": "no LLDP agent (lldpad or lldpd) runs on this host"}
    assert list(lldp.info(["virbr0"])) == ["virbr0"]
    with pytest.raises(NoSuchDevice, match=r"filter.devices\[1\]: no network interface 'eth9'"):
        lldp.info(["eth0", "eth9"])
    (proc / "42").mkdir()
    (proc / "42" / "comm").write_text("lldpd\n")
    assert lldp.info(["eth0"])["eth0"]["agent"] == "lldpd"
    assert "lldpd runs" in lldp.info(["eth0"])["eth0"]["message"]


def test_get_lldp_filters_by_devices(stack: Stack) -> None:
    assert sorted(stack.call("Host.getLldp")) == ["eth0", "eth1"]
    assert list(stack.call("Host.getLldp", filter={"devices": ["eth1"]})) == ["eth1"]
    with pytest.raises(InvalidParams, match="filter"):
        stack.call("Host.getLldp", filter={"nics": ["eth1"]})

