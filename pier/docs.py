"""docs/api.md, generated from the schema: every verb, its params, returns, errors and routes, then the types.

`render_api_markdown(Schema.load())` is deterministic. `python -m pier.docs` writes docs/api.md and
docs/migrating-from-vdsm.md (`pier.docs_migration`); `python -m pier.docs --check` exits 1 when a
committed file differs from what the schema gives.
The helpers describing a JSON Schema in words (`type_text`, `requirement_text`, `route_text`, ...) are
shared with `pier help VERB`, so the CLI and the docs always say the same thing.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pier.rpc.errors import PierError, all_error_classes, error_by_name
from pier.rpc.schema import Route, Schema, Verb, ref_name

API_DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "api.md"
REST_PREFIX = "/api/v1"


# -- describing a JSON Schema in words (shared with the CLI) ----------------------------------


def type_text(schema: dict[str, Any], link: Callable[[str], str] | None = None) -> str:
    """A JSON Schema's type in a few words: `integer (0 to 86400)`, `array of UUID`, `map of Task`.

    `link` turns a `$defs` name into what to show for it (a Markdown link in the docs).
    """
    link = link or (lambda name: name)
    if not schema:
        return "any"
    name = ref_name(schema)
    if name is not None:
        return link(name)
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return ("string, " if schema.get("type") == "string" else "") + "one of " + ", ".join(json.dumps(value) for value in schema["enum"])
    for combinator in ("anyOf", "oneOf"):
        if combinator in schema:
            return " or ".join(type_text(choice, link) for choice in schema[combinator])
    declared = schema.get("type", "any")
    parts = [_one_type(kind, schema, link) for kind in (declared if isinstance(declared, list) else [declared])]
    return " or ".join(parts) + _bounds(schema)


def _one_type(kind: str, schema: dict[str, Any], link: Callable[[str], str]) -> str:
    if kind == "array" and isinstance(schema.get("items"), dict):
        inner = type_text(schema["items"], link)
        return f"array of ({inner})" if " or " in inner else f"array of {inner}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        inner = type_text(schema["additionalProperties"], link)
        return f"map of ({inner})" if " or " in inner else f"map of {inner}"
    return kind


def _bounds(schema: dict[str, Any]) -> str:
    for low_key, high_key, what in (("minimum", "maximum", ""), ("minLength", "maxLength", "length ")):
        low, high = schema.get(low_key), schema.get(high_key)
        if low is not None and high is not None:
            return f" ({what}{low} to {high})"
        if low is not None:
            return f" ({what}>= {low})"
        if high is not None:
            return f" ({what}<= {high})"
    return ""


def requirement_text(verb: Verb, param: str) -> str:
    """`required`, `default <JSON>` or `optional`."""
    if param in verb.required:
        return "required"
    if "default" in verb.params[param]:
        return "default " + json.dumps(verb.params[param]["default"])
    return "optional"


def route_text(route: Route) -> str:
    """`METHOD /api/v1/path`."""
    return f"{route.method} {REST_PREFIX}{route.path}"


def route_notes(route: Route) -> str:
    """What is special about a route, in a few words (empty when nothing is)."""
    notes = []
    if route.body:
        notes.append(f"JSON body: the {route.body} param")
    if route.status != 200:
        notes.append(f"answers {route.status}")
    if route.stream == "websocket":
        notes.append("a binary WebSocket (Upgrade: websocket)")
    elif route.stream == "data":
        notes.append("the body is bytes (application/octet-stream), with Range and Content-Range"
                     if route.method != "GET" else "answers bytes (application/octet-stream); Range gives 206")
    elif route.stream:
        notes.append(f"also server-sent {route.stream} with Accept: text/event-stream")
    if route.content:
        notes.append(f"answers {route.content['type']} (the result's {route.content['field']})")
    return "; ".join(notes)


def error_text(name: str) -> tuple[int, str, int, str]:
    """(VDSM code, VDSM name, HTTP status, meaning) of the error called `name`."""
    error = error_by_name(name)
    return error.code, error.name, error.http_status, error.message


# -- Markdown ----------------------------------------------------------------------------------


class _Anchors:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to '-', repeats numbered."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}
        self.by_heading: dict[str, str] = {}

    def add(self, heading: str) -> str:
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = self._seen.get(slug, 0)
        self._seen[slug] = count + 1
        anchor = slug if count == 0 else f"{slug}-{count}"
        self.by_heading[heading] = anchor
        return anchor


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _namespaces(schema: Schema) -> dict[str, list[Verb]]:
    grouped: dict[str, list[Verb]] = {}
    for verb in schema.verbs.values():
        grouped.setdefault(verb.namespace, []).append(verb)
    return grouped


def render_api_markdown(schema: Schema) -> str:
    """The whole of docs/api.md for `schema`."""
    anchors = _Anchors()
    grouped = _namespaces(schema)
    for namespace, verbs in grouped.items():
        anchors.add(f"{namespace} verbs")
        for verb in verbs:
            anchors.add(verb.name)
    for heading in ("Types", *schema.defs, "Error codes"):
        anchors.add(heading)

    def link(name: str) -> str:
        return f"[{name}](#{anchors.by_heading[name]})"

    lines = _intro(schema, link("Task") if "Task" in schema.defs else "Task")
    lines += ["## Contents", ""]
    for namespace, verbs in grouped.items():
        lines.append(f"- [{namespace} verbs](#{anchors.by_heading[f'{namespace} verbs']}): "
                     + ", ".join(link(verb.name) for verb in verbs))
    lines.append(f"- [Types](#types): {', '.join(link(name) for name in schema.defs)}")
    lines += ["- [Error codes](#error-codes)", ""]
    for namespace, verbs in grouped.items():
        lines += [f"## {namespace} verbs", ""]
        lines += _table(["Verb", "Role", "Task", "Summary"],
                        [[link(v.name), v.role, "yes" if v.task else "", v.summary] for v in verbs])
        for verb in verbs:
            lines += _verb_section(verb, link)
    lines += ["## Types", "", "Shared types, referred to from the verbs above as `#/$defs/<Name>`.", ""]
    for name, definition in schema.defs.items():
        lines += _type_section(name, definition, link)
    lines += _error_codes()
    return "\n".join(lines).rstrip("\n") + "\n"


def _intro(schema: Schema, task_link: str) -> list[str]:
    info = schema.info
    return [
        f"# {info.get('title', 'Pier API')}",
        "",
        "<!-- Generated by `python -m pier.docs` from pier/rpc/schema/*.yml; do not edit. -->",
        "",
        info.get("description", "").strip(),
        "",
        f"API version {info.get('version', '?')}; {len(schema.verbs)} verbs.",
        "",
        "Every verb is reachable in the same way over each transport:",
        "",
        "- **JSON-RPC 2.0** (WebSocket, `POST /jsonrpc`, STOMP): the method is the verb's name and the",
        "  params go by name (or by position, in the order listed here).",
        "- **REST**: the routes listed with a verb, under `/api/v1`. A `{name}` in a path is the param of",
        "  that name; on GET and DELETE the other params go in the query string (arrays comma separated);",
        "  on POST the JSON body is the params object, or the one param the route names as its body.",
        "  Errors come back as `application/problem+json` with the HTTP status listed below.",
        "- **XML-RPC** at `/RPC2`: a verb's legacy names, with VDSM's `{'status': {'code', 'message'}}` envelope.",
        "- **CLI**: `pier call VERB key=value ...`; `pier help VERB` shows what is listed here.",
        "",
        f"A *task* verb returns a {task_link} at once and does its work in the background; follow it with",
        "`Task.getInfo` (and its `wait` param), `GET /api/v1/tasks/{taskID}?wait=SECONDS` or `pier task wait`.",
        "Every verb may also fail with `-32602 InvalidParams` when its params do not match what is listed.",
        "",
    ]


def _verb_section(verb: Verb, link: Callable[[str], str]) -> list[str]:
    lines = [f"### {verb.name}", "", verb.summary, ""]
    facts = [f"- **Role:** {verb.role}" + (" (read-only)" if verb.readonly else "")]
    if verb.task and verb.waits:
        facts.append("- **Task:** yes - the work runs as a task; over JSON-RPC and XML-RPC the call answers "
                     "when it has ended (the final Task, or its error), over REST at once (202)")
    elif verb.task:
        facts.append("- **Task:** yes - returns a Task at once; the work runs in the background")
    if verb.rest:
        facts.append("- **REST:** " + "; ".join(
            f"`{route_text(route)}`" + (f" ({route_notes(route)})" if route_notes(route) else "")
            for route in verb.rest))
    if verb.legacy:
        names = [f"`{legacy.name}`" + (f" (payload under `{legacy.payload}`)" if legacy.payload else "")
                 for legacy in verb.legacy]
        facts.append("- **Legacy XML-RPC:** " + ", ".join(names))
    facts.append(f"- **Returns:** {type_text(verb.returns, link)}")
    lines += facts + [""]
    if verb.params:
        lines += _table(["Param", "Type", "Required / default", "Description"],
                        [[f"`{name}`", type_text(spec, link), requirement_text(verb, name),
                          spec.get("description", "")] for name, spec in verb.params.items()])
    else:
        lines += ["No params.", ""]
    if verb.errors:
        lines += ["Errors:", ""]
        lines += _table(["Code", "Name", "HTTP", "Meaning"],
                        [[code, f"`{name}`", status, message]
                         for code, name, status, message in map(error_text, verb.errors)])
    return lines


def _type_section(name: str, definition: dict[str, Any], link: Callable[[str], str]) -> list[str]:
    lines = [f"### {name}", ""]
    if definition.get("description"):
        lines += [definition["description"].strip(), ""]
    kind = type_text({key: value for key, value in definition.items() if key != "properties"}, link)
    if "pattern" in definition:
        kind += f", matching `{definition['pattern']}`"
    lines += [f"Type: {kind}.", ""]
    properties = definition.get("properties") or {}
    if properties:
        required = set(definition.get("required", []))
        lines += _table(["Field", "Type", "Required", "Description"],
                        [[f"`{field}`", _field_type(spec, link), "yes" if field in required else "",
                          spec.get("description", "")] for field, spec in properties.items()])
    return lines


def _field_type(spec: dict[str, Any], link: Callable[[str], str]) -> str:
    text = type_text(spec, link)
    if spec.get("properties"):
        text += " with " + ", ".join(f"`{name}`" for name in spec["properties"])
    return text


def _error_codes() -> list[str]:
    seen: dict[tuple[int, str], type[PierError]] = {}
    for error in all_error_classes():
        seen.setdefault((error.code, error.name), error)
    rows = [[code, f"`{name}`", error.http_status, error.message]
            for (code, name), error in sorted(seen.items())]
    return ["## Error codes", "",
            "Negative codes are JSON-RPC's own; the others are VDSM's. A JSON-RPC error carries the name in",
            "`error.data.name`; REST answers with the HTTP status shown.", ""] + _table(
                ["Code", "Name", "HTTP", "Meaning"], rows)


def main(argv: list[str] | None = None) -> int:
    """`python -m pier.docs [--check] [--output FILE]`."""
    parser = argparse.ArgumentParser(prog="python -m pier.docs", description="Generate docs/api.md from the schema.")
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale instead of writing it")
    parser.add_argument("--output", type=Path, default=API_DOC_PATH, help=f"default {API_DOC_PATH}")
    args = parser.parse_args(argv)
    status = 0
    if args.output == API_DOC_PATH:  # the default run covers every generated document
        from pier.docs_migration import GUIDE_PATH, write_or_check

        status = write_or_check(GUIDE_PATH, args.check)
    text = render_api_markdown(Schema.load())
    current = args.output.read_text(encoding="utf-8") if args.output.exists() else None
    if args.check:
        if current != text:
            print(f"{args.output} is stale; run: python -m pier.docs", file=sys.stderr)
            return 1
        return status
    if current != text:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    return status


if __name__ == "__main__":
    sys.exit(main())
