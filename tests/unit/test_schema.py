"""The schema loader and its one `$ref` resolver."""

from __future__ import annotations

import pytest

from pier.rpc.schema import SchemaError, deref, ref_name, refs

DEFS = {
    "UUID": {"type": "string", "description": "A UUID."},
    "VmId": {"$ref": "#/$defs/UUID", "description": "A VM's id."},
    "Loop": {"$ref": "#/$defs/Round"},
    "Round": {"$ref": "#/$defs/Loop"},
}


def test_ref_name_reads_only_references_into_defs() -> None:
    assert ref_name({"$ref": "#/$defs/UUID"}) == "UUID"
    assert ref_name({"$ref": "other.yml#/$defs/UUID"}) is None
    assert ref_name({"type": "string"}) is None
    assert ref_name("#/$defs/UUID") is None


def test_deref_follows_chains_and_the_keys_beside_a_ref_win() -> None:
    assert deref({"$ref": "#/$defs/VmId", "default": "x"}, DEFS) == {
        "type": "string", "description": "A VM's id.", "default": "x"}
    assert deref({"type": "integer"}, DEFS) == {"type": "integer"}


def test_deref_names_a_reference_to_nothing_and_a_cycle() -> None:
    with pytest.raises(SchemaError, match="'#/\\$defs/Nope' refers to no type"):
        deref({"$ref": "#/$defs/Nope"}, DEFS)
    with pytest.raises(SchemaError, match="Loop -> Round -> Loop go round in a circle"):
        deref({"$ref": "#/$defs/Loop"}, DEFS)


def test_refs_finds_every_reference_in_schemas_but_none_in_values_or_names() -> None:
    node = {
        "type": "object",
        "properties": {"$ref": {"type": "string"}, "vm": {"$ref": "#/$defs/VmId"},
                       "disks": {"type": "array", "items": {"anyOf": [{"$ref": "#/$defs/Disk"}, {"type": "null"}]}}},
        "additionalProperties": {"$ref": "#/$defs/Extra"},
        "default": {"$ref": "#/$defs/NotASchema"},
        "enum": [{"$ref": "#/$defs/NotASchema"}],
        "allOf": [{"$ref": "elsewhere.yml#/X"}],
    }
    assert sorted(refs(node)) == [("#/$defs/Disk", "Disk"), ("#/$defs/Extra", "Extra"),
                                  ("#/$defs/VmId", "VmId"), ("elsewhere.yml#/X", "")]
