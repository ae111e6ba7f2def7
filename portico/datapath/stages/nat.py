"""nat: the tenant router's NAT44, both ways: ``nat-out`` (SNAT) and ``nat-in`` (DNAT, un-SNAT).

Synopsis. Two places in the pipeline, one class (``NAME`` per instance):

* ``nat-out`` gets a tenant's packets leaving towards the provider (after
  ``firewall-out``, so the rules saw the tenant's own addresses). IPv4 TCP,
  UDP and ICMP echo get a binding from the tenant's pool (``portico.datapath.nat``:
  endpoint-independent mapping, port preservation, paired pooling, RFC 4787 /
  5382 / 5508 / 7857) and SET_IP_SRC + SET_SPORT to its external endpoint;
  next ``provider-route``. A tenant without SNAT sends its packets on
  untranslated (and IPv6, which this NAT does not translate).
* ``nat-in`` gets packets the provider routed to a tenant's public address
  (``route``/``provider-route`` set ``decided.domain`` to that tenant). The
  binding owning the destination endpoint (a static DNAT mapping, or the
  binding an inside host made) gives SET_IP_DST + SET_DPORT (the identifier,
  SET_SPORT, for an echo reply) and the packet's domain becomes the
  binding's tenant; next ``firewall-in``. No binding: drop ``no-binding``.

Hairpinning needs nothing of its own: a tenant's packet to a public address
goes ``nat-out`` (its source becomes its external endpoint, as RFC 4787
REQ-9 wants), then ``provider-route`` finds the public address and sends it
to ``nat-in``, whose translation takes it back inside, to the same tenant or
another.

Each translated row records its binding (``decided.binding``) and the tag
``tag(TagKind.NAT, binding)``: when a binding is freed, flows decided by it
are invalidated. Cache hits refresh the binding's idle timer through the
entry's ``nat_binding``, so a flow the cache forwards keeps its binding.

Filtering (RFC 4787 REQ-8) is the firewall's: ``firewall-in`` lets an
unsolicited packet open a connection only when its binding admits it
(``NatTable.admits_unsolicited``: static mappings and endpoint-independent
pools), otherwise only replies of tracked connections pass.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar

import numpy as np

from portico.batch import Batch
from portico.datapath.actions import Op
from portico.datapath.flowcache import TagKind
from portico.datapath.nat import ICMP, NatDrop, NatTable
from portico.datapath.pipeline import Decisions

NAT_TAG_BASE = int(TagKind.NAT) << 28
SNAT_OPS = int(Op.SET_IP_SRC | Op.SET_SPORT)
DNAT_OPS = int(Op.SET_IP_DST | Op.SET_DPORT)
ECHO_OPS = int(Op.SET_IP_DST | Op.SET_SPORT)


class Nat:
    """One direction of the tenant routers' NAT (see the module's docstring)."""

    DROPS: ClassVar[type[IntEnum] | None] = NatDrop
    PLACES: ClassVar[dict[str, tuple[str, ...]]] = {
        "nat-out": ("provider-route",),
        "nat-in": ("firewall-in",),
    }

    def __init__(self, place: str, table: NatTable) -> None:
        if place not in self.PLACES:
            raise ValueError(f"nat.place: {place!r} is not one of {sorted(self.PLACES)}")
        self.NAME = place  # type: ignore[misc]
        self.NEXT = self.PLACES[place]  # type: ignore[misc]
        self.table = table

    def process(self, batch: Batch, rows: np.ndarray, decision: np.ndarray,
                decided: Decisions) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        view = decided.effective(batch.meta, rows)
        decision[:] = 0
        if self.NAME == "nat-out":
            self._out(batch, rows, view, decided)
        else:
            self._in(batch, rows, view, decided)

    def _out(self, batch: Batch, rows: np.ndarray, view: np.ndarray,
             decided: Decisions) -> None:
        translate = (view["ip_version"] == 4) & self.table.has_pool(view["tenant"])
        sel = np.flatnonzero(translate)
        if not len(sel):
            return
        now = int(view["timestamp"][sel].max())
        reasons = np.zeros(len(sel), dtype=np.int64)
        bindings = self.table.translate_out(view, sel, now, reasons=reasons)
        self._record(batch, rows[sel], bindings, reasons, decided, outbound=True)

    def _in(self, batch: Batch, rows: np.ndarray, view: np.ndarray, decided: Decisions) -> None:
        now = int(view["timestamp"].max()) if len(view) else 0
        reasons = np.zeros(len(rows), dtype=np.int64)
        v4 = view["ip_version"] == 4
        bindings = np.full(len(rows), -1, dtype=np.int64)
        sel = np.flatnonzero(v4)
        if len(sel):
            why = np.zeros(len(sel), dtype=np.int64)
            bindings[sel] = self.table.translate_in(view, sel, now, reasons=why)
            reasons[sel] = why
        reasons[~v4] = int(NatDrop.UNTRANSLATABLE)
        self._record(batch, rows, bindings, reasons, decided, outbound=False)

    def _record(self, batch: Batch, rows: np.ndarray, bindings: np.ndarray,
                reasons: np.ndarray, decided: Decisions, *, outbound: bool) -> None:
        failed = bindings < 0
        batch.meta["drop"][rows[failed]] = np.where(reasons[failed] > 0, reasons[failed],
                                                     int(NatDrop.NO_BINDING))
        ok = rows[~failed]
        if not len(ok):
            return
        b = bindings[~failed]
        tenant, protocol, iaddr, iport, eaddr, eport = self.table.endpoints(b)
        a = decided.actions
        if outbound:
            a["ops"][ok] |= SNAT_OPS
            a["ip_src"][ok] = eaddr
            a["sport"][ok] = eport
        else:
            echo = protocol == ICMP
            a["ops"][ok] |= np.where(echo, ECHO_OPS, DNAT_OPS).astype(np.uint32)
            a["ip_dst"][ok] = iaddr
            a["sport"][ok[echo]] = iport[echo]
            a["dport"][ok[~echo]] = iport[~echo]
            decided.domain[ok] = tenant
        decided.binding[ok] = b
        decided.add_tag(ok, (NAT_TAG_BASE | b).astype(np.uint32))
