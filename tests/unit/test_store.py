"""The state is private to pierd's user: the state directory 0700, the database and sqlite's
companion files 0600, the TLS directory 0700 and its keys 0600; what an older pierd left looser is
tightened, with a log line."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from pier.rpc.store import open_state, private_directory
from pier.tlsfiles import init_tls, renew_server


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def usual_umask() -> None:
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_new_state_database_and_its_companions_are_private(tmp_path: Path, usual_umask: None) -> None:
    db_path = tmp_path / "state" / "pier.db"
    private_directory(db_path.parent, "state directory")
    db = open_state(str(db_path), "CREATE TABLE t (x TEXT)")
    db.execute("INSERT INTO t VALUES ('x')")
    try:
        files = {path.name: mode(path) for path in db_path.parent.iterdir()}
        assert files == {"pier.db": 0o600, "pier.db-wal": 0o600, "pier.db-shm": 0o600}
        assert mode(db_path.parent) == 0o700
    finally:
        db.close()


def test_state_an_older_pierd_left_readable_is_tightened(tmp_path: Path, usual_umask: None,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    older = sqlite3.connect(state / "pier.db", isolation_level=None)  # sqlite's own modes: 0644
    older.execute("PRAGMA journal_mode=WAL")
    older.execute("CREATE TABLE t (x TEXT)")
    older.execute("INSERT INTO t VALUES ('x')")
    assert mode(state / "pier.db-wal") == 0o644
    caplog.set_level(logging.WARNING, "pier.rpc.store")
    private_directory(state, "state directory")
    db = open_state(str(state / "pier.db"))
    try:
        assert mode(state) == 0o700
        assert {path.name: mode(path) for path in state.iterdir()} == \
            {"pier.db": 0o600, "pier.db-wal": 0o600, "pier.db-shm": 0o600}
        assert f"state directory {state} was readable by others (mode 755); it is now 700" in caplog.text
        assert f"state database {state / 'pier.db'} was readable by others (mode 644)" in caplog.text
        assert db.execute("SELECT x FROM t").fetchall() == [("x",)]
    finally:
        db.close()
        older.close()


def test_the_tls_directory_and_keys_are_private(tmp_path: Path, usual_umask: None) -> None:
    files = init_tls(tmp_path / "tls", "host.example")
    assert mode(files.directory) == 0o700
    assert {path.name: mode(path) for path in files.directory.iterdir()} == {
        "ca.pem": 0o644, "server.pem": 0o644, "client.pem": 0o644,
        "ca-key.pem": 0o600, "server-key.pem": 0o600, "client-key.pem": 0o600}
    files.server_key.chmod(0o644)  # as an older version, or an admin, left it
    renew_server(files.directory, "host.example")
    assert mode(files.server_key) == 0o600
    assert sorted(path.name for path in files.directory.iterdir()) == [
        "ca-key.pem", "ca.pem", "client-key.pem", "client.pem", "server-key.pem", "server.pem"]
