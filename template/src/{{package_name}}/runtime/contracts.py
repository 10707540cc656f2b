"""Backwards compatibility of contracts: the messages of the AsyncAPI document against a baseline.

The baseline (contracts/baseline.json, committed) maps every message name (`persona.created.v1`)
to the JSON Schema of its payload, self-contained. A change is breaking when data valid under one
side's schema may be refused, or misread, by the other: a message or version removed, a field
removed, a field newly required (new or existing), a type changed, an enum narrowed. New messages
and new optional fields are compatible. Constraints (lengths, patterns, bounds) are not compared.
"""

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .asyncapi import SCHEMAS

DEFS = "#/$defs/"


class BaselineError(Exception):
    """The baseline file is missing or is not a baseline."""


@dataclass
class Report:
    breaking: list[str] = field(default_factory=list)
    compatible: list[str] = field(default_factory=list)


def messages(document: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each message's name -> its payload schema, with the component schemas it uses as `$defs`."""
    schemas = document["components"]["schemas"]
    found = {}
    for message in document["components"]["messages"].values():
        payload = message.get("payload", {})
        names = sorted(_reachable(payload, schemas))
        schema = _relocated(payload)
        if names:
            schema["$defs"] = {name: _relocated(schemas[name]) for name in names}
        found[message["name"]] = schema
    return dict(sorted(found.items()))


def write_baseline(path: Path, current: Mapping[str, Any]) -> None:
    text = orjson.dumps({"messages": current}, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    path.write_bytes(text + b"\n")


def load_baseline(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BaselineError(
            f"no contract baseline at {path} (write one with `contracts baseline`)"
        ) from None
    except OSError as exc:
        raise BaselineError(f"cannot read the contract baseline {path}: {exc}") from None
    try:
        baseline = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BaselineError(f"{path} is not JSON: {exc}") from None
    found = baseline.get("messages") if isinstance(baseline, dict) else None
    if not isinstance(found, dict) or not all(isinstance(s, dict) for s in found.values()):
        raise BaselineError(f"{path} is not a contract baseline: no `messages` object in it")
    return found


def compare(baseline: Mapping[str, Any], current: Mapping[str, Any]) -> Report:
    report = Report()
    for name in sorted(baseline.keys() - current.keys()):
        report.breaking.append(f"{name}: message removed")
    for name in sorted(current.keys() - baseline.keys()):
        report.compatible.append(f"{name}: new message")
    for name in sorted(baseline.keys() & current.keys()):
        _Comparison(name, baseline[name], current[name], report).schema(
            baseline[name], current[name], ""
        )
    return report


@dataclass
class _Comparison:
    message: str
    old_root: dict[str, Any]
    new_root: dict[str, Any]
    report: Report
    comparing: set[tuple[int, int]] = field(default_factory=set)  # the pairs on the path here

    def breaking(self, where: str, what: str) -> None:
        self.report.breaking.append(f"{self.message}: {_at(where)}{what}")

    def compatible(self, where: str, what: str) -> None:
        self.report.compatible.append(f"{self.message}: {_at(where)}{what}")

    def schema(self, old: Any, new: Any, where: str) -> None:
        old, new = _resolve(old, self.old_root), _resolve(new, self.new_root)
        pair = (id(old), id(new))
        if pair in self.comparing:  # a recursive model, back where it started
            return
        self.comparing.add(pair)
        try:
            self.compared(old, new, where)
        finally:
            self.comparing.discard(pair)

    def compared(self, old: Any, new: Any, where: str) -> None:
        old_branches = _branches(old, self.old_root)
        new_branches = _branches(new, self.new_root)
        old_types, new_types = _types(old_branches), _types(new_branches)
        if old_types != new_types:
            self.breaking(where, f"type changed from {_show(old_types)} to {_show(new_types)}")
        old_enum, new_enum = _enum(old_branches), _enum(new_branches)
        if old_enum is None and new_enum is not None:
            self.breaking(where, f"values now restricted to {', '.join(sorted(new_enum))}")
        elif old_enum is not None and new_enum is not None and old_enum - new_enum:
            lost = ", ".join(sorted(old_enum - new_enum))
            self.breaking(where, f"enum narrowed: no longer accepts {lost}")
        elif old_enum is not None and (new_enum is None or new_enum - old_enum):
            self.compatible(where, "enum widened")
        self.objects(_only(old_branches, "properties"), _only(new_branches, "properties"), where)
        old_items, new_items = _only(old_branches, "items"), _only(new_branches, "items")
        if old_items is not None and new_items is not None:
            self.schema(old_items["items"], new_items["items"], f"{where}[]")

    def objects(self, old: Any, new: Any, where: str) -> None:
        old_fields, new_fields = _mapping(old, "properties"), _mapping(new, "properties")
        if old_fields is None or new_fields is None:
            return
        old_required, new_required = _required(old), _required(new)
        for name in old_fields:
            path = f"{where}.{name}" if where else name
            if name not in new_fields:
                self.breaking(path, "field removed")
                continue
            if name in new_required and name not in old_required:
                self.breaking(path, "field now required")
            self.schema(old_fields[name], new_fields[name], path)
        for name in new_fields.keys() - old_fields.keys():
            path = f"{where}.{name}" if where else name
            if name in new_required:
                self.breaking(path, "new required field")
            else:
                self.compatible(path, "new optional field")


def _at(where: str) -> str:
    return f"{where}: " if where else ""


def _resolve(schema: Any, root: Mapping[str, Any]) -> Any:
    for _ in range(64):  # a chain of references, never a loop of them
        if not (isinstance(schema, dict) and str(schema.get("$ref", "")).startswith(DEFS)):
            break
        schema = (_mapping(root, "$defs") or {}).get(schema["$ref"].removeprefix(DEFS), {})
    return schema


def _branches(schema: Any, root: Mapping[str, Any]) -> list[Any]:
    """The alternatives a value may match: those of anyOf / oneOf, else the schema itself."""
    if not isinstance(schema, dict):
        return [schema]
    alternatives = schema.get("anyOf") or schema.get("oneOf")
    if not isinstance(alternatives, list) or not alternatives:
        return [schema]
    return [b for a in alternatives for b in _branches(_resolve(a, root), root)]


def _types(branches: list[Any]) -> frozenset[str] | None:
    """The JSON types the branches allow; None for any."""
    types: set[str] = set()
    for branch in branches:
        if not isinstance(branch, dict):
            return None
        declared = branch.get("type")
        if declared is None and "properties" in branch:
            declared = "object"
        if declared is None and "const" in branch:
            declared = _json_type(branch["const"])
        if declared is None and isinstance(branch.get("enum"), list):
            declared = sorted({_json_type(value) for value in branch["enum"]})
        if isinstance(declared, str):
            declared = [declared]
        if not isinstance(declared, list):
            return None
        types.update(str(name) for name in declared)
    return frozenset(types)


def _enum(branches: list[Any]) -> frozenset[str] | None:
    """The values the non-null branches allow (as JSON), when they are all enumerated."""
    values: set[str] = set()
    for branch in branches:
        if isinstance(branch, dict) and branch.get("type") == "null":
            continue
        if not isinstance(branch, dict) or not ("enum" in branch or "const" in branch):
            return None
        listed = branch["enum"] if isinstance(branch.get("enum"), list) else [branch.get("const")]
        values.update(orjson.dumps(value).decode() for value in listed)
    return frozenset(values)


def _only(branches: list[Any], key: str) -> Any:
    """The one branch that has `key`; None when there is none, or several to choose from."""
    having = [b for b in branches if isinstance(b, dict) and key in b]
    return having[0] if len(having) == 1 else None


def _mapping(schema: Any, key: str) -> dict[str, Any] | None:
    """schema[key] when both are JSON objects (a hand-edited baseline may hold anything)."""
    value = schema.get(key) if isinstance(schema, dict) else None
    return value if isinstance(value, dict) else None


def _required(schema: Mapping[str, Any]) -> set[str]:
    required = schema.get("required")
    return (
        {name for name in required if isinstance(name, str)}
        if isinstance(required, list)
        else set()
    )


def _json_type(value: Any) -> str:
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else "array" if isinstance(value, list) else "object"


def _show(types: frozenset[str] | None) -> str:
    return "any" if types is None else " | ".join(sorted(types))


def _reachable(schema: Any, schemas: Mapping[str, Any]) -> set[str]:
    names: set[str] = set()
    pending = list(_refs(schema))
    while pending:
        name = pending.pop()
        if name not in names:
            names.add(name)
            pending += _refs(schemas[name])
    return names


def _refs(schema: Any) -> Iterator[str]:
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith(SCHEMAS):
            yield ref.removeprefix(SCHEMAS)
        for value in schema.values():
            yield from _refs(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _refs(value)


def _relocated(schema: Any) -> Any:
    """The schema with its references to the document's components pointing at local `$defs`."""
    if isinstance(schema, dict):
        return {
            key: DEFS + value.removeprefix(SCHEMAS)
            if key == "$ref" and isinstance(value, str) and value.startswith(SCHEMAS)
            else _relocated(value)
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [_relocated(value) for value in schema]
    return schema
