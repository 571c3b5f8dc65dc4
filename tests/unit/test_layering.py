"""Imports point one way: rpc <- api -> host; transports and facade know only rpc (DESIGN.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PIER = Path(__file__).resolve().parents[2] / "pier"

# For each package: the Pier modules it may import (by prefix).
ALLOWED = {
    "rpc": ("pier.rpc",),
    "host": ("pier.host", "pier.rpc.errors", "pier.rpc.threads", "pier.rpc.channels", "pier.rpc.dataplane"),
    "api": ("pier.api", "pier.rpc", "pier.host"),
    "transports": ("pier.transports", "pier.rpc"),
    "facade": ("pier.facade", "pier.rpc"),
}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_one_way(package: str) -> None:
    wrong = {
        f"{path.relative_to(PIER.parent)} imports {name}"
        for path in (PIER / package).rglob("*.py")
        for name in imports(path)
        if name.startswith("pier") and not name.startswith(ALLOWED[package])
    }
    assert not wrong, sorted(wrong)


def test_libvirt_is_touched_only_in_host() -> None:
    users = sorted(str(path.relative_to(PIER.parent)) for path in PIER.rglob("*.py")
                   if "libvirt" in {name.split(".")[0] for name in imports(path)})
    assert all(user.startswith("pier/host/") for user in users), users

