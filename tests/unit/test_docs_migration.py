"""docs/migrating-from-vdsm.md is generated from the schema, covers every verb, and is never stale."""

from __future__ import annotations

from pathlib import Path

from pier import docs
from pier.docs_migration import GUIDE_PATH, main, render_migration_markdown
from pier.rpc.schema import Schema
from pier.transports.xmlrpc import payload_key


def test_committed_guide_is_not_stale(schema: Schema) -> None:
    committed = GUIDE_PATH.read_text(encoding="utf-8") if GUIDE_PATH.exists() else ""
    assert render_migration_markdown(schema) == committed, \
        "docs/migrating-from-vdsm.md is stale (or missing); regenerate it with: python -m pier.docs"


def test_every_legacy_name_has_a_row_with_its_verb_route_and_payload_key(schema: Schema) -> None:
    text = render_migration_markdown(schema)
    rows = {line.split(" | ")[0].strip("| `"): line for line in text.splitlines() if line.startswith("| `")}
    for name, (verb, legacy) in schema.legacy.items():
        row = rows[name]
        assert f"| `{verb.name}` |" in row
        if legacy.payload == "*":
            assert "| (beside `status`) |" in row
        else:
            assert (f"| `{legacy.payload}` |" if legacy.payload else "| - (status only) |") in row
        for route in verb.rest:
            assert f"`{route.method} /api/v1{route.path}`" in row


def test_every_verb_without_a_legacy_name_is_listed_with_its_xmlrpc_key(schema: Schema) -> None:
    text = render_migration_markdown(schema)
    for verb in schema.verbs.values():
        if not verb.legacy:
            key = payload_key(schema, verb.name, verb)
            assert f"| `{verb.name}` |" in text
            assert f"| {f'`{key}`' if key else '- (status only)'} | {verb.summary} |" in text


def test_output_is_deterministic(schema: Schema) -> None:
    assert render_migration_markdown(schema) == render_migration_markdown(Schema.load())


def test_check_mode_reports_a_stale_guide_and_write_mode_fixes_it(tmp_path: Path, capsys) -> None:
    target = tmp_path / "guide.md"
    target.write_text("old\n", encoding="utf-8")
    assert main(["--check", "--output", str(target)]) == 1
    assert "run: python -m pier.docs" in capsys.readouterr().err
    assert main(["--output", str(target)]) == 0
    assert main(["--check", "--output", str(target)]) == 0


def test_pier_docs_checks_the_guide_too(tmp_path: Path, monkeypatch, capsys) -> None:
    stale = tmp_path / "guide.md"
    stale.write_text("old\n", encoding="utf-8")
    monkeypatch.setattr("pier.docs_migration.GUIDE_PATH", stale)
    assert docs.main(["--check"]) == 1
    assert "guide.md is stale; run: python -m pier.docs" in capsys.readouterr().err
