"""fieldpath: ``PATH=VALUE`` edits of one config object, checked against its model.

Role. ``portico set tenants/a router.nat.snat[0].ports=2000-3000`` changes one
field of one object without the user writing the whole object. This module
does the editing, on plain documents (what the API's GET returns); the daemon
still validates the result whole when it is written back.

Theory of operation. A path is written the way the config's error messages
write them (``model.format_path``): ``.name`` for a mapping key, ``[i]`` for
a list item, ``['a.b']`` for a key that is not a plain word, so a path
copied from a refusal can be set. Before anything is edited, the path is
walked through the object's JSON schema, the one the API's OpenAPI document
publishes (``Tenant``, ``Port``, ``Provider``): a field the model does not
have is refused with the place it went wrong and the fields that exist there,
while a field that the stored document merely leaves out (a default, such as
a port's ``mtu``) may be set. Then the document is walked: missing mappings
on the way are made, a list index must name an item or be one past the last
(append). A VALUE is JSON when it parses as JSON (``9000``, ``true``,
``["10.0.0.0/24"]``, ``"007"``) and a string otherwise (``deny``,
``02:00:00:00:0a:05``).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from typing import Any

Part = str | int

_PART = re.compile(r"\.?([A-Za-z0-9_-]+)|\[(\d+)\]|\['([^']*)'\]|\[\"([^\"]*)\"\]")


class PathError(ValueError):
    """A path that is malformed, or that the object's model or document does not have."""


def parse_path(text: str) -> list[Part]:
    """``router.routes[3].via`` -> ``['router', 'routes', 3, 'via']``."""
    parts: list[Part] = []
    at = 0
    while at < len(text):
        match = _PART.match(text, at)
        if match is None or (match.group(0).startswith(".") and not parts):
            raise PathError(f"{text}: cannot read the path at {text[at:]!r} "
                            "(write it as name.name[index].name)")
        word, index, quoted, double = match.groups()
        parts.append(int(index) if index is not None else
                     word if word is not None else quoted if quoted is not None else double)
        at = match.end()
    if not parts:
        raise PathError("an empty path")
    return parts


def show_path(parts: list[Part]) -> str:
    from portico.control.model import format_path

    return format_path(parts)


def parse_value(text: str) -> Any:
    """JSON when the text is JSON, else the text itself as a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


# ------------------------------------------------------------------ the schema
def schema_of(kind: str) -> dict[str, Any]:
    """The JSON schema of one object of ``kind``: tenants, ports or provider."""
    from pydantic import BaseModel

    from portico.control.model import Port, Provider, Tenant

    models: dict[str, type[BaseModel]] = {"tenants": Tenant, "ports": Port, "provider": Provider}
    return models[kind].model_json_schema()


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    for _ in range(64):  # references chain only a few deep; a cycle must not hang
        ref = schema.get("$ref")
        if not isinstance(ref, str):
            return schema
        schema = root.get("$defs", {}).get(ref.rsplit("/", 1)[-1], {})
    return schema


def _fields(schema: Mapping[str, Any]) -> list[str]:
    return list(schema.get("properties", {}))


def _child(schema: Mapping[str, Any], root: Mapping[str, Any],
           part: Part) -> Mapping[str, Any] | None:
    """The schema of ``part`` inside ``schema``; None: the model has no such place."""
    schema = _resolve(schema, root)
    branches = schema.get("anyOf") or schema.get("oneOf")
    if branches:  # ``X | None``: the first branch that has the place
        for branch in branches:
            found = _child(branch, root, part)
            if found is not None:
                return found
        return None
    if not schema.get("type") and not schema.get("properties") and "items" not in schema:
        return {}  # no schema (a firewall rule's fields): anything, the daemon checks
    if isinstance(part, int):
        return schema.get("items") if schema.get("type") == "array" else None
    if schema.get("type") != "object":
        return None
    if part in schema.get("properties", {}):
        return schema["properties"][part]  # type: ignore[no-any-return]
    for pattern, sub in schema.get("patternProperties", {}).items():
        if re.fullmatch(pattern, part):
            return sub  # type: ignore[no-any-return]
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        return extra
    return {} if extra is True else None


def check_path(kind: str, parts: list[Part], label: str | None = None) -> None:
    """Refuse a path ``kind``'s model does not have, naming where and what there is
    (``label``: how to call the object itself, e.g. ``ports/uplink``)."""
    root = schema_of(kind)
    node: Mapping[str, Any] = root
    for depth, part in enumerate(parts):
        found = _child(node, root, part)
        if found is None:
            here = _resolve(node, root)
            for branch in here.get("anyOf") or ():
                if _resolve(branch, root).get("type") in ("object", "array"):
                    here = _resolve(branch, root)
            where = show_path(parts[:depth]) or label or kind
            if isinstance(part, int) and here.get("type") != "array":
                raise PathError(f"{show_path(parts)}: {where} is not a list")
            if isinstance(part, str) and here.get("type") == "array":
                raise PathError(f"{show_path(parts)}: {where} is a list: use {where}[N]")
            fields = _fields(here)
            listed = f" (fields there: {', '.join(fields)})" if fields else ""
            raise PathError(f"{show_path(parts)}: {where} has no field {part!r}{listed}")
        node = found


# ---------------------------------------------------------------- the document
MISSING = object()  # what ``locate`` finds where the document has nothing (yet)


def locate(document: Any, segments: list[str], *, creating: bool = False
           ) -> tuple[list[Part], Any]:
    """The parts of a URL path into ``document`` (``router/firewall/egress/web-in``) and
    what is there (``MISSING``: nothing yet). In a list a segment is an index, or the
    ``id`` of an item; with ``creating`` a last segment no item has appends one."""
    if not segments or any(not segment for segment in segments):
        raise PathError("an empty path, or an empty part in it")
    parts: list[Part] = []
    node: Any = document
    for depth, segment in enumerate(segments):
        last = depth == len(segments) - 1
        if isinstance(node, list):
            if segment.isdigit():
                part: Part = int(segment)
            else:
                ids = [i for i, item in enumerate(node)
                       if isinstance(item, dict) and item.get("id") == segment]
                if not ids and not (creating and last):
                    raise PathError(f"{show_path([*parts, segment])}: no item has this id")
                part = ids[0] if ids else len(node)
            parts.append(part)
            node = node[part] if isinstance(part, int) and part < len(node) else MISSING
        else:
            parts.append(segment)
            node = node.get(segment, MISSING) if isinstance(node, dict) else MISSING
        if node is MISSING and not last and not creating:
            raise PathError(f"{show_path(parts)}: not set")
    return parts, node


def assign(document: dict[str, Any], parts: list[Part], value: Any) -> dict[str, Any]:
    """A copy of ``document`` with ``value`` at ``parts`` (missing mappings made)."""
    edited = copy.deepcopy(document)
    parent = _parent(edited, parts, make=True)
    last = parts[-1]
    if isinstance(last, int):
        assert isinstance(parent, list)
        if last > len(parent):
            raise PathError(f"{show_path(parts)}: the list has {len(parent)} items "
                            f"([{len(parent)}] appends one)")
        if last == len(parent):
            parent.append(value)
        else:
            parent[last] = value
    else:
        parent[last] = value
    return edited


def remove(document: dict[str, Any], parts: list[Part]) -> dict[str, Any]:
    """A copy of ``document`` without what ``parts`` names (a field goes back to its
    default, a list item goes and the ones after it move up)."""
    edited = copy.deepcopy(document)
    parent = _parent(edited, parts, make=False)
    last = parts[-1]
    there = (last < len(parent) if isinstance(last, int) and isinstance(parent, list) else
             isinstance(last, str) and isinstance(parent, dict) and last in parent)
    if there:
        del parent[last]
    else:
        raise PathError(f"{show_path(parts)}: not set, nothing to unset")
    return edited


def _parent(document: dict[str, Any], parts: list[Part], *, make: bool) -> Any:
    """The list or mapping that holds ``parts[-1]``."""
    node: Any = document
    for depth, part in enumerate(parts[:-1]):
        here = show_path(parts[: depth + 1])
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                size = len(node) if isinstance(node, list) else 0
                raise PathError(f"{here}: no such item (the list has {size} items)")
            node = node[part]
            continue
        if not isinstance(node, dict):
            raise PathError(f"{here}: {show_path(parts[:depth]) or 'it'} is not a mapping")
        if node.get(part) is None:
            if not make:
                raise PathError(f"{show_path(parts)}: not set, nothing to unset")
            node[part] = [] if isinstance(parts[depth + 1], int) else {}
        node = node[part]
    if isinstance(parts[-1], int) and not isinstance(node, list):
        raise PathError(f"{show_path(parts)}: {show_path(parts[:-1])} is not a list")
    if isinstance(parts[-1], str) and not isinstance(node, dict):
        raise PathError(f"{show_path(parts)}: {show_path(parts[:-1]) or 'it'} is not a mapping")
    return node
