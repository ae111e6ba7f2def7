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

ICMP errors (RFC 5508 section 4, RFC 7857 section 2.9) are found by the flow
they quote (the ``inner_*`` columns parse fills): inbound, the quoted source
is our external endpoint, so ``NatTable.icmp_error_in`` finds its binding;
outbound, the quoted destination is the internal endpoint, and
``icmp_error_out`` does. The error's own address gets an action, the quote a
``decided.quote`` record that ``portico.datapath.icmp_quote`` carries out after
the actions. An error about no binding is dropped ``no-binding``.

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
from portico.datapath.icmp_quote import DESTINATION, SOURCE
from portico.datapath.nat import ICMP, NatDrop, NatTable
from portico.datapath.pipeline import Decisions
from portico.datapath.stages.parse import ICMP4_ERROR

NAT_TAG_BASE = int(TagKind.NAT) << 28
SNAT_OPS = int(Op.SET_IP_SRC | Op.SET_SPORT)
DNAT_OPS = int(Op.SET_IP_DST | Op.SET_DPORT)
ECHO_OPS = int(Op.SET_IP_DST | Op.SET_SPORT)


def _icmp_errors(view: np.ndarray) -> np.ndarray:
    """Which rows are ICMPv4 errors (they quote the flow they are about)."""
    return (view["protocol"] == ICMP) & ICMP4_ERROR[view["icmp_type"]]


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
        errors = translate & _icmp_errors(view)
        if errors.any():
            self._errors(batch, rows[errors], view[errors], decided, outbound=True)
        sel = np.flatnonzero(translate & ~errors)
        if not len(sel):
            return
        now = int(view["timestamp"][sel].max())
        reasons = np.zeros(len(sel), dtype=np.int64)
        bindings = self.table.translate_out(view, sel, now, reasons=reasons)
        # A TCP segment without SYN took no binding: conntrack will name it invalid if
        # it belongs to no connection; if it does (its binding lost), no-binding.
        unopened = (bindings < 0) & (reasons == NatDrop.NO_BINDING)
        if unopened.any():
            decided.defer_drop(rows[sel[unopened]], NatDrop.NO_BINDING, self.NAME)
            keep = ~unopened
            sel, bindings, reasons = sel[keep], bindings[keep], reasons[keep]
        self._record(batch, rows[sel], bindings, reasons, decided, outbound=True)

    def _in(self, batch: Batch, rows: np.ndarray, view: np.ndarray, decided: Decisions) -> None:
        now = int(view["timestamp"].max()) if len(view) else 0
        reasons = np.zeros(len(rows), dtype=np.int64)
        v4 = view["ip_version"] == 4
        errors = v4 & _icmp_errors(view)
        if errors.any():
            self._errors(batch, rows[errors], view[errors], decided, outbound=False)
            rows, view, reasons, v4 = rows[~errors], view[~errors], reasons[~errors], v4[~errors]
        bindings = np.full(len(rows), -1, dtype=np.int64)
        sel = np.flatnonzero(v4)
        if len(sel):
            why = np.zeros(len(sel), dtype=np.int64)
            bindings[sel] = self.table.translate_in(view, sel, now, reasons=why)
            reasons[sel] = why
        reasons[~v4] = int(NatDrop.UNTRANSLATABLE)
        self._record(batch, rows, bindings, reasons, decided, outbound=False)

    def _errors(self, batch: Batch, rows: np.ndarray, view: np.ndarray, decided: Decisions, *,
                outbound: bool) -> None:
        """ICMP errors about a translated flow: the binding is found from the quote (its
        source, inbound: our external endpoint; its destination, outbound: the internal
        one), and both the error and its quote are rewritten (RFC 5508 4.2). Errors are
        rare and never cached, so this walks them one by one."""
        meta = batch.meta
        a = decided.actions
        for k, row in enumerate(rows):
            q = view[k]
            now = int(q["timestamp"])
            if outbound:
                found = self.table.icmp_error_out(int(q["tenant"]), int(q["inner_protocol"]),
                                                  int(q["inner_dst4"]), int(q["inner_dport"]),
                                                  now)
            else:
                found = self.table.icmp_error_in(int(q["inner_protocol"]), int(q["inner_src4"]),
                                                 int(q["inner_sport"]), now)
            if found is None or q["inner_l4"] < 0:
                meta["drop"][row] = int(NatDrop.NO_BINDING)
                continue
            if outbound:
                a["ops"][row] |= int(Op.SET_IP_SRC)
                a["ip_src"][row] = found.address
            else:
                a["ops"][row] |= int(Op.SET_IP_DST)
                a["ip_dst"][row] = found.address
                decided.domain[row] = found.tenant
            decided.quote[row] = (DESTINATION if outbound else SOURCE, found.address, found.port)
        decided.no_cache(rows)

    def _record(self, batch: Batch, rows: np.ndarray, bindings: np.ndarray,
                reasons: np.ndarray, decided: Decisions, *, outbound: bool) -> None:
        failed = bindings < 0
        batch.meta["drop"][rows[failed]] = np.where(reasons[failed] > 0, reasons[failed],
                                                     int(NatDrop.NO_BINDING))
        # A missing binding or a full pool is the table's state of the moment, and no tag
        # tells the cache when it changes (a host opens the port, a binding expires):
        # these drops hold for this packet only.
        decided.no_cache(rows[failed])
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
