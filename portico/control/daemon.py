"""daemon: the gateway as a service — desired state in a store, changes applied live.

Role. A ``Daemon`` holds a ``Gateway`` and a ``Store`` (``portico.control.store``:
SQLite embedded, etcd shared by several nodes). The store holds the desired
state, the config document split into objects (``ports/<name>``, ``provider``,
``tenants/<name>``); the gateway runs what the store last said.

Theory of operation.

* **What the daemon keeps** between changes: the store's objects at the revision it
  last saw, each one's JSON text as stored, and the ``Config`` they parse to (the
  one the gateway runs). A change is therefore validated by the objects it touches:
  ``parse_part`` of each changed object (its fields and its own checks, every
  problem named by its path from the document's root) and ``replace_parts`` for the
  checks across objects (ports named, places attached once, tenant ids unique, NAT
  addresses claimed once) on the kept config with those parts replaced. That is
  what ``parse_config`` of the whole new document says, at the cost of the changed
  objects alone: a one-rule change validates one tenant, not every tenant (and the
  model's memo makes that tenant's unchanged rules a lookup each).
* **Writes** (``apply``, ``put_object``, ``delete_object``) find the objects that
  changed: unequal by ``==`` to the one held, or equal but of another JSON text
  (``==`` takes ``true`` for ``1``, and an object the caller changed in place since
  it gave it is equal to itself; the texts held are what was stored). They validate
  as above (``ConfigError``: nothing is stored, nothing half-applied) and commit
  only the objects whose text differs from the stored one, in one store
  transaction, conditional on the revision they were validated against. A caller's
  ``expect`` (the revision it saw) must be that revision, or it gets ``Conflict``,
  not a lost update. Without ``expect``, a commit that loses to another writer
  makes the daemon read what is there and validate the change again on top of it:
  nothing the daemon commits was validated against any state but the one it lands
  on. The commit is durable when it returns; the daemon then brings the gateway to
  it at once, so a successful API call is already in effect when it answers.
  Writes queue on a lock of their own (``_writing``), not the gateway's: traffic
  runs while a write validates and commits. A caller that validated the value
  already (the API: FastAPI parsed the body into its model) passes the model as
  ``parsed``, so the object is validated once. A large tenant's text is made from
  its rules' texts, kept by parsed rule (``_RULE_TEXTS``): one changed rule among
  10k costs one rule's encoding, not the tenant's.
* **Reads of the desired state** come from the store; reads of the running state
  (stats, flows, metrics) from the gateway, under the same lock as traffic.
* **Other writers** (another daemon on the same etcd, a second process on the same
  SQLite file) are seen by the watcher thread. It waits for the store's revision to
  pass both the one held and the one a write is committing (``Store.wait``, which
  reads no objects): the daemon's own commits are in effect when they return and
  are never read back. A revision past those is another writer's, and is read
  under the write lock (``Store.read`` decodes only the rows that changed and hands
  out the same objects for the others, so the changed objects are the ones not
  identical to those held) and validated like a write. A state this version
  refuses is not run: the gateway keeps what it has, and until the store holds a
  valid state again a write is validated against the whole of what is stored.
* **Applying** compiles the new config into new tables (``Gateway.reconfigure``: a
  new generation; what the gateway learned stays) and swaps them in between two
  batches, under the lock: no batch sees half of a change, and no packet after it
  is decided by an entry made before it. A change to tenants' firewall rules or
  container prefixes alone (told by comparing the parsed configs) takes the
  incremental way instead (``_rules_only``): the classifier updates in place and
  only those tenants' flows, in those directions, are decided again.
* **Traffic** for now comes from a capture replayed in a thread (``replay``):
  control-plane tests need no live interface.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from portico.classify.rules import Rule
from portico.control.metrics import PortCounters
from portico.control.model import (
    Config,
    ConfigError,
    ContainerRef,
    Firewall,
    Part,
    Problem,
    Tenant,
    TenantRouter,
    parse_config,
    parse_part,
    replace_parts,
)
from portico.control.store import (
    Conflict,
    Encoded,
    Snapshot,
    Store,
    StoreError,
    document_of,
    encode,
    objects_of,
    part_of,
)
from portico.datapath.gateway import Gateway

Document = dict[str, Any]
Changes = dict[str, Encoded | None]  # key -> the new object, or None to delete it
RACE_TIMEOUT = 10.0  # s a write without expect keeps validating again after lost races


@dataclass(frozen=True)
class Applied:
    """What a write did: the revision now in force and the objects it changed."""

    revision: int
    changed: dict[str, str]  # key -> "added" | "changed" | "removed"


def diff_text(old: Mapping[str, dict], new: Mapping[str, dict]) -> str:
    """The objects that differ, as ``kubectl diff`` shows them: a unified YAML diff each."""
    import difflib

    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        a = yaml.safe_dump(old[key], sort_keys=False).splitlines() if key in old else []
        b = yaml.safe_dump(new[key], sort_keys=False).splitlines() if key in new else []
        out += difflib.unified_diff(a, b, f"current/{key}", f"desired/{key}", lineterm="")
    return "\n".join(out)


def parse_objects(objects: Mapping[str, dict]) -> Config:
    """The config a store's objects make, validated whole; a key of no config section
    is a problem too (another writer may store anything)."""
    bad = [key for key in objects if not _is_part(key)]
    if bad:
        raise ConfigError([(key, "not a config object key") for key in sorted(bad)])
    return parse_config(document_of(objects))


def _is_part(key: str) -> bool:
    try:
        part_of(key)
    except ValueError:
        return False
    return True


def _encoded(key: str, value: dict) -> Encoded:
    """``value`` as the store will hold it; a value JSON cannot hold is a ``ConfigError``
    (in the config's own words when the model refuses it too)."""
    try:
        return encode(key, value)
    except ValueError as error:
        parse_part(*part_of(key), value)
        path, _, problem = str(error).partition(": ")
        raise ConfigError([(path, problem)]) from None


# Each rule's JSON text, by the parsed rule it was written as. The model's memo hands
# out one ``Rule`` object per rule as written (fields, their order and their types), so
# the same object means the same text: a tenant of 10k rules, one of them changed, is
# encoded as its skeleton plus 9,999 texts already made. Bounded like the memo.
_RULE_TEXTS: dict[int, tuple[Rule, str]] = {}  # id(rule) -> (the rule, kept alive; text)
_RULE_TEXTS_MAX = 1 << 18
_HOLE = "\x00portico-rules:{}\x00"  # where a rule list goes in a tenant's skeleton
SPLICE_RULES = 64  # fewer rules than that: json.dumps of the whole is as quick


def _encode_part(key: str, value: dict, config: Config) -> Encoded:
    """``encode(key, value)`` for an object that ``config`` holds parsed: the same text,
    made faster for a tenant (its rules' texts reused, see ``_RULE_TEXTS``); anything
    unusual takes the plain way, and so does a value JSON cannot hold (``ConfigError``)."""
    section, name = part_of(key)
    tenant = config.tenants.get(name) if section == "tenants" and name else None
    firewall = tenant.router.firewall if tenant is not None else None
    if tenant is not None and firewall is not None and (
            len(firewall.ingress) + len(firewall.egress) >= SPLICE_RULES):
        try:
            text = _tenant_text(key, value, tenant)
        except ValueError:
            text = None  # not plain JSON: said with its path below
        if text is not None:
            return Encoded(value, text)
    return _encoded(key, value)


def _tenant_text(key: str, value: dict, tenant: Tenant) -> str | None:
    """The text of tenant ``value``, which parsed to ``tenant``; None to take the plain way."""
    router = value.get("router")
    firewall = router.get("firewall") if isinstance(router, dict) else None
    if not isinstance(router, dict) or not isinstance(firewall, dict):
        return None
    lists: dict[str, str] = {}
    for direction in ("ingress", "egress"):
        written = firewall.get(direction)
        rules = tenant.router.firewall.rules(direction)
        if not isinstance(written, list) or len(written) != len(rules):
            continue
        texts = []
        for item, rule in zip(written, rules, strict=True):
            if not isinstance(item, dict):
                return None
            seen = _RULE_TEXTS.get(id(rule))
            if seen is not None and seen[0] is rule:
                texts.append(seen[1])
                continue
            text = encode(key, item).text
            # No rule field takes a float today; should one, 0.0 == -0.0 in the memo's key
            # but not in the text, so such a rule's text is not kept.
            if not any(isinstance(v, float) for v in item.values()):
                if len(_RULE_TEXTS) >= _RULE_TEXTS_MAX:
                    _RULE_TEXTS.clear()
                _RULE_TEXTS[id(rule)] = (rule, text)
            texts.append(text)
        lists[direction] = "[" + ",".join(texts) + "]"
    if not lists:
        return None
    holes = {direction: _HOLE.format(direction) for direction in lists}
    skeleton = {**value, "router": {**router, "firewall": {**firewall, **holes}}}
    text = encode(key, skeleton).text
    for direction, hole in holes.items():
        quoted = json.dumps(hole)  # as the store's encoder writes it (escaped, ASCII)
        if text.count(quoted) != 1:
            return None  # the tenant says the same somewhere itself: take the plain way
        text = text.replace(quoted, lists[direction])
    return text


def _nesting(firewall: Firewall) -> dict[str, list[str]]:
    """Which containers include which: what an in-place container update cannot change."""
    return {name: sorted(m.name for m in members if isinstance(m, ContainerRef))
            for name, members in firewall.containers.items()}


class Daemon:
    """A gateway kept at the store's desired state (see the module's docstring)."""

    def __init__(self, store: Store, *, initial: Mapping[str, Any] | None = None,
                 cache: bool = True, flows: int = 1 << 16, seed: int | None = None) -> None:
        self.store = store
        self.lock = threading.RLock()  # the gateway: traffic, reconfiguration, reads
        self._writing = threading.Lock()  # writes and the watcher's syncs, one at a time
        self._pending = 0  # the revision a write of ours is committing, or 0
        snapshot = store.read()
        if snapshot.revision == 0 and initial is not None:
            parse_config(dict(initial))  # refuse a bad seed config before storing it
            store.commit(objects_of(initial), expect=0)
            snapshot = store.read()
        self.config = parse_objects(snapshot.objects)
        self.objects = snapshot.objects  # what ``config`` was parsed from
        self.revision = snapshot.revision  # the store's, as last seen
        # The store's objects at ``revision`` when they are a state this daemon refused
        # (``config`` is then older); None when they are ``objects``.
        self._refused: dict[str, dict] | None = None
        # Each stored object's JSON text (``store.encode``), where known: what a write
        # compares its objects with.
        self._texts = {key: encode(key, value).text for key, value in self.objects.items()}
        self.gateway = Gateway(self.config, cache=cache, flows=flows, seed=seed)
        self.ports = PortCounters()
        # Counters of the parts around the gateway that the daemon's owner adds (the live
        # loop, in-band management): by name, read for /stats and /metrics.
        self.sources: dict[str, Callable[[], Mapping[str, int]]] = {}
        self.reconfigurations = 0
        self.last_apply_seconds = 0.0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ writes
    def document(self) -> Document:
        return document_of(self.objects)

    def apply(self, document: Mapping[str, Any], *, expect: int | None = None,
              parsed: Config | None = None) -> Applied:
        """Make ``document`` the desired state. ``parsed``: the document already validated
        whole (``parse_config``), as the API's body is; otherwise the changed objects are
        validated, and the result across objects."""
        try:
            new = objects_of(document, check=False)
        except ValueError:
            parse_config(dict(document))  # the problem named by its path (ConfigError)
            raise

        def edit() -> tuple[Changes, Config]:
            held = self._stored()
            values: dict[str, dict | None] = {k: None for k in held if k not in new}
            known: dict[str, Encoded] = {}
            for key, value in new.items():
                old = held.get(key)
                if old is not None and old == value:
                    # The same by ==, perhaps the very object held: the text decides, which
                    # tells true from 1, and sees an object changed in place since.
                    encoded = known[key] = _encoded(key, value)
                    if encoded.text == self._text(key):
                        continue
                values[key] = value
            config = parsed if parsed is not None else self._validate(values)
            return self._encode(values, known, config), config

        return self._write(edit, expect)

    def put_object(self, key: str, value: Mapping[str, Any], *, expect: int | None = None,
                   parsed: Part | None = None) -> Applied:
        """Create or replace one object (``tenants/a``, ``ports/uplink``, ``provider``).
        ``parsed``: the value already validated as its part's model (the API's body)."""
        part_of(key)  # ValueError for a key of no section
        document = dict(value)

        def edit() -> tuple[Changes, Config]:
            config = self._validate({key: document}, None if parsed is None else {key: parsed})
            # Written even when it is what the store holds: a PUT is a write (a revision).
            return {key: _encode_part(key, document, config)}, config

        return self._write(edit, expect)

    def delete_object(self, key: str, *, expect: int | None = None) -> Applied:
        def edit() -> tuple[Changes, Config]:
            if key not in self._stored():
                raise KeyError(key)
            return {key: None}, self._validate({key: None})  # what remains must still stand

        return self._write(edit, expect)

    def _encode(self, values: Mapping[str, dict | None], known: Mapping[str, Encoded],
                config: Config) -> Changes:
        """The changes to commit for validated ``values``: each as the store will hold it,
        and only where that differs from what it holds."""
        changes: Changes = {}
        for key, value in values.items():
            if value is None:
                changes[key] = None
                continue
            encoded = known.get(key) or _encode_part(key, value, config)
            if encoded.text != self._text(key):
                changes[key] = encoded
        return changes

    def _write(self, edit: Callable[[], tuple[Changes, Config]],
               expect: int | None) -> Applied:
        """Validate and commit ``edit``'s changes on the state held, and run them. The
        commit is conditional on the revision held: another writer's commit in between
        is read and the edit made again on top of it (see the module's docstring)."""
        give_up = time.monotonic() + RACE_TIMEOUT
        with self._writing:
            fresh = False  # the state held was just checked against the store
            while True:
                if expect is not None and expect != self.revision and not fresh:
                    fresh = True
                    self._catch_up()
                if expect is not None and expect != self.revision:
                    raise Conflict(self.store.url, expect, self.revision)
                held, revision = self._stored(), self.revision
                try:
                    changes, config = edit()
                except (KeyError, ConfigError):
                    # Refused against what we hold: refused for good only if the store
                    # holds nothing newer (another writer may have made it right).
                    if fresh or not self._catch_up():
                        raise
                    fresh = True
                    continue
                try:
                    self._pending = revision + 1  # the watcher's to skip (``start_watching``)
                    committed = self.store.commit(changes, expect=revision)
                    if committed != revision:
                        self._run(committed, changes, config)
                except Conflict:
                    if expect is not None or time.monotonic() > give_up:
                        raise
                    fresh = True
                    self._catch_up()
                    continue
                finally:
                    self._pending = 0
                return Applied(committed, {
                    k: "removed" if v is None else "changed" if k in held else "added"
                    for k, v in changes.items()})

    def _stored(self) -> Mapping[str, dict]:
        """The store's objects at the revision held."""
        return self.objects if self._refused is None else self._refused

    def _text(self, key: str) -> str | None:
        """The JSON text the store holds for ``key`` (None: no such object)."""
        text = self._texts.get(key)
        if text is None:
            value = self._stored().get(key)
            if value is None:
                return None
            text = self._texts[key] = encode(key, value).text
        return text

    def _validate(self, values: Mapping[str, dict | None],
                  parsed: Mapping[str, Part] | None = None) -> Config:
        """The config the stored objects make with ``values`` put (None: deleted), or
        ``ConfigError``: each changed object validated (``parsed``: some already are),
        and the checks across objects on the result."""
        if self._refused is not None:
            # The config held is not what the store holds: validate all of it.
            objects = dict(self._refused)
            for key, value in values.items():
                if value is None:
                    objects.pop(key, None)
                else:
                    objects[key] = value
            return parse_objects(objects)
        parts: dict[tuple[str, str | None], Part | None] = {}
        problems: list[Problem] = []
        for key, value in values.items():
            if not _is_part(key):
                problems.append((key, "not a config object key"))
                continue
            where = part_of(key)
            part = None if value is None else (parsed or {}).get(key)
            if value is not None and part is None:
                try:
                    part = parse_part(*where, value)
                except ConfigError as error:
                    problems += error.problems
                    continue
            parts[where] = part
        if problems:
            raise ConfigError(problems)
        return replace_parts(self.config, parts)

    def _run(self, revision: int, changes: Changes, config: Config) -> None:
        """Bring the gateway to ``config``: the state held with ``changes`` made, which the
        store holds at ``revision``."""
        objects = dict(self._stored())
        for key, change in changes.items():
            if change is None:
                objects.pop(key, None)
            else:
                objects[key] = change.value
        self._install(revision, objects, config, changes)
        for key, change in changes.items():
            if change is None:
                self._texts.pop(key, None)
            else:
                self._texts[key] = change.text

    # --------------------------------------------------------------- applying
    def sync(self, snapshot: Snapshot | None = None) -> bool:
        """Bring the gateway to the store's state (``snapshot``, or read now); True if it
        changed anything."""
        with self._writing:
            return self._sync(snapshot or self.store.read())

    def _catch_up(self) -> bool:
        """Sync if the store moved past the revision held (under ``_writing``); True if it
        had."""
        if self.store.wait(self.revision, 0) is None:
            return False
        self._sync(self.store.read())
        return True

    def _sync(self, snapshot: Snapshot) -> bool:
        if snapshot.revision <= self.revision:
            return False
        held, objects = self._stored(), snapshot.objects
        # The store hands out the same objects for the rows that did not change.
        changed = {k: objects.get(k) for k in held.keys() | objects.keys()
                   if held.get(k) is not objects.get(k)}
        for key in changed:
            self._texts.pop(key, None)
        try:
            config = self._validate(changed)
        except ConfigError:
            # Another writer stored something this version refuses: keep running what we
            # have (the stats say which revision that was not).
            self._refused, self.revision = objects, snapshot.revision
            return False
        self._install(snapshot.revision, objects, config, changed)
        return True

    def _install(self, revision: int, objects: dict[str, dict], config: Config,
                 changed: Iterable[str]) -> None:
        """Run ``config``, which the store's ``objects`` at ``revision`` make; ``changed``:
        the keys that differ from the state held."""
        with self.lock:
            began = time.perf_counter()
            # After a refused state, what runs is older than what was held: compare all.
            keys = None if self._refused is not None else changed
            if not self._rules_only(self.config, config, keys):
                self.gateway.reconfigure(config)
            self.config, self.objects, self.revision = config, objects, revision
            self._refused = None
            self.reconfigurations += 1
            self.last_apply_seconds = time.perf_counter() - began

    def _rules_only(self, old: Config, new: Config, changed: Iterable[str] | None) -> bool:
        """Apply a change that touches only tenants' firewall rules and container
        prefixes incrementally (``Gateway.set_rules``/``set_container``: the classifier
        updates in place, and only the flows of those tenants and directions are decided
        again), and say so; anything else needs a full reconfigure (False). Told from
        the parsed configs: what differs only in how it is written changes nothing."""
        if changed is None:
            if old.ports != new.ports or old.provider != new.provider:
                return False
            changed = [f"tenants/{name}" for name in old.tenants.keys() | new.tenants.keys()]
        tenants: list[str] = []
        for key in changed:
            section, name = part_of(key)
            if section == "ports":
                if old.ports.get(name or "") != new.ports.get(name or ""):
                    return False
            elif section == "provider":
                if old.provider != new.provider:
                    return False
            else:
                before, after = old.tenants.get(name or ""), new.tenants.get(name or "")
                if before is None or after is None:
                    return False  # a tenant made or removed
                if before is after:
                    continue
                if any(getattr(before, f) != getattr(after, f)
                       for f in Tenant.model_fields if f != "router"):
                    return False
                if any(getattr(before.router, f) != getattr(after.router, f)
                       for f in TenantRouter.model_fields if f != "firewall"):
                    return False  # more than the firewall changed
                if _nesting(before.router.firewall) != _nesting(after.router.firewall):
                    return False  # containers made, removed or nested differently
                tenants.append(name or "")
        for name in tenants:
            was, now = old.tenants[name].router.firewall, new.tenants[name].router.firewall
            for direction in ("ingress", "egress"):
                if was.rules(direction) != now.rules(direction):
                    self.gateway.set_rules(name, direction, now.rules(direction))
            for container in now.containers:
                if was.prefixes(container) != now.prefixes(container):
                    self.gateway.set_container(name, container,
                                               [str(p) for p in now.prefixes(container)])
        self.gateway.config = new
        return True

    def start_watching(self, interval: float = 0.5) -> None:
        """A thread that follows other writers' changes until ``stop``."""
        def loop() -> None:
            while not self._stop.is_set():
                try:
                    # A revision a write of ours is committing (``_pending``) or ran is
                    # not waited for, nor read back. Should the write fail, ``_pending``
                    # goes back to 0 and the revision is looked at after all.
                    revision = self.store.wait(max(self.revision, self._pending), interval)
                    if revision is None or revision <= max(self.revision, self._pending):
                        continue
                    with self._writing:
                        # Past what we hold, under the lock: another writer's; read it.
                        if revision > self.revision:
                            self._sync(self.store.read())
                except StoreError:
                    if self._stop.wait(interval):
                        return  # the store unreachable for now: try again, unless stopping

        self._spawn(loop, "portico-watch")

    def replay(self, path: str, *, batch_size: int = 256, loop: bool = False,
               on_batch: Callable[[Any], None] | None = None) -> None:
        """A thread that feeds a capture through the gateway (the traffic source when there
        are no live ports). With ``loop`` the capture runs again and again, its times
        shifted each pass so the gateway's clock only goes forward. ``on_batch(batch)``
        is called under the lock, right after the gateway processed the batch: there
        ``self.revision`` is the revision the batch was decided under."""
        from portico.io.capture import open_capture

        def run() -> None:
            shift = 0
            while not self._stop.is_set():
                first = last = None
                with open_capture(path) as reader:
                    for batch in reader.batches(batch_size):
                        if self._stop.is_set():
                            return
                        stamps = batch.meta["timestamp"][: batch.count]
                        first = int(stamps.min()) if first is None else first
                        last = int(stamps.max())
                        stamps += shift
                        with self.lock:
                            sent = self.gateway.process(batch, last + shift)
                            self.ports.count(batch)
                            for emitted in sent:
                                self.ports.count(emitted, received=False)
                            if on_batch is not None:
                                on_batch(batch)
                if not loop or first is None or last is None:
                    return
                shift += last - first + 1_000_000  # the next pass starts 1 ms later

        self._spawn(run, "portico-replay")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self.store.close()
