"""docs/api.md is generated from the schema, complete, and never stale."""

from __future__ import annotations

import re
from pathlib import Path

from pier.docs import API_DOC_PATH, main, render_api_markdown
from pier.rpc.errors import error_by_name
from pier.rpc.schema import Schema


def test_committed_api_doc_is_not_stale(schema: Schema) -> None:
    committed = API_DOC_PATH.read_text(encoding="utf-8") if API_DOC_PATH.exists() else ""
    assert render_api_markdown(schema) == committed, \
        "docs/api.md is stale (or missing); regenerate it with: python -m pier.docs"


def test_every_verb_and_type_has_a_section(schema: Schema) -> None:
    text = render_api_markdown(schema)
    headings = set(re.findall(r"^### (\S+)$", text, flags=re.MULTILINE))
    assert set(schema.verbs) <= headings
    assert set(schema.defs) <= headings


def test_a_verb_section_carries_everything_the_schema_says(schema: Schema) -> None:
    text = render_api_markdown(schema)
    for verb in schema.verbs.values():
        section = text.split(f"\n### {verb.name}\n", 1)[1].split("\n### ", 1)[0]
        assert verb.summary in section and f"**Role:** {verb.role}" in section
        assert ("**Task:** yes" in section) == verb.task
        for name in verb.params:
            assert f"| `{name}` |" in section
        for error in verb.errors:
            cls = error_by_name(error)
            assert f"| {cls.code} | `{cls.name}` | {cls.http_status} |" in section
        for legacy in verb.legacy:
            assert f"`{legacy.name}`" in section
        for route in verb.rest:
            assert f"`{route.method} /api/v1{route.path}`" in section


def test_every_link_points_at_a_heading(schema: Schema) -> None:
    text = render_api_markdown(schema)
    anchors = {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
               for heading in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}
    targets = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert targets and targets <= anchors


def test_output_is_deterministic(schema: Schema) -> None:
    assert render_api_markdown(schema) == render_api_markdown(Schema.load())


def test_check_mode_reports_a_stale_file_and_write_mode_fixes_it(tmp_path: Path, capsys) -> None:
    target = tmp_path / "api.md"
    target.write_text("old\n", encoding="utf-8")
    assert main(["--check", "--output", str(target)]) == 1
    assert "run: python -m pier.docs" in capsys.readouterr().err
    assert target.read_text(encoding="utf-8") == "old\n"
    assert main(["--output", str(target)]) == 0
    assert main(["--check", "--output", str(target)]) == 0
