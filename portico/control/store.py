"""control.store: the desired state, kept durably, shared and watched.

Role. The store holds the gateway's desired state between the API (which writes
it) and the compiler (which turns it into tables): config flows API -> store ->
compiler -> tables, and nothing else writes it. ``open_store(url)`` picks a
back-end from its url:

- ``sqlite:PATH``: the embedded default, one file (``sqlite_store``);
- ``etcd://HOST:PORT[/PREFIX]``: several gateway nodes sharing one desired
  state in an etcd v3 cluster (``etcd_store``).

Both give the same contract, and ``tests/control/test_store.py`` runs the same
tests over both.

Theory of operation.

*Objects and keys.* The state is a flat map of keys to JSON documents (dicts of
plain JSON: dicts with string keys, lists, str, int, float, bool, None). A config
document (the YAML of ``examples/two-tenants.yaml``) splits into one object per
port, one for the provider and one per tenant::

    ports/uplink    {"id": 0}
    ports/access    {"id": 1, "mtu": 1500}
    provider        {"router": {...}}
    tenants/a       {"id": 1, "switches": {...}, "router": {...}}

``objects_of`` does the split and ``document_of`` puts the document back
together. A tenant is the unit of change: editing one tenant's rules rewrites
``tenants/<name>`` and touches nothing else. The key ``revision`` is reserved
(the etcd back-end keeps the store's revision beside the objects).

*Revisions.* Every commit applies a set of changes (a key to its new document,
or to None to delete it) atomically and bumps the store's revision by exactly
one; an empty store is at revision 0. A ``Snapshot`` is the whole state at one
revision: no reader ever sees part of a commit. A commit is durable when it
returns: an acknowledged change survives kill -9 of the writer (SQLite: its log is
in the operating system's hands, though not fsynced, see ``sqlite_store``; etcd: a
quorum has fsynced it in the raft log).

*Optimistic concurrency.* ``commit(changes, expect=r)`` applies only if the
store is still at revision ``r`` and raises ``Conflict`` otherwise: a writer
reads a snapshot, computes its change from it and commits with ``expect`` set to
the snapshot's revision, so two writers working from the same snapshot cannot
both win (like ``resourceVersion`` in Kubernetes). Without ``expect`` a commit
applies on top of whatever is there (last writer wins per key). ``expect`` is
checked even for an empty change set, which writes nothing.

*Watching.* ``watch(after, timeout)`` blocks until the store's revision is
past ``after`` and returns the snapshot then (which may be several commits
later: watchers see states, not every step), or returns None at the timeout:
``snap = store.watch(snap.revision, 1.0) or snap``. ``wait(after, timeout)`` is the
same without the read: it returns the revision only, so a watcher that made the
commit itself (the daemon) learns so without reading anything. Commits by other
processes and other nodes are seen too.

*Reading cheaply.* A snapshot is the whole state, but a store decodes a row only
when its stored text differs from the one it decoded at its last read, and hands
out the same objects for the rows that did not change: one changed tenant costs
one decode, however large the rest, and a reader can tell unchanged objects by
identity. That is why snapshots are read-only. A writer may hand ``commit`` an
``Encoded`` value (``encode``): the JSON text it already made to compare with the
stored one is written as it is, not encoded again.

*Errors.* ``Conflict`` for a failed ``expect``; ``StoreError`` when the back-end
cannot be reached or its data is unreadable (the message names the url);
``ValueError`` for bad input (a key, a value that is not plain JSON, a url).

Example::

    store = open_store("sqlite:/var/lib/portico/state.db")
    snap = store.read()
    rev = store.commit({"tenants/c": {"id": 3}}, expect=snap.revision)
    store.commit({"tenants/c": None})            # delete
    document = document_of(store.read().objects)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

# The sections of a config document: those that map names to objects, and those
# that are one object.
NAMED_SECTIONS = ("ports", "tenants")
SINGLE_SECTIONS = ("provider",)
RESERVED_KEYS = frozenset({"revision"})


@dataclass(frozen=True)
class Snapshot:
    """The whole desired state at one revision. Treat ``objects`` as read-only."""

    revision: int  # 0 for an empty store; goes up by one per commit
    objects: dict[str, dict]  # key -> JSON-able document


@dataclass(frozen=True, slots=True)
class Encoded:
    """An object with its JSON text, encoded once (``encode``): what a store writes."""

    value: dict
    text: str


# What a commit takes for a key: a document, or one already encoded.
Value = dict | Encoded


class Conflict(Exception):
    """``expect=`` did not match the store's current revision."""

    def __init__(self, url: str, expected: int, current: int) -> None:
        super().__init__(f"{url}: expected revision {expected}, the store is at {current}")
        self.expected = expected
        self.current = current


class StoreError(Exception):
    """The back-end is unreachable, refused a request, or holds unreadable data."""


class Store(Protocol):
    url: str

    def read(self) -> Snapshot:
        """The whole state, at one revision."""
        ...

    def commit(self, changes: Mapping[str, Value | None], *,
               expect: int | None = None) -> int:
        """Apply all changes atomically (None deletes the key); return the new revision.
        With expect, refuse (Conflict) unless the store is still at that revision. An empty
        change set is a no-op returning the current revision. Durable when it returns."""
        ...

    def watch(self, after: int, timeout: float) -> Snapshot | None:
        """Block until the revision is > after (return the snapshot) or timeout (None)."""
        ...

    def wait(self, after: int, timeout: float) -> int | None:
        """Block until the revision is > after (return it) or timeout (None); reads no
        objects."""
        ...

    def close(self) -> None:
        """Release the back-end's connections; the store is unusable afterwards."""
        ...


def open_store(url: str) -> Store:
    """The store at ``url``: ``sqlite:PATH`` or ``etcd://HOST:PORT[/PREFIX]``.

    Raises ValueError for a url of neither form, StoreError when the back-end
    cannot be opened or reached.
    """
    if url.startswith("sqlite:"):
        from portico.control.sqlite_store import SqliteStore

        return SqliteStore(url)
    if url.startswith("etcd://"):
        from portico.control.etcd_store import EtcdStore

        return EtcdStore(url)
    raise ValueError(f"{url!r}: not a store url (sqlite:PATH or etcd://HOST:PORT[/PREFIX])")


def objects_of(document: Mapping[str, Any], *, check: bool = True) -> dict[str, dict]:
    """Split a config document into store objects: ``ports/<name>``, ``provider``,
    ``tenants/<name>``. An absent or empty (null) section yields no objects.

    Raises ValueError naming unknown top-level keys, or (``check``) the path of the
    first value that is not a plain-JSON object. ``check=False`` is for documents
    that came as JSON (the API's) and are checked again when committed.
    """
    unknown = sorted(str(k) for k in document if k not in NAMED_SECTIONS + SINGLE_SECTIONS)
    if unknown:
        raise ValueError(f"unknown top-level keys: {', '.join(unknown)}")
    objects: dict[str, dict] = {}
    for section in NAMED_SECTIONS:
        members = document.get(section)
        if members is None:
            continue
        if not isinstance(members, Mapping):
            raise ValueError(f"{section}: expected a mapping of names to objects")
        for name, value in members.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"{section}: {name!r} is not a name")
            objects[f"{section}/{name}"] = (_plain_object(value, f"{section}.{name}") if check
                                            else value)
    for section in SINGLE_SECTIONS:
        value = document.get(section)
        if value is not None:
            objects[section] = _plain_object(value, section) if check else value
    return objects


def document_of(objects: Mapping[str, dict]) -> dict[str, Any]:
    """The config document the objects make up: the inverse of ``objects_of``.
    ``ports`` and ``tenants`` are always present (``{}`` when empty); ``provider``
    only when its object is. Raises ValueError for a key of no section."""
    document: dict[str, Any] = {section: {} for section in NAMED_SECTIONS}
    for key in sorted(objects):
        section, slash, name = key.partition("/")
        if slash and section in NAMED_SECTIONS and name:
            document[section][name] = objects[key]
        elif not slash and section in SINGLE_SECTIONS:
            document[section] = objects[key]
        else:
            raise ValueError(f"{key!r}: not a config object key")
    return document


def encode(key: str, value: Any) -> Encoded:
    """``value`` as the stores write it: compact JSON. Equal texts are equal documents,
    type for type (``true`` is not ``1``, ``1.0`` not ``1``, which ``==`` does not tell
    apart). Raises ValueError naming the key and the path of a value that is not plain
    JSON, or a value that is not an object."""
    path = key.replace("/", ".")  # as the config document reads: tenants.a.router...
    if not isinstance(value, dict):
        raise ValueError(f"{path}: a value is a JSON object (dict) or None")
    try:
        return Encoded(value, _ENCODER.encode(value))
    except (TypeError, ValueError) as exc:
        _check_plain(value, path)
        raise ValueError(f"{path}: not plain JSON ({exc})") from None


# Compact, and refusing NaN and infinities (not JSON); one encoder, made once.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode_changes(url: str, changes: Mapping[str, Value | None]) -> dict[str, str | None]:
    """The back-ends' common check and encoding of a change set: each key to its
    document as compact JSON text (an ``Encoded`` one as it is), or to None for a
    delete. Raises ValueError naming a bad key or a value that is not a plain-JSON
    object."""
    encoded: dict[str, str | None] = {}
    for key, value in changes.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{url}: {key!r} is not a key (a non-empty string)")
        if key in RESERVED_KEYS:
            raise ValueError(f"{url}: {key!r} is a reserved key")
        if value is None:
            encoded[key] = None
        elif isinstance(value, Encoded):
            encoded[key] = value.text
        else:
            try:
                encoded[key] = encode(key, value).text
            except ValueError as exc:
                raise ValueError(f"{url}: {exc}") from None
    return encoded


def part_of(key: str) -> tuple[str, str | None]:
    """The config part a key holds: ``tenants/a`` -> ``("tenants", "a")``, ``provider``
    -> ``("provider", None)``. Raises ValueError for a key of no section."""
    section, slash, name = key.partition("/")
    if slash and section in NAMED_SECTIONS and name:
        return section, name
    if not slash and section in SINGLE_SECTIONS:
        return section, None
    raise ValueError(f"{key!r}: not a config object key")


def _plain_object(value: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected an object (a mapping)")
    _check_plain(value, path)
    return value


def _check_plain(value: Any, path: str) -> None:
    bad = _first_not_plain(value)
    if bad is None:
        return
    trail, problem = bad
    where = path + "".join(f"[{part}]" if isinstance(part, int) else f".{part}"
                           for part in reversed(trail))
    raise ValueError(f"{where}: {problem}")


def _first_not_plain(value: Any) -> tuple[list[str | int], str] | None:
    """The first value that is not plain JSON, as (path parts, innermost first; what is
    wrong), or None. No text is built on the way: a config is walked on every write."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                return [], f"key {k!r} is not a string"
            if isinstance(v, dict | list | float) or not (
                    v is None or isinstance(v, str | int)):
                bad = _first_not_plain(v)
                if bad is not None:
                    bad[0].append(k)
                    return bad
    elif isinstance(value, list):
        for i, v in enumerate(value):
            bad = _first_not_plain(v)
            if bad is not None:
                bad[0].append(i)
                return bad
    elif isinstance(value, float):
        if not math.isfinite(value):
            return [], f"{value!r} is not plain JSON"
    elif value is not None and not isinstance(value, str | int):  # bool is an int
        return [], f"{type(value).__name__} {value!r} is not plain JSON"
    return None
