"""The hit-path kernels do no reference counting per packet.

An ``@njit`` helper that takes an array and indexes it on one branch only (or
leaves its loop early, or is not inlined) can make Numba keep an ``NRT_incref``
/ ``NRT_decref`` pair around every call: two atomic operations, ~16 ns here,
more than a whole lookup (see ``lookup4`` in ``portico/classify/lpm4.py``).
Nothing in the results shows it, only the speed, so this guards it.

How: compile a fresh copy of each kernel (a copy loaded from Numba's cache has
no IR to read) for the argument types the datapath passes, take its optimized
LLVM IR, find the basic blocks that lie on a cycle of the control-flow graph
(the loops) and look there for calls to ``NRT_incref``/``NRT_decref`` and for
atomic read-modify-writes (should LLVM ever inline the calls). The entry and
exit of a kernel may count references; its loops may not. Calls from the loops
to other compiled functions are listed too: such a helper, not inlined,
counts references to its array arguments on every call, out of sight of the
caller's IR. Each kernel names the few it may call on a rare path (a miss, an
expired binding, a tunnel). The first test checks that the checker sees the
pattern it is for.

Known and left: ``parse_tunnel``, called once per tunnelled packet, counts a
reference to the slot array on entry and exit (its paths are too long for
Numba's pruning pass to pair them).
"""

from __future__ import annotations

import re
from typing import Any

import numba
import numpy as np
import pytest
from numba import njit

from portico.classify.lpm4 import LPM4
from portico.classify.lpm4 import _lookup_batch as lookup4_batch
from portico.classify.lpm6 import LPM6
from portico.classify.lpm6 import _lookup_batch as lookup6_batch
from portico.datapath import conntable, conntrack, datapath, flowcache, nat, neighbours, replies
from portico.datapath.actions import ActionTable, apply_kernel
from portico.datapath.flowcache import MAX_TAGS, FlowCache
from portico.datapath.stages.parse import parse_rows
from portico.gen import TrafficSpec, generate
from portico.packet.checksum import ipv4_header_checksums, l4_checksums

_DEFINE = re.compile(r'^define [^@]*@"?([^"(]+)"?\(')
_LABEL = re.compile(r'^"?([-\w.$]+)"?:')
_TARGET = re.compile(r'label %"?([-\w.$]+)"?')
_REFOP = re.compile(r"call [^@]*@NRT_(?:incref|decref)\(|atomicrmw ")
_CALL = re.compile(r'call [^@]*@"?_ZN([^"(]+)"?\(')


def in_loops(kernel: Any, args: tuple[Any, ...]) -> tuple[list[str], set[str]]:
    """The reference-count operations inside the loops of a fresh compile of ``kernel``,
    and the names of the compiled functions those loops call."""
    fresh = njit(kernel.py_func)
    fresh.compile(tuple(numba.typeof(a) for a in args))
    ir = fresh.inspect_llvm(fresh.signatures[0])
    name = kernel.py_func.__name__
    found = [lines for fn, lines in _functions(ir).items()
             if f"{len(name)}{name}" in fn and not fn.startswith(("_ZN7cpython", "cfunc."))]
    assert len(found) == 1, f"no single compiled function for {name}"
    blocks = _blocks(found[0])
    looping = _on_cycles({b: {t for line in body for t in _TARGET.findall(line)}
                          for b, body in blocks.items()})
    lines = [line for b in looping for line in blocks[b]]
    return ([line.strip() for line in lines if _REFOP.search(line)],
            {_name(m) for line in lines for m in _CALL.findall(line)})


def _name(mangled: str) -> str:
    """The function's own name from Numba's mangled one: 7portico...3nat5_freeB2v4... -> _free."""
    name = ""
    while (m := re.match(r"\d+", mangled)) is not None:
        size = int(m.group())
        name = mangled[m.end() : m.end() + size]
        mangled = mangled[m.end() + size :]
    return name


def _functions(ir: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    body: list[str] | None = None
    for line in ir.splitlines():
        if (m := _DEFINE.match(line)) is not None:
            body = out.setdefault(m.group(1), [])
        elif line.startswith("}"):
            body = None
        elif body is not None:
            body.append(line)
    return out


def _blocks(lines: list[str]) -> dict[str, list[str]]:
    blocks: dict[str, list[str]] = {"<entry>": []}
    current = blocks["<entry>"]
    for line in lines:
        if (m := _LABEL.match(line)) is not None:
            current = blocks.setdefault(m.group(1), [])
        else:
            current.append(line)
    return blocks


def _on_cycles(graph: dict[str, set[str]]) -> set[str]:
    """Blocks in a strongly connected component with a cycle (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cyclic: set[str] = set()
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for nxt in successors:
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph[node]:
                        cyclic |= component
    return cyclic


# ---------------------------------------------------------------- the checker sees it
@njit(inline="always")
def _one_branch(tbl24, tbl8, address):  # type: ignore[no-untyped-def]
    entry = np.int64(tbl24[address >> 8])
    if entry >= 0x80000000:  # lookup4 before its fix: tbl8 read on this branch only
        entry = np.int64(tbl8[((entry & 0x7FFFFFFF) << 8) | (address & 0xFF)])
    return entry


@njit
def _loop_over_one_branch(tbl24, tbl8, addresses, out):  # type: ignore[no-untyped-def]
    for i in range(addresses.size):
        out[i] = _one_branch(tbl24, tbl8, np.int64(addresses[i]))


def test_the_checker_finds_refcounts_in_a_loop() -> None:
    tables = np.zeros(256, np.uint32), np.zeros(256, np.uint32)
    args = (*tables, np.zeros(4, np.uint32), np.zeros(4, np.int64))
    assert in_loops(_loop_over_one_branch, args)[0]
    assert in_loops(lookup4_batch, args[:3] + (np.zeros(4, np.uint32),)) == ([], set())


# ---------------------------------------------------------------- the hit-path kernels
RARE_CALLS = {  # what a kernel's loop may call, each on a path a hit does not take
    "parse": {"parse_tunnel", "parse_quote"},  # tunnelled packets; ICMP errors
    "nat out": {"_free", "_allocate"},  # an expired binding; a new one
    "nat in": {"_free"},
    "nat release": {"_free"},
    "conntrack process": {"_free", "_sweep"},  # an expired connection; a full table
    "replies": {"_refusal", "_set_icmp_meta", "parse_quote"},  # scalar helpers; errors
}


@pytest.fixture(scope="module")
def kernels() -> dict[str, tuple[Any, tuple[Any, ...]]]:
    """Each kernel with arguments of the types the datapath passes it. Only the types
    matter (the kernels are compiled, not run), so arrays of one type are shared."""
    spec = TrafficSpec(packets=64, flows=8, seed=1, mix={"tcp": 0.4, "udp": 0.4, "icmp": 0.2},
                       ipv6_share=0.25)
    batch = next(generate(spec, batch_size=64))
    data, meta = batch.data, batch.meta
    rows = np.arange(8, dtype=np.int64)  # also: any int64 column
    now = np.int64(1)
    u8, u32, u64 = np.zeros(8, np.uint8), np.zeros(8, np.uint32), np.zeros(8, np.uint64)
    cache = FlowCache(64, seed=1)
    table = cache.sig, cache.entries, cache._ctl
    nt = nat.NatTable([nat.Pool(tenant=0, addresses=["203.0.113.1"])], capacity=64, seed=1)
    b, pairs, ht, free, addrs, ctl = nt._b, nt._pairs, nt._ht, nt._free, nt._addrs, nt._ctl
    v4, v6 = LPM4(), LPM6()
    ct = conntable.ConnTrack(capacity=64, seed=1)
    nb = neighbours.NeighbourTable(seed=1)
    nowhere = datapath._Nowhere
    places = (nowhere.port_index, nowhere.by_port_vlan, nowhere.vni_keys, nowhere.vni_attachment,
              nowhere.attachment_segment, nowhere.segment_tenant)
    flags = np.zeros(64, np.bool_)
    return {
        "parse": (parse_rows, (data, meta, 64, True)),
        "triage": (datapath._triage, (meta, 64, rows, rows, 1500)),
        "flowcache lookup": (flowcache.lookup_kernel, (meta, rows, now, *table, ct.conns,
                                                       np.zeros(256, np.bool_))),
        "flowcache insert": (flowcache._insert, (meta, rows, np.zeros(8, np.int32),
                                                 np.zeros((8, MAX_TAGS), np.uint32), now, *table)),
        "flowcache expire": (flowcache._expire, (now, *table)),
        "hit path": (datapath._front, (data, meta, 64, True, True, rows, *places, flags, 1500,
                                       now, *table, ct.conns, np.zeros(256, np.bool_),
                                       ActionTable().records, rows, rows, rows, rows, rows)),
        "apply": (apply_kernel, (data, meta, rows, rows, ActionTable().records, 8)),
        "ipv4 checksums": (ipv4_header_checksums, (data, meta, 64)),
        "l4 checksums": (l4_checksums, (data, meta, 64)),
        "conntrack track": (conntrack.track, (u8, rows, np.arange(8, dtype=np.intp), u8, u8, u8,
                                              u8, rows, conntrack.DEFAULT_TIMEOUTS)),
        "nat out": (nat._out_kernel, (meta, rows, now, rows, rows, b, pairs, ht, free, nt._pools,
                                      addrs, nt._tpool, ctl)),
        "nat in": (nat._in_kernel, (meta, rows, now, False, rows, rows, b, pairs, ht, free, addrs,
                                    ctl)),
        "nat release": (nat._release_kernel, (rows, now, b, pairs, ht, free, addrs, ctl)),
        "conntrack process": (conntable._process, (meta, rows, rows, np.zeros(8, np.bool_), now,
                                                   u8, rows, ct.conns, ct.ht, ct.ctl)),
        "conntrack touch": (conntable._touch, (rows, now, ct.conns, ct.ctl)),
        "conntrack peek": (conntable._peek, (meta, rows, rows, now, np.zeros(8, np.bool_),
                                             ct.conns, ct.ht, ct.ctl)),
        "replies": (replies.build_kernel, (data, meta, rows, np.zeros(64, replies.REPLY_DTYPE))),
        "neighbours resolve4": (neighbours._resolve4, (nb.keys, nb.records, nb.seed, rows, u64,
                                                       now)),
        "lpm4 lookup": (lookup4_batch, (v4.tbl24, v4.tbl8, u32, u32)),
        "lpm6 lookup": (lookup6_batch, (v6.root, v6.nodes, u64, u64, u32)),
    }


@pytest.mark.parametrize("name", [
    "parse", "triage", "flowcache lookup", "flowcache insert", "flowcache expire", "hit path",
    "apply", "ipv4 checksums", "l4 checksums", "conntrack track", "nat out", "nat in",
    "nat release", "lpm4 lookup", "lpm6 lookup", "conntrack process", "conntrack touch",
    "conntrack peek", "replies", "neighbours resolve4",
])
def test_no_reference_counting_inside_the_loops(
    name: str, kernels: dict[str, tuple[Any, tuple[Any, ...]]]
) -> None:
    kernel, args = kernels[name]
    refops, calls = in_loops(kernel, args)
    assert refops == []
    assert calls <= RARE_CALLS.get(name, set())
