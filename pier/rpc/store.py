"""The state database: one sqlite file in the state directory, shared by events, tasks, credentials,
the audit log and the STOMP outbox and reply cache, each with tables of its own.

The state is private to pierd's user: its directory is 0700 and every database file 0600. sqlite
makes a database file 0644 and gives its -wal, -shm and -journal files the mode of the database
file, so the database file is made here, 0600, before sqlite opens it; nothing is ever readable
by others, not even for a moment. What an older pierd left looser is tightened, with a log line.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat

log = logging.getLogger("pier.rpc.store")

PRIVATE_DIRECTORY = 0o700
PRIVATE_FILE = 0o600
_SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def private_directory(path: str | os.PathLike[str], what: str = "directory") -> None:
    """Make directory `path` (its missing parents as usual) open to its owner only; an existing one
    that others could read or enter is tightened, with a log line naming it as `what`."""
    os.makedirs(path, mode=PRIVATE_DIRECTORY, exist_ok=True)
    _tighten(path, PRIVATE_DIRECTORY, what)


def private_file(path: str | os.PathLike[str], what: str = "file") -> None:
    """Make file `path` 0600 if it does not exist; tighten it (with a log line) if it is looser."""
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE))
    _tighten(path, PRIVATE_FILE, what)


def _tighten(path: str | os.PathLike[str], wanted: int, what: str) -> None:
    try:
        current = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:  # a companion file sqlite removed meanwhile
        return
    if current & ~wanted:
        os.chmod(path, current & wanted)
        log.warning("%s %s was readable by others (mode %o); it is now %o", what, os.fspath(path), current,
                    current & wanted)


def open_state(db_path: str, *schema: str) -> sqlite3.Connection:
    """A connection any thread may use (each owner serialises its own calls), in autocommit mode,
    with write-ahead logging so readers never wait for a writer, and with `schema` applied.

    The database file and sqlite's companion files are 0600 (see the module's docstring)."""
    if db_path != ":memory:" and not db_path.startswith("file:"):
        private_file(db_path, "state database")
        for suffix in _SQLITE_COMPANIONS:  # left by an older pierd; sqlite keeps an existing file's mode
            _tighten(db_path + suffix, PRIVATE_FILE, "state database file")
    db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None, timeout=10)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    for statement in schema:
        db.execute(statement)
    return db


def inserted_rowid(cursor: sqlite3.Cursor) -> int:
    """The rowid of the row the INSERT just run on `cursor` made."""
    rowid = cursor.lastrowid
    if rowid is None:  # sqlite3 gives None only when the statement inserted nothing
        raise RuntimeError("the statement inserted no row")
    return rowid
