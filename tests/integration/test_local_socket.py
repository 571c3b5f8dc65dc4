"""The local socket: 0660, owned by root and the admin group, which a real non-root member uses.

Needs root (it makes a group and two users, and removes them after). The client runs as those
users with the system's Python and only its standard library.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Pierd

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("useradd"),
                                reason="needs root to make a group and users")

CLIENT = """
import http.client, json, socket, sys
connection = http.client.HTTPConnection("localhost")
connection.sock = socket.socket(socket.AF_UNIX)
try:
    connection.sock.connect(sys.argv[1])
except PermissionError as exc:
    print(json.dumps({"refused": str(exc)}))
    sys.exit()
connection.request("POST", "/api/v1/tokens", body='{"role": "viewer"}', headers={"Content-Type": "application/json"})
answer = connection.getresponse()
print(json.dumps({"status": answer.status, "body": json.loads(answer.read())}))
"""


@pytest.fixture
def accounts() -> Iterator[tuple[str, str, str]]:
    """A group, a user in it and a user outside it, all made for this test."""
    tag = uuid.uuid4().hex[:6]
    group, member, stranger = f"piertest{tag}", f"piermember{tag}", f"pierstranger{tag}"
    subprocess.run(["groupadd", group], check=True)
    try:
        subprocess.run(["useradd", "--no-create-home", "--groups", group, member], check=True)
        subprocess.run(["useradd", "--no-create-home", stranger], check=True)
        yield group, member, stranger
    finally:
        for user in (member, stranger):
            subprocess.run(["userdel", user], capture_output=True)
        subprocess.run(["groupdel", group], capture_output=True)


def as_user(user: str, socket_path: str) -> dict:
    import json

    account = pwd.getpwnam(user)
    groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
    done = subprocess.run(["/usr/bin/python3", "-c", CLIENT, socket_path], user=account.pw_uid,
                          group=account.pw_gid, extra_groups=groups, capture_output=True, text=True, timeout=30,
                          cwd="/", env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_member_of_the_admin_group_is_an_admin_and_nobody_else_gets_in(
        accounts: tuple[str, str, str], tmp_path: Path, test_uri: str) -> None:
    group, member, stranger = accounts
    config = tmp_path / "pierd.toml"
    config.write_text(f'admin_group = "{group}"\n')
    place = Path(tempfile.mkdtemp(prefix="pier-socket-"))
    place.chmod(0o755)  # as /run/pier is
    socket_path = str(place / "pier.sock")
    daemon = Pierd(tmp_path / "state", test_uri, "--config", str(config), socket=socket_path)
    try:
        mode = os.stat(socket_path)
        assert stat.S_IMODE(mode.st_mode) == 0o660 and mode.st_uid == 0
        assert mode.st_gid == grp.getgrnam(group).gr_gid
        made = as_user(member, socket_path)
        assert made["status"] == 201 and made["body"]["token"].startswith("pier_")
        assert "refused" in as_user(stranger, socket_path)  # the socket's mode keeps it out
    finally:
        assert daemon.stop() == 0
        shutil.rmtree(place, ignore_errors=True)
