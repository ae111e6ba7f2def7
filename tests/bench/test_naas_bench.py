"""naas-alloc: runs every way in on both stores, checks itself, and reports its shape.

Tiny sizes and no timing assertions: what is held here is that the workload
runs end to end (SQLite, a real etcd when installed, the Unix socket, the
plugin as a process), that its check fails a run whose answers the store does
not hold, and the keys the harness prints from.
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from bench import harness, naas
from bench.workloads import MismatchError

TINY = naas.NaasSettings(seconds=30.0, warmup=2, cni_calls=2, max_allocations=12)


def test_every_way_in_runs_checked_on_both_stores() -> None:
    entries = naas.run_naas_alloc(TINY)
    measured = [e for e in entries if e["allocs_per_s"] is not None]
    stores = ("sqlite", "etcd") if shutil.which("etcd") else ("sqlite",)
    assert [(e["store"], e["path"]) for e in measured] == [
        (store, path) for store in stores for path in naas.PATHS]
    for e in measured:
        assert e["checked"] is True and e["reason"] is None
        assert e["allocations"] == (2 if e["path"] == "portico-cni" else 12)
        assert e["allocs_per_s"] > 0 and e["releases_per_s"] > 0
        assert e["threads"] == (4 if e["path"] == "direct x4" else 1)
    lines = naas.format_naas(entries)
    assert lines[1].startswith("naas-alloc: NaaS allocations per second, pool 10.96.0.0/22")
    assert sum(line.startswith(("sqlite", "etcd")) for line in lines) == len(entries)


def test_answers_the_store_does_not_hold_fail_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from portico.services.naas.allocator import Allocator

    real = Allocator.allocate
    first: dict[str, Any] = {}

    def stale(self: Allocator, **request: Any) -> Any:
        # Every answer after the first repeats it: what a broken allocator could do.
        if not first:
            first["answer"] = real(self, **request)
        return first["answer"]

    monkeypatch.setattr(Allocator, "allocate", stale)
    with pytest.raises(MismatchError, match="naas-alloc"):
        naas.run_naas_alloc(naas.NaasSettings(stores=("sqlite",), paths=("direct",),
                                              seconds=30.0, warmup=1, max_allocations=3))


def test_the_harness_knows_the_workload() -> None:
    assert "naas-alloc" in harness.ALL_WORKLOADS
    assert harness.QUICK.naas_alloc == naas.QUICK_NAAS
