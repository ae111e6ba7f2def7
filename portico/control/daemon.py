"""daemon: the gateway as a service — desired state in a store, changes applied live.

Role. A ``Daemon`` holds a ``Gateway`` and a ``Store`` (``portico.control.store``:
SQLite embedded, etcd shared by several nodes). The store holds the desired
state, the config document split into objects (``ports/<name>``, ``provider``,
``tenants/<name>``); the gateway runs what the store last said.

Theory of operation.

* **Writes** (``apply``, ``put_object``, ``delete_object``) build the whole new
  document, validate it whole (``parse_config``: a bad field is refused with its
  path, nothing is half-applied), and commit only the objects that differ, in
  one store transaction, optionally conditional on the revision the writer saw
  (``expect``: a stale writer gets ``Conflict``, not a lost update). The commit
  is durable when it returns; the daemon then brings the gateway to it at once
  (``sync``), so a successful API call is already in effect when it answers.
* **Reads of the desired state** come from the store; reads of the running state
  (stats, flows, metrics) from the gateway, under the same lock as traffic.
* **Other writers** (another daemon on the same etcd, a second process on the
  same SQLite file) are seen by the watcher thread (``Store.watch``), which
  syncs the same way. ``sync`` compiles the new config into new tables
  (``Gateway.reconfigure``: a new generation; what the gateway learned stays)
  and swaps them in between two batches, under the lock: no batch sees half of
  a change, and no packet after it is decided by an entry made before it. A
  change to tenants' firewall rules or container prefixes alone takes the
  incremental way instead (``_rules_only``): the classifier updates in place
  and only those tenants' flows, in those directions, are decided again.
* **Traffic** for now comes from a capture replayed in a thread (``replay``):
  control-plane tests need no live interface.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from portico.control.metrics import PortCounters
from portico.control.model import Config, ConfigError, parse_config
from portico.control.store import Snapshot, Store, document_of, objects_of
from portico.datapath.gateway import Gateway

Document = dict[str, Any]


@dataclass(frozen=True)
class Applied:
    """What a write did: the revision now in force and the objects it changed."""

    revision: int
    changed: dict[str, str]  # key -> "added" | "changed" | "removed"


def changes_between(old: Mapping[str, dict], new: Mapping[str, dict]) -> dict[str, dict | None]:
    """The store changes that turn ``old`` objects into ``new`` (None: delete)."""
    changes: dict[str, dict | None] = {k: v for k, v in new.items() if old.get(k) != v}
    changes.update({k: None for k in old if k not in new})
    return changes


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


def _without_firewall(tenant: Mapping[str, Any]) -> dict[str, Any]:
    """A tenant document with its router's firewall left out (shallow copies only)."""
    router = {k: v for k, v in (tenant.get("router") or {}).items() if k != "firewall"}
    return {**tenant, "router": router}


class Daemon:
    """A gateway kept at the store's desired state (see the module's docstring)."""

    def __init__(self, store: Store, *, initial: Mapping[str, Any] | None = None,
                 cache: bool = True, flows: int = 1 << 16, seed: int | None = None) -> None:
        self.store = store
        self.lock = threading.RLock()  # the gateway: traffic, reconfiguration, reads
        snapshot = store.read()
        if snapshot.revision == 0 and initial is not None:
            parse_config(dict(initial))  # refuse a bad seed config before storing it
            store.commit(objects_of(initial), expect=0)
            snapshot = store.read()
        self.config = parse_config(document_of(snapshot.objects))
        self.objects = snapshot.objects
        self.revision = snapshot.revision
        self.gateway = Gateway(self.config, cache=cache, flows=flows, seed=seed)
        self.ports = PortCounters()
        self.reconfigurations = 0
        self.last_apply_seconds = 0.0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ writes
    def document(self) -> Document:
        return document_of(self.objects)

    def apply(self, document: Mapping[str, Any], *, expect: int | None = None) -> Applied:
        """Make ``document`` the desired state (validated whole first)."""
        config = parse_config(dict(document))  # ConfigError names every bad field
        # Only the changed objects are stored, and the store checks what it encodes.
        new = objects_of(document, check=False)
        before = self.store.read()
        return self._commit(changes_between(before.objects, new), expect, config, before)

    def put_object(self, key: str, value: Mapping[str, Any], *,
                   expect: int | None = None) -> Applied:
        """Create or replace one object (``tenants/a``, ``ports/uplink``, ``provider``)."""
        before = self.store.read()
        objects = dict(before.objects)
        objects[key] = dict(value)
        config = parse_config(document_of(objects))
        return self._commit({key: dict(value)}, expect, config, before)

    def delete_object(self, key: str, *, expect: int | None = None) -> Applied:
        before = self.store.read()
        objects = dict(before.objects)
        if key not in objects:
            raise KeyError(key)
        del objects[key]
        config = parse_config(document_of(objects))  # what remains must still stand
        return self._commit({key: None}, expect, config, before)

    def _commit(self, changes: Mapping[str, dict | None], expect: int | None,
                config: Config, before: Snapshot) -> Applied:
        revision = self.store.commit(changes, expect=expect)
        after = dict(before.objects)
        for key, value in changes.items():
            if value is None:
                after.pop(key, None)
            else:
                after[key] = value
        if revision == before.revision + (1 if changes else 0):
            # Nobody wrote in between: the store holds what was just validated.
            self.sync(Snapshot(revision, after), config)
        else:
            self.sync(self.store.read())  # another writer came in: parse what is there
        changed = {k: ("removed" if v is None else "changed" if k in before.objects
                       else "added") for k, v in changes.items()}
        return Applied(revision, changed)

    # --------------------------------------------------------------- applying
    def sync(self, snapshot: Snapshot | None = None, parsed: Config | None = None) -> bool:
        """Bring the gateway to the store's state (``parsed``: that state, already
        validated); True if it changed anything."""
        snapshot = snapshot or self.store.read()
        with self.lock:
            if snapshot.revision <= self.revision:
                return False
            began = time.perf_counter()
            try:
                config = parsed or parse_config(document_of(snapshot.objects))
            except ConfigError:
                # Another writer stored something this version refuses: keep running
                # what we have, and say so in the stats.
                self.revision = snapshot.revision
                return False
            if not self._rules_only(self.objects, snapshot.objects, config):
                self.gateway.reconfigure(config)
            self.config, self.objects, self.revision = config, snapshot.objects, snapshot.revision
            self.reconfigurations += 1
            self.last_apply_seconds = time.perf_counter() - began
            return True

    def _rules_only(self, old: Mapping[str, dict], new: Mapping[str, dict],
                    config: Config) -> bool:
        """Apply a change that touches only tenants' firewall rules and container
        prefixes incrementally (``Gateway.set_rules``/``set_container``: the classifier
        updates in place, and only the flows of those tenants and directions are decided
        again), and say so; anything else needs a full reconfigure (False)."""
        changed = [k for k in set(old) | set(new) if old.get(k) != new.get(k)]
        if not changed or not all(k.startswith("tenants/") and k in old and k in new
                                  for k in changed):
            return False
        for key in changed:
            walls = [(old[key].get("router") or {}).get("firewall") or {},
                     (new[key].get("router") or {}).get("firewall") or {}]
            if _without_firewall(old[key]) != _without_firewall(new[key]):
                return False  # more than the firewall changed
            shape = [{name: sorted(m for m in members if str(m).startswith("container:"))
                      for name, members in (wall.get("containers") or {}).items()}
                     for wall in walls]
            if shape[0] != shape[1]:
                return False  # containers made, removed or nested differently
        for key in changed:
            name = key.split("/", 1)[1]
            firewall = config.tenants[name].router.firewall
            for direction in ("ingress", "egress"):
                self.gateway.set_rules(name, direction, firewall.rules(direction))
            for container in firewall.containers:
                self.gateway.set_container(name, container,
                                           [str(p) for p in firewall.prefixes(container)])
        self.gateway.config = config
        return True

    def start_watching(self, interval: float = 0.5) -> None:
        """A thread that follows other writers' changes until ``stop``."""
        def loop() -> None:
            while not self._stop.is_set():
                snapshot = self.store.watch(self.revision, interval)
                if snapshot is not None:
                    self.sync(snapshot)

        self._spawn(loop, "portico-watch")

    def replay(self, path: str, *, batch_size: int = 256, loop: bool = False,
               on_batch: Callable[[Any], None] | None = None) -> None:
        """A thread that feeds a capture through the gateway (the traffic source for now)."""
        from portico.io.capture import open_capture

        def run() -> None:
            while not self._stop.is_set():
                with open_capture(path) as reader:
                    for batch in reader.batches(batch_size):
                        if self._stop.is_set():
                            return
                        now = int(batch.meta["timestamp"][: batch.count].max())
                        with self.lock:
                            sent = self.gateway.process(batch, now)
                            self.ports.count(batch)
                            for emitted in sent:
                                self.ports.count(emitted, received=False)
                        if on_batch is not None:
                            on_batch(batch)
                if not loop:
                    return

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
