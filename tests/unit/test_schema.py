"""The schema loader and its one `$ref` resolver."""

from __future__ import annotations

import fnmatch
import shutil
import tomllib
from pathlib import Path

import pytest

from pier.facade.openapi import openapi_document
from pier.rpc.schema import SCHEMA_DIR, Schema, SchemaError, deref, ref_name, refs

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



# -- loading the schema from its files ----------------------------------------------------------


@pytest.fixture
def schema_dir(tmp_path: Path) -> Path:
    """A copy of the real schema files, to break."""
    copied = tmp_path / "schema"
    shutil.copytree(SCHEMA_DIR, copied)
    return copied


def add(path: Path, section: str, entry: str) -> None:
    """Put the one-line `entry` first in the `section` ('verbs' or '$defs') of schema file `path`."""
    text = path.read_text(encoding="utf-8")
    if f"\n{section}:\n" not in "\n" + text:
        text += f"\n{section}:\n"
    head, _, rest = ("\n" + text).partition(f"\n{section}:\n")
    path.write_text(f"{head[1:]}\n{section}:\n  {entry}\n{rest}", encoding="utf-8")


def test_the_files_load_into_one_schema_in_the_order_the_index_lists(schema_dir: Path) -> None:
    schema = Schema.load(schema_dir)
    assert list(schema.verbs)[:2] == ["Host.getAgentInfo", "Host.ping2"]
    assert list(schema.defs)[:3] == ["UUID", "VmStatus", "AgentInfo"]
    assert schema.deref(schema.verbs["Task.stop"].params["taskID"])["type"] == "string"  # task.yml -> types.yml


def test_a_verb_declared_in_two_files_names_both(schema_dir: Path) -> None:
    add(schema_dir / "security.yml", "verbs", "VM.reset: {summary: again}")
    with pytest.raises(SchemaError, match=r"^security\.yml: verb VM\.reset is declared twice, in vm\.yml and in "
                                          r"security\.yml$"):
        Schema.load(schema_dir)


def test_a_verb_declared_twice_in_one_file_names_the_file_and_line(schema_dir: Path) -> None:
    add(schema_dir / "vm.yml", "verbs", "VM.reset: {summary: again}")
    with pytest.raises(SchemaError, match=r"^vm\.yml, line \d+: 'VM\.reset' is declared twice in one mapping$"):
        Schema.load(schema_dir)


def test_a_type_declared_in_two_files_names_both(schema_dir: Path) -> None:
    add(schema_dir / "events.yml", "$defs", "UUID: {type: string}")
    with pytest.raises(SchemaError, match=r"^events\.yml: type UUID is declared twice, in types\.yml and in "
                                          r"events\.yml$"):
        Schema.load(schema_dir)


@pytest.mark.parametrize("file, section, entry, message", [
    ("task.yml", "verbs", "Task.peek: {params: {taskID: {$ref: '#/$defs/TaskId'}}}",
     r"^task\.yml: verb Task\.peek refers to '#/\$defs/TaskId', which no schema file declares$"),
    ("types.yml", "$defs", "Pair: {type: array, items: {$ref: '#/$defs/Half'}}",
     r"^types\.yml: type Pair refers to '#/\$defs/Half', which no schema file declares$"),
    ("host.yml", "$defs", "Id: {$ref: 'types.yml#/$defs/UUID'}",
     r"^host\.yml: type Id has \$ref 'types\.yml#/\$defs/UUID'; only '#/\$defs/<Name>' is supported$"),
    ("vm.yml", "$defs", "Ping: {$ref: '#/$defs/Pong'}\n  Pong: {$ref: '#/$defs/Ping'}",
     r"^vm\.yml: the \$refs Ping -> Pong -> Ping go round in a circle$"),
])
def test_a_ref_to_nothing_fails_the_load_naming_the_file(schema_dir: Path, file: str, section: str, entry: str,
                                                         message: str) -> None:
    add(schema_dir / file, section, entry)
    with pytest.raises(SchemaError, match=message):
        Schema.load(schema_dir)


def test_every_file_is_listed_and_every_listed_file_is_there(schema_dir: Path) -> None:
    (schema_dir / "extra.yml").write_text("verbs: {}\n", encoding="utf-8")
    with pytest.raises(SchemaError, match=r"^extra\.yml: not listed in index\.yml's `files`"):
        Schema.load(schema_dir)
    (schema_dir / "extra.yml").unlink()
    (schema_dir / "events.yml").unlink()
    with pytest.raises(SchemaError, match=r"^events\.yml: .*No such file"):
        Schema.load(schema_dir)


def test_an_error_inside_a_verb_names_its_file(schema_dir: Path) -> None:
    add(schema_dir / "events.yml", "verbs", "Events.peek: {role: root}")
    with pytest.raises(SchemaError, match=r"^events\.yml: Events\.peek: .*role 'root' is not one of"):
        Schema.load(schema_dir)


def test_the_package_ships_every_schema_file() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text(encoding="utf-8"))
    shipped = pyproject["tool"]["setuptools"]["package-data"]["pier.rpc"]
    package = SCHEMA_DIR.parent
    files = [path.relative_to(package).as_posix() for path in SCHEMA_DIR.iterdir()]
    assert files and all(any(fnmatch.fnmatch(name, pattern) for pattern in shipped) for name in files)


# -- the Location of what a route creates -------------------------------------------------------


def location_described(schema: Schema, method: str, path: str) -> str:
    """What the OpenAPI document says the Location header of `method path` points at."""
    success = openapi_document(schema)["paths"]["/api/v1" + path][method.lower()]["responses"]
    return next(iter(success.values()))["headers"]["Location"]["description"]


def test_a_location_is_the_one_declared_not_the_first_reader_of_the_same_type(schema_dir: Path) -> None:
    add(schema_dir / "host.yml", "verbs", "Host.getVmDefinition: {role: viewer, readonly: true, "
        "params: {vmID: {$ref: '#/$defs/UUID'}}, returns: {$ref: '#/$defs/VmDefinition'}, "
        "rest: [{method: GET, path: '/host/vms/{vmID}'}]}")
    schema = Schema.load(schema_dir)
    assert location_described(schema, "POST", "/vms") == "Where to read the result: /vms/{vmID} under /api/v1."


@pytest.mark.parametrize("old, new, message", [
    ("location: '/vms/{vmId}'", "location: '/vm/{vmId}'", r"route POST /vms: location /vm/\{vmId\} is no GET route"),
    ("location: '/vms/{vmId}'", "location: '/vms/{vmID}'",
     r"route POST /vms: location /vms/\{vmID\} names vmID, which VM.create does not return"),
    ("status: 201, location: '/vms/{vmId}'", "location: '/vms/{vmId}'",
     r"route POST /vms: only a route answering 201 or 202 has a location"),
    (", status: 202, location: '/tasks/{taskID}'", "",
     r"route POST /vms/\{vmID\}/shutdown: a task verb's route needs a location"),
])
def test_a_location_must_be_a_get_route_filled_from_the_result(schema_dir: Path, old: str, new: str,
                                                               message: str) -> None:
    vm = schema_dir / "vm.yml"
    text = vm.read_text(encoding="utf-8")
    assert text.count(old) == 1
    vm.write_text(text.replace(old, new), encoding="utf-8")
    with pytest.raises(SchemaError, match=r"^vm\.yml: VM\.\w+: " + message):
        Schema.load(schema_dir)


@pytest.mark.parametrize("rest", ["{none: ''}", "{none: yes}", "{none: why, also: what}", "none"])
def test_a_verb_without_routes_says_why_in_words(schema_dir: Path, rest: str) -> None:
    add(schema_dir / "events.yml", "verbs", f"Events.peek: {{rest: {rest}}}")
    with pytest.raises(SchemaError, match=r"^events\.yml: Events\.peek: rest must be a list of routes, or "
                                          r"\{none: <why the verb has no route>\}$"):
        Schema.load(schema_dir)
