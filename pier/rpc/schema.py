"""Loading pier/rpc/schema/*.yml: the one place where verbs are declared.

A `Schema` holds one `Verb` per declared verb with its params (as JSON Schema, compiled once
with fastjsonschema), returns, errors, legacy names, task flag, role and REST routes. The
registry, the transports, the REST facade, OpenAPI, the CLI and the docs all read it from here.

The schema is one file per verb namespace (host.yml, vm.yml, ...; security.yml holds the
credential verbs) plus shared type files; index.yml holds the API's `info` and lists the files.
`Schema.load` reads them, in that order, into one set of verbs and one set of types (`$defs`),
which every file's `$ref: '#/$defs/Name'` points into; `ref_name`, `deref` and `refs` are the one
way to follow those references.

`secret: true` on a param, or on a property anywhere in a verb's params or returns (directly or
in a `$defs` type they refer to), marks a secret: the verb's `secrets` (params) and
`result_secrets` (result) name them, and whatever stores or logs a call redacts them. The mark is
Pier's own and is removed from the schemas everything else reads. A task verb's secret params are
redacted in the task table (its handler gets them, its reconciler does not); it may have no secret
result, which is kept in the task table and sent in its events.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastjsonschema
import yaml

from pier.rpc.errors import InvalidParams, error_by_name

SCHEMA_DIR = Path(__file__).parent / "schema"
INDEX = "index.yml"
ROLES = ("viewer", "operator", "admin")
REF_PREFIX = "#/$defs/"
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_NAMED_SCHEMAS = frozenset({"properties", "$defs", "definitions", "patternProperties"})
_VALUES = frozenset({"enum", "const", "default", "examples"})


class SchemaError(ValueError):
    """The schema cannot be loaded: what is wrong, and where."""


if TYPE_CHECKING:  # both offer the same SafeConstructor API; the stubs cannot say which one is built in
    _SafeLoader = yaml.SafeLoader
else:
    _SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, when PyYAML was built with it


class _UniqueKeyLoader(_SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"{key!r} is declared twice in one mapping",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    """One schema file as a mapping; SchemaError naming the file when it cannot be read or is no mapping."""
    try:
        with open(path, encoding="utf-8") as stream:
            document = yaml.load(stream, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        line = f", line {exc.problem_mark.line + 1}" if exc.problem_mark else ""
        raise SchemaError(f"{path.name}{line}: {exc.problem or exc}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise SchemaError(f"{path.name}: {exc}") from None
    if not isinstance(document, dict):
        raise SchemaError(f"{path.name}: a schema file must be a mapping")
    return document


# -- following `$ref`s: the one resolver everything that reads the schema uses --------------------


def ref_name(node: Any) -> str | None:
    """The name of the shared type `node` refers to (`{$ref: '#/$defs/UUID'}` gives 'UUID'), or None."""
    ref = node.get("$ref") if isinstance(node, Mapping) else None
    return ref[len(REF_PREFIX):] if isinstance(ref, str) and ref.startswith(REF_PREFIX) else None


def deref(node: Any, defs: Mapping[str, Any]) -> Any:
    """`node` with its `$ref` followed into `defs` (through types that are themselves references);
    the keys written beside a `$ref` (a description, a default) win over those of the type.

    A node that is no reference comes back as it is. Raises SchemaError on a reference to nothing
    or a cycle of references, which a loaded `Schema` has neither of.
    """
    followed: list[str] = []
    while (name := ref_name(node)) is not None:
        if name in followed:
            raise SchemaError(f"the $refs {' -> '.join([*followed, name])} go round in a circle")
        if name not in defs:
            raise SchemaError(f"{node['$ref']!r} refers to no type in $defs")
        followed.append(name)
        node = {**defs[name], **{key: value for key, value in node.items() if key != "$ref"}}
    return node


def refs(node: Any) -> Iterator[tuple[str, str]]:
    """Every `$ref` in the schema `node`, as (the `$ref` text, the type name or '' when it does not
    point into `$defs`); values (`enum`, `const`, `default`) are not schemas and are not searched."""
    pending = [node]
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            pending.extend(reversed(item))
        elif isinstance(item, Mapping):
            ref = item.get("$ref")
            if ref is not None:
                yield str(ref), ref_name(item) or ""
            for key, value in reversed(list(item.items())):
                if key in _NAMED_SCHEMAS and isinstance(value, Mapping):
                    pending.extend(reversed(list(value.values())))
                elif key not in _VALUES and key != "$ref":
                    pending.append(value)


@dataclass(frozen=True)
class Route:
    """One REST route of a verb, relative to /api/v1."""

    method: str
    path: str
    body: str | None = None
    status: int = 200
    stream: str | None = None
    location: str | None = None  # where what it creates is read: a GET route's path, {fields} of the result
    content: Mapping[str, str] | None = None  # {type: media type, field: result field (base64)}: a body of bytes

    @property
    def path_params(self) -> list[str]:
        return _PLACEHOLDER.findall(self.path)

    @property
    def shape(self) -> str:
        """The path with its placeholders blanked: routes of one shape answer the same URLs."""
        return path_shape(self.path)


def path_shape(path: str) -> str:
    """`path` with each `{name}` made `{}`."""
    return _PLACEHOLDER.sub("{}", path)


@dataclass(frozen=True)
class LegacyName:
    """A VDSM XML-RPC name of a verb, the envelope key its payload went under and, when VDSM's
    positional order differs from the verb's, that order (IGNORED for a param VDSM took that the
    verb has not, such as copyImage's vmUUID)."""

    name: str
    payload: str | None = None
    params: tuple[str, ...] | None = None
    sets: Mapping[str, Any] | None = None  # params this name always gives (forcedDetach...: force true)
    # params this name takes from inside a struct param (`from: {vmID: params.vmId}`, YAML's `from`)
    taken_from: Mapping[str, str] | None = None

    IGNORED = "-"

    def positions(self, verb: Verb) -> list[str]:
        """The params a positional call of this name gives, in order."""
        return list(self.params) if self.params is not None else list(verb.params)

    def complete(self, params: dict[str, Any], verb: Verb) -> dict[str, Any]:
        """`params` of a call of this name as the verb takes them: with the params the name always
        gives (`sets`), and each param it takes from inside a struct (`from`) when not given itself.
        Raises InvalidParams naming the struct's field when a required one is not there either."""
        completed = {**params, **(self.sets or {})}
        for param, path in (self.taken_from or {}).items():
            if param in completed:
                continue
            struct, key = path.split(".", 1)
            inside = completed.get(struct)
            if isinstance(inside, dict) and inside.get(key) is not None:
                completed[param] = inside[key]
            elif param in verb.required:
                raise InvalidParams(f"{self.name}: {path} is missing (the {param} of {verb.name})",
                                    data={"field": path, "verb": verb.name})
        return completed


@dataclass
class Verb:
    """One declared verb."""

    name: str
    summary: str
    role: str
    readonly: bool
    target: str | None
    params: dict[str, dict[str, Any]]
    required: list[str]
    returns: dict[str, Any]
    errors: list[str]
    legacy: list[LegacyName]
    task: bool
    rest: list[Route]
    preempts: bool
    secrets: list[str]
    params_schema: dict[str, Any] = field(repr=False)
    locks: tuple[str, ...] = ()
    rpc_only: str | None = None  # why the verb has no REST route (`rest: {none: <why>}`)
    waits: bool = False  # a task verb whose RPC answer comes when its task has ended (`waits`)
    task_id: str | None = None  # the param whose value is the task's id (VDSM's job_id), when not made up
    result_secrets: frozenset[str] = frozenset()
    _validator: Callable[[Any], dict[str, Any]] | None = field(default=None, repr=False)
    _option_validators: dict[str, Callable[[Any], Any]] = field(default_factory=dict, repr=False)

    @property
    def namespace(self) -> str:
        return self.name.split(".", 1)[0]

    def target_of(self, params: dict[str, Any]) -> str | None:
        """The object this call acts on: the first of the `target` paths ('vmID|vmParams.vmId') given."""
        return _first_given(self.target, params)

    def lock_keys(self, params: dict[str, Any]) -> list[str]:
        """What a changing call with `params` locks: the value of each of the `locks` entries given
        (a VM id and a destination host, ...), each once, in declared order."""
        keys = (_first_given(entry, params) for entry in self.locks)
        return list(dict.fromkeys(key for key in keys if key is not None))

    def validate(self, params: Any) -> dict[str, Any]:
        """Check `params` (by name, or by position in declared order) and fill defaults.

        Raises InvalidParams naming the offending field.
        """
        if params is None:
            params = {}
        elif isinstance(params, list):
            params = self.positional_to_named(params)
        elif not isinstance(params, dict):
            raise InvalidParams("params must be an object or an array", data={"field": "params"})
        else:
            params = dict(params)
        try:
            return (self._validator or self.compile())(params)
        except fastjsonschema.JsonSchemaValueException as exc:
            exc = self._narrowed(exc)
            raise InvalidParams(_describe(exc), data={"field": _field(exc), "verb": self.name}) from None

    def _narrowed(self, exc: fastjsonschema.JsonSchemaValueException) -> fastjsonschema.JsonSchemaValueException:
        """For a value that failed a discriminated anyOf (one option per value of a `const` property,
        as VmDevice's per deviceType), the error of the option its discriminator picks: 'path is
        missing' rather than 'must be a value or a value'."""
        option = _picked_option(exc)
        if option is None:
            return exc
        key = json.dumps(option, sort_keys=True)
        validator = self._option_validators.get(key)
        if validator is None:
            validator = fastjsonschema.compile({**option, "$defs": self.params_schema.get("$defs", {})})
            self._option_validators[key] = validator
        try:
            validator(copy.deepcopy(exc.value))
        except fastjsonschema.JsonSchemaValueException as inner:
            prefix = exc.name or "data"
            rebased = fastjsonschema.JsonSchemaValueException(
                prefix + inner.message[len("data"):] if inner.message.startswith("data") else inner.message,
                inner.value, prefix + (inner.name or "data")[len("data"):], inner.definition, inner.rule)
            return self._narrowed(rebased)
        return exc

    def compile(self) -> Callable[[Any], dict[str, Any]]:
        """The params validator, compiled on first use: compiling every verb's at start-up took
        ~100 ms and, for VM.create alone, a 6 MB peak that stayed in the idle agent's RSS."""
        if self._validator is None:  # two first calls at once both compile; either result is right
            self._validator = fastjsonschema.compile(_without_annotations(self.params_schema))
        return self._validator

    def positional_to_named(self, values: list[Any]) -> dict[str, Any]:
        names = list(self.params)
        if len(values) > len(names):
            raise InvalidParams(
                f"{self.name} takes at most {len(names)} positional params, got {len(values)}",
                data={"field": "params"},
            )
        # A null in an optional position means "not given", as XML-RPC clients send it.
        return {name: value for name, value in zip(names, values, strict=False)
                if value is not None or name in self.required}


def _legacy_name(spec: dict[str, Any], params: dict[str, Any], required: list[str]) -> LegacyName:
    spec = dict(spec)
    taken = spec.pop("from", None)
    unknown_sets = [name for name in spec.get("sets") or {} if name not in params]
    if unknown_sets:
        raise ValueError(f"legacy {spec.get('name')}: sets unknown params {unknown_sets}")
    if taken is not None:
        bad = [f"{name}: {path}" for name, path in taken.items() if name not in params or not isinstance(path, str)
               or "." not in path or path.split(".", 1)[0] not in params or path.split(".", 1)[0] == name]
        if bad or not isinstance(taken, dict) or not taken:
            raise ValueError(f"legacy {spec.get('name')}: `from` maps a verb param to <struct param>.<key> "
                             f"of another param: {bad or taken}")
        spec["taken_from"] = dict(taken)
    order = spec.get("params")
    if order is None:
        return LegacyName(**spec)
    unknown = [name for name in order if name != LegacyName.IGNORED and name not in params]
    missing = [name for name in required if name not in order and name not in (taken or {})]
    if unknown or missing or len(set(order) - {LegacyName.IGNORED}) != len(order) - order.count(LegacyName.IGNORED):
        raise ValueError(f"legacy {spec.get('name')}: params must name each of the verb's params at most once "
                         f"and every required one (unknown {unknown}, missing {missing})")
    return LegacyName(**{**spec, "params": tuple(order)})


def reading_routes(verbs: Mapping[str, Verb]) -> dict[str, Route]:
    """The GET routes of `verbs` that read one object (a path param, no stream), by shape; the first
    declared of a shape."""
    found: dict[str, Route] = {}
    for verb in verbs.values():
        for route in verb.rest:
            if route.method == "GET" and route.path_params and not route.stream:
                found.setdefault(route.shape, route)
    return found


_ITEM = re.compile(r"^(?P<path>.+)\[(?P<index>\d+)\]$")


def _first_given(paths: str | None, params: dict[str, Any]) -> str | None:
    """The first non-empty text among params at `paths` ('vmID|vmParams.vmId'), or None. A path
    ending in `[n]` names the n-th (from 0) of a comma-separated list of ids in that param (VDSM's
    six-id memory handle), stripped and lowercased."""
    for path in (paths or "").split("|"):
        item = _ITEM.match(path)
        value: Any = params
        for key in (item.group("path") if item else path).split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if item and isinstance(value, str):
            parts = value.split(",")
            index = int(item.group("index"))
            value = parts[index].strip().lower() if index < len(parts) else None
        if isinstance(value, str) and value:
            return value
    return None


_ANNOTATIONS = frozenset({"description", "title", "examples"})


def _without_annotations(schema: Any) -> Any:
    """A copy of `schema` without the keys validation ignores: fastjsonschema writes each rule's
    whole definition into the code it generates, and VM.create's descriptions tripled its size."""
    if isinstance(schema, list):
        return [_without_annotations(item) for item in schema]
    if not isinstance(schema, dict):
        return copy.deepcopy(schema)
    return {key: (copy.deepcopy(value) if key in _VALUES else
                  {name: _without_annotations(child) for name, child in value.items()}
                  if key in _NAMED_SCHEMAS and isinstance(value, dict) else _without_annotations(value))
            for key, value in schema.items() if key not in _ANNOTATIONS}


def _field(exc: fastjsonschema.JsonSchemaValueException) -> str:
    name = exc.name or "data"  # the validators fastjsonschema generates always name the path
    return "params" + (name[len("data"):] if name.startswith("data") else "." + name)


def _describe(exc: fastjsonschema.JsonSchemaValueException) -> str:
    message = exc.message
    if message.startswith("data"):
        message = "params" + message[len("data"):]
    if exc.rule == "required":
        missing = [name for name in exc.rule_definition if not _has(exc.value, name)]
        where = _field(exc)
        return f"{where} is missing required field {', '.join(repr(m) for m in missing)}"
    if exc.rule == "additionalProperties":
        return message.replace("must not contain", "has unknown field(s)").replace(" properties", "")
    if exc.rule == "anyOf" and all(isinstance(option, dict) and "required" in option
                                   for option in exc.rule_definition):
        needs = ", or ".join(" and ".join(option["required"]) for option in exc.rule_definition)
        return f"{_field(exc)} needs {needs}"
    if exc.rule == "anyOf":
        return f"{_field(exc)} must be {' or '.join(_alternative(option) for option in exc.rule_definition)}"
    return message


def _picked_option(exc: fastjsonschema.JsonSchemaValueException) -> dict[str, Any] | None:
    """The one anyOf option whose `const` property the failing value matches (None: not such an anyOf)."""
    if exc.rule != "anyOf" or not isinstance(exc.value, dict) or not isinstance(exc.rule_definition, list):
        return None
    picked = []
    for option in exc.rule_definition:
        consts = {name: spec["const"] for name, spec in ((option or {}).get("properties") or {}).items()
                  if isinstance(spec, dict) and "const" in spec} if isinstance(option, dict) else {}
        if consts and all(exc.value.get(name) == value for name, value in consts.items()):
            picked.append(option)
    return picked[0] if len(picked) == 1 else None


def _alternative(option: Any) -> str:
    """How one `anyOf` option reads in an error message ("a boolean", "one of 'true', 'false'")."""
    if not isinstance(option, dict):
        return repr(option)
    if "enum" in option:
        return "one of " + ", ".join(repr(value) for value in option["enum"])
    kind = option.get("type", "a value")
    text = {"integer": "an integer", "string": "a string", "boolean": "a boolean", "object": "an object",
            "array": "an array", "number": "a number"}.get(kind, str(kind))
    if "minimum" in option:
        text += f" of at least {option['minimum']}"
    if "pattern" in option:
        text += f" matching {option['pattern']}"
    return text


def _has(value: Any, name: str) -> bool:
    return isinstance(value, dict) and name in value


def _marked_secret(node: Any, defs: dict[str, Any]) -> set[str]:
    """The names of the properties marked `secret: true` anywhere in schema `node`, following
    `$ref`s into `defs`."""
    found: set[str] = set()
    followed: set[str] = set()
    pending = [node]
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            pending.extend(item)
        if not isinstance(item, dict):
            continue
        type_name = ref_name(item)
        if type_name is not None and type_name not in followed:
            followed.add(type_name)
            pending.append(defs.get(type_name))
        for key, value in item.items():
            if key in ("properties", "patternProperties") and isinstance(value, dict):
                found.update(name for name, child in value.items()
                             if isinstance(child, dict) and child.get("secret") is True)
                pending.extend(value.values())
            elif key not in _VALUES:
                pending.append(value)
    return found


def _unmarked(node: Any, names: bool = False) -> Any:
    """A copy of schema `node` without Pier's `secret` marks (`names`: `node` maps names to schemas)."""
    if isinstance(node, list):
        return [_unmarked(item) for item in node]
    if not isinstance(node, dict):
        return node
    if names:
        return {name: _unmarked(child) for name, child in node.items()}
    return {key: value if key in _VALUES else _unmarked(value, key in _NAMED_SCHEMAS)
            for key, value in node.items() if not (key == "secret" and isinstance(value, bool))}


class Schema:
    """Every declared verb, plus the shared type definitions (`$defs`).

    `origins` names the file each verb and type came from ('verb VM.create' -> 'vm.yml'), for the
    messages of a schema that cannot be loaded.
    """

    def __init__(self, document: dict[str, Any], *, origins: Mapping[str, str] | None = None) -> None:
        self._origins = dict(origins or {})
        self.info: dict[str, Any] = document.get("info", {})
        self._marked_defs: dict[str, Any] = document.get("$defs") or {}
        self._check_refs(document)
        self.defs: dict[str, Any] = _unmarked(self._marked_defs, names=True)
        self.verbs: dict[str, Verb] = {}
        self.legacy: dict[str, tuple[Verb, LegacyName]] = {}
        declared = document.get("verbs") or {}
        for name, spec in declared.items():
            try:
                if not isinstance(spec or {}, dict):
                    raise ValueError("a verb is a mapping of summary, params, returns, ...")
                verb = self._build(name, spec or {})
            except (TypeError, ValueError) as exc:
                raise SchemaError(f"{self._origin('verb', name)}: {name}: {exc}") from None
            self.verbs[name] = verb
            for legacy in verb.legacy:
                if legacy.name in self.legacy or legacy.name in declared:
                    raise SchemaError(f"{self._origin('verb', name)}: legacy name {legacy.name!r} of {name} "
                                      "is declared twice")
                self.legacy[legacy.name] = (verb, legacy)
        self._check_locations()

    @classmethod
    def load(cls, directory: Path = SCHEMA_DIR) -> Schema:
        """The schema in `directory`: its index.yml and every file the index lists, in that order.

        Raises SchemaError naming the file when a file is not listed or not there, a verb or type is
        declared twice (in one file or two), or a `$ref` points to no declared type.
        """
        index = _read_yaml(directory / INDEX)
        files = index.get("files")
        if not files or not isinstance(files, list) or not all(isinstance(name, str) for name in files):
            raise SchemaError(f"{INDEX}: `files` must list the schema files")
        unlisted = sorted(path.name for path in directory.glob("*.yml") if path.name not in (INDEX, *files))
        if unlisted:
            raise SchemaError(f"{', '.join(unlisted)}: not listed in {INDEX}'s `files`, so nothing in it would be "
                              "served")
        document: dict[str, Any] = {"info": index.get("info") or {}, "verbs": {}, "$defs": {}}
        origins: dict[str, str] = {}
        for name in files:
            part = _read_yaml(directory / name)
            unknown = sorted(set(part) - {"verbs", "$defs"})
            if unknown:
                raise SchemaError(f"{name}: unknown top-level keys {unknown}; a schema file holds `verbs` and `$defs`")
            for section, kind in (("verbs", "verb"), ("$defs", "type")):
                entries = part.get(section) or {}
                if not isinstance(entries, dict):
                    raise SchemaError(f"{name}: `{section}` must be a mapping of names")
                for key, value in entries.items():
                    first = origins.setdefault(f"{kind} {key}", name)
                    if first != name:
                        raise SchemaError(f"{name}: {kind} {key} is declared twice, in {first} and in {name}")
                    document[section][key] = value
        return cls(document, origins=origins)

    def _origin(self, kind: str, name: str) -> str:
        return self._origins.get(f"{kind} {name}", "the schema")

    def _check_locations(self) -> None:
        """Refuse a `location` that no GET route answers, names a field the verb does not return,
        or is on a route that creates nothing; and a task verb's route without one."""
        readers = reading_routes(self.verbs)
        for verb in self.verbs.values():
            fields = self.deref(verb.returns).get("properties") or {}
            for route in verb.rest:
                where = f"{self._origin('verb', verb.name)}: {verb.name}: route {route.method} {route.path}"
                if route.location is None:
                    if verb.task:
                        raise SchemaError(f"{where}: a task verb's route needs a location (where the task is read)")
                    continue
                if not verb.task and route.status not in (201, 202):
                    raise SchemaError(f"{where}: only a route answering 201 or 202 has a location")
                if path_shape(route.location) not in readers:
                    raise SchemaError(f"{where}: location {route.location} is no GET route")
                unknown = [name for name in _PLACEHOLDER.findall(route.location) if name not in fields]
                if unknown:
                    raise SchemaError(f"{where}: location {route.location} names {', '.join(unknown)}, which "
                                      f"{verb.name} does not return")

    def _check_refs(self, document: dict[str, Any]) -> None:
        """Refuse a `$ref` that is not '#/$defs/<Name>' or names no declared type, and a cycle of them."""
        for name, definition in self._marked_defs.items():
            if not isinstance(definition, dict):
                raise SchemaError(f"{self._origin('type', name)}: type {name} must be a JSON Schema object")
        places = [("type", name, definition) for name, definition in self._marked_defs.items()]
        places += [("verb", name, spec) for name, spec in (document.get("verbs") or {}).items()]
        for kind, name, node in places:
            for ref, type_name in refs(node):
                if not type_name:
                    raise SchemaError(f"{self._origin(kind, name)}: {kind} {name} has $ref {ref!r}; only "
                                      f"'{REF_PREFIX}<Name>' is supported")
                if type_name not in self._marked_defs:
                    raise SchemaError(f"{self._origin(kind, name)}: {kind} {name} refers to {ref!r}, which no "
                                      "schema file declares")
        for name in self._marked_defs:
            try:
                deref({"$ref": REF_PREFIX + name}, self._marked_defs)
            except SchemaError as exc:
                raise SchemaError(f"{self._origin('type', name)}: {exc}") from None

    def deref(self, node: Any) -> Any:
        """Schema `node` with its `$ref` followed into this schema's `$defs` (see `deref`)."""
        return deref(node, self.defs)

    def resolve(self, name: str) -> Verb | None:
        """The verb called `name`, directly or by one of its legacy names."""
        verb = self.verbs.get(name)
        if verb is None and name in self.legacy:
            verb = self.legacy[name][0]
        return verb

    def _reachable_defs(self, node: Any) -> dict[str, Any]:
        """The `$defs` entries `node` refers to, directly or through other entries."""
        found: dict[str, Any] = {}
        pending = [node]
        while pending:
            for _, name in refs(pending.pop()):
                if name and name not in found:
                    found[name] = self.defs[name]
                    pending.append(found[name])
        return found

    def _build(self, name: str, spec: dict[str, Any]) -> Verb:
        role = spec.get("role", "admin")
        if role not in ROLES:
            raise ValueError(f"role {role!r} is not one of {ROLES}")
        params: dict[str, dict[str, Any]] = {}
        required: list[str] = []
        secrets: list[str] = []
        for pname, pschema in (spec.get("params") or {}).items():
            pschema = dict(pschema or {})
            optional = pschema.pop("optional", False)
            if pschema.pop("secret", False):
                secrets.append(pname)
            if not optional and "default" not in pschema:
                required.append(pname)
            params[pname] = pschema
        secrets += sorted(_marked_secret({"properties": params}, self._marked_defs) - set(secrets))
        params = _unmarked(params, names=True)
        result_secrets = frozenset(_marked_secret(spec.get("returns"), self._marked_defs))
        task = bool(spec.get("task", False))
        waits = bool(spec.get("waits", False))
        if waits and not task:
            raise ValueError("waits is for a task verb: a plain verb always answers when it is done")
        task_id = spec.get("task_id")
        if task_id is not None and (not task or task_id not in (spec.get("params") or {})):
            raise ValueError(f"task_id {task_id!r} must name a param of a task verb")
        if task and result_secrets:
            raise ValueError(f"a task verb cannot have secret results ({sorted(result_secrets)}): "
                             "its result is kept in the task table, and its events carry it")
        for error in spec.get("errors", []):
            try:
                error_by_name(error)
            except KeyError:
                raise ValueError(f"error {error!r} is not in pier/rpc/errors.py") from None
        params_schema = {
            "type": "object",
            "properties": params,
            "required": required,
            "additionalProperties": False,
            "$defs": self._reachable_defs(params),
        }
        rest = spec.get("rest", [])
        rpc_only = rest.get("none") if isinstance(rest, dict) else None
        if not (isinstance(rest, list) and all(isinstance(route, dict) for route in rest)
                or isinstance(rest, dict) and set(rest) == {"none"} and isinstance(rpc_only, str) and rpc_only):
            raise ValueError("rest must be a list of routes, or {none: <why the verb has no route>}")
        routes = [] if rpc_only else [Route(**route) for route in rest]
        for route in routes:
            if route.content is not None and not (
                    isinstance(route.content, Mapping) and set(route.content) == {"type", "field"}
                    and all(isinstance(v, str) and v for v in route.content.values())):
                raise ValueError(f"route {route.path}: content must be {{type: <media type>, field: <result field>}}")
            unknown = [p for p in route.path_params if p not in params]
            if unknown or (route.body and route.body not in params):
                raise ValueError(f"route {route.path} names unknown params {unknown or route.body}")
        target = spec.get("target")
        locks = spec.get("locks", [target] if target else [])
        if not isinstance(locks, list) or not all(isinstance(entry, str) and entry for entry in locks):
            raise ValueError("locks must be a list of params, e.g. [vmID, dst]")
        target = target or (locks[0] if locks else None)
        for entry in [target or "", *locks]:
            for path in entry.split("|"):
                if path and _ITEM.sub(r"\g<path>", path).split(".")[0] not in params:
                    raise ValueError(f"target or lock {path!r} is not a param")
        return Verb(
            name=name,
            summary=spec.get("summary", ""),
            role=role,
            readonly=bool(spec.get("readonly", False)),
            target=target,
            locks=tuple(locks),
            params=params,
            required=required,
            returns=_unmarked(spec.get("returns", {"const": True})),
            errors=list(spec.get("errors", [])),
            legacy=[_legacy_name(legacy, params, required) for legacy in spec.get("legacy", [])],
            task=task,
            rest=routes,
            rpc_only=rpc_only,
            preempts=bool(spec.get("preempts", False)),
            waits=waits,
            task_id=task_id,
            secrets=secrets,
            params_schema=params_schema,
            result_secrets=result_secrets,
        )
