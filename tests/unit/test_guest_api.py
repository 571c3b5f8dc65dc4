"""The guest verbs over the real registry and a fake guest: freeze and thaw, the desktop verbs,
and a shutdown's message."""

from __future__ import annotations

import pytest

from pier.rpc.errors import FreezeError, GuestTimeout, NoVM, UnsupportedOperation, VMDown
from tests.unit.conftest import VM_ID, Stack


def make_vm(stack: Stack, agent: bool = True, exec_allowed: bool = True) -> None:
    stack.call("VM.create", vmID=VM_ID, vmParams={"vmName": "guest", "memSize": 64})
    if agent:
        stack.guest.agents.add(VM_ID)
    if exec_allowed:
        stack.guest.exec_allowed.add(VM_ID)


def test_freeze_then_thaw(stack: Stack) -> None:
    make_vm(stack)
    assert stack.call("VM.freeze", vmID=VM_ID) is True
    assert VM_ID in stack.guest.frozen
    with pytest.raises(FreezeError):
        stack.call("VM.freeze", vmID=VM_ID)
    assert stack.call("VM.thaw", vmID=VM_ID) is True
    assert VM_ID not in stack.guest.frozen


def test_freeze_without_an_agent_is_nonresp_and_changes_nothing(stack: Stack) -> None:
    make_vm(stack, agent=False)
    with pytest.raises(GuestTimeout, match="guest agent") as refused:
        stack.call("VM.freeze", vmID=VM_ID)
    assert refused.value.code == 19 and refused.value.name == "nonresp"
    assert stack.guest.frozen == set()
    assert stack.call("VM.getInfo", vmID=VM_ID)["status"] == "Up"


def test_guest_verbs_on_a_vm_that_is_not_there_or_down(stack: Stack) -> None:
    with pytest.raises(NoVM):
        stack.call("VM.freeze", vmID=VM_ID)
    with pytest.raises(NoVM):
        stack.call("VM.desktopLogin", vmID=VM_ID, domain="", username="u", password="p")
    make_vm(stack)
    stack.vms.poweroff(VM_ID)
    with pytest.raises(VMDown):
        stack.call("VM.thaw", vmID=VM_ID)


def test_desktop_verbs_qemu_ga_lacks_name_what_is_missing(stack: Stack) -> None:
    make_vm(stack)
    for verb, params in (("VM.desktopLogin", {"domain": "", "username": "u", "password": "p"}),
                         ("VM.desktopLogoff", {"force": True}),
                         ("VM.desktopSendHcCommand", {"message": "hc"})):
        with pytest.raises(UnsupportedOperation, match="qemu-guest-agent has no command") as refused:
            stack.call(verb, vmID=VM_ID, **params)
        assert refused.value.data["missing"] == "ovirt-guest-agent"


def test_desktop_lock_needs_guest_exec(stack: Stack) -> None:
    make_vm(stack, exec_allowed=False)
    with pytest.raises(UnsupportedOperation, match="guest-exec"):
        stack.call("VM.desktopLock", vmID=VM_ID)
    stack.guest.exec_allowed.add(VM_ID)
    assert stack.call("VM.desktopLock", vmID=VM_ID) is True
    assert VM_ID in stack.guest.locked


def test_a_shutdown_message_reaches_the_guests_users(stack: Stack) -> None:
    make_vm(stack)
    stack.vms.guest_obeys_shutdown = True
    task = stack.call("VM.shutdown", vmID=VM_ID, message="going down for maintenance", timeout=5)
    assert stack.tasks.wait(task["taskID"], 10)["state"] == "succeeded"
    assert stack.guest.told == [(VM_ID, "going down for maintenance")]


def test_a_shutdown_goes_on_when_its_message_cannot_reach_the_guest(stack: Stack) -> None:
    make_vm(stack, agent=False)
    stack.vms.guest_obeys_shutdown = True
    task = stack.call("VM.shutdown", vmID=VM_ID, message="bye", timeout=5)
    assert stack.tasks.wait(task["taskID"], 10)["state"] == "succeeded"
    assert stack.guest.told == [] and stack.call("VM.getInfo", vmID=VM_ID)["status"] == "Down"
