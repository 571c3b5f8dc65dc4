"""The state database: one sqlite file in the state directory, shared by events, tasks, credentials,
the audit log and the STOMP outbox and reply cache, each with tables of its own."""

from __future__ import annotations

import sqlite3


def open_state(db_path: str, *schema: str) -> sqlite3.Connection:
    """A connection any thread may use (each owner serialises its own calls), in autocommit mode,
    with write-ahead logging so readers never wait for a writer, and with `schema` applied."""
    db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None, timeout=10)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    for statement in schema:
        db.execute(statement)
    return db
