"""The ``lpm`` workload: batch longest-prefix lookups against route tables, beside peers.

Route tables are generated deterministically (``routes4``, ``routes6``) with a
length mix shaped like a BGP table: for IPv4 mostly /24 (60 %), /16-/23 for
most of the rest, a few shorter, and /25-/32 for 3 %; for IPv6 mostly /48 and
/32, with /29-/64 in between and a few host routes. Addresses to look up
(``queries``) are 90 % inside a random route of the table (random host bits)
and 10 % uniform, so most lookups find a route and some fall through.

Contenders, each over the same routes and addresses:

* **portico**: ``LPM4`` / ``LPM6`` built in bulk with ``add_many`` and looked up
  with ``lookup_into`` over the address pool cut into batches of each size;
* **python**: the idiomatic pure-Python longest match, a dict per prefix length
  probed longest first;
* **pytricia**: ``pytricia.PyTricia`` (a C Patricia trie), ``get`` per address;
* **radix**: ``py-radix`` (``radix.Radix``, C), ``search_best(packed=...)``.

Peers are timed on the first N addresses of the pool (stated in the report),
and before any figure is kept every peer's answers must equal Portico's for
those addresses, and Portico's must equal the pure-Python reference's
(``MismatchError`` otherwise). Memory per prefix: Portico's ``memory_bytes()``
over the route count (``bytes_per_prefix``; its 2**24-entry ``tbl24`` is
allocated lazily, so ``resident_bytes_per_prefix`` also gives the growth of
the process's resident set while building), and for each peer the growth of
the resident set while building it (after ``gc.collect`` and ``malloc_trim``).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.timing import median_seconds
from bench.workloads import MismatchError

NO_MATCH = 0xFFFFFFFF
LPM_PEERS = ("python", "pytricia", "radix")
# (prefix length, share of the table)
MIX4 = ((8, 0.002), (12, 0.003), (14, 0.005), (15, 0.005), (16, 0.02), (17, 0.01),
        (18, 0.02), (19, 0.03), (20, 0.05), (21, 0.05), (22, 0.10), (23, 0.085),
        (24, 0.59), (25, 0.005), (26, 0.005), (27, 0.005), (28, 0.005), (29, 0.004),
        (30, 0.003), (31, 0.001), (32, 0.002))
MIX6 = ((20, 0.002), (24, 0.003), (28, 0.01), (29, 0.05), (32, 0.17), (33, 0.01),
        (36, 0.03), (40, 0.06), (44, 0.07), (46, 0.01), (47, 0.005), (48, 0.48),
        (52, 0.01), (56, 0.03), (60, 0.01), (64, 0.04), (96, 0.005), (128, 0.005))
TARGET_LPM = (1_000_000, 30.0)  # issue 3: >= 30 M lookups/s at 1M IPv4 routes


@dataclass(frozen=True)
class LpmSettings:
    sizes4: tuple[int, ...]
    sizes6: tuple[int, ...]
    lookups: int  # addresses in the pool Portico cycles through
    batches: tuple[int, ...]
    repeats: int
    samples: dict[str, int]  # peer -> addresses it looks up
    peer_repeats: int = 3


FULL_LPM = LpmSettings(sizes4=(1_000, 100_000, 1_000_000), sizes6=(1_000, 100_000),
                       lookups=1 << 16, batches=(256, 1024, 4096, 16384), repeats=7,
                       samples={"python": 20_000, "pytricia": 100_000, "radix": 100_000})
QUICK_LPM = LpmSettings(sizes4=(1_000, 1_000_000), sizes6=(100_000,), lookups=1 << 16,
                        batches=(256, 4096), repeats=3,
                        samples={"python": 5_000, "pytricia": 20_000, "radix": 20_000},
                        peer_repeats=1)


# ---------------------------------------------------------------- routes and traffic
def _lengths(rng: np.random.Generator, count: int,
             mix: Sequence[tuple[int, float]]) -> np.ndarray:
    lengths = np.array([length for length, _ in mix])
    share = np.array([weight for _, weight in mix])
    return rng.choice(lengths, size=count, p=share / share.sum())


def routes4(count: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` distinct IPv4 routes: (addresses uint32, lengths, values 0..count-1)."""
    rng = np.random.default_rng(seed)
    addresses = np.empty(0, np.uint64)
    lengths = np.empty(0, np.int64)
    while addresses.size < count:
        want = int((count - addresses.size) * 1.1) + 16
        length = _lengths(rng, want, MIX4)
        base = rng.integers(1 << 24, 224 << 24, want, dtype=np.uint64)  # 1/8 .. 223/8
        keep = (np.uint64(0xFFFFFFFF) << (np.uint64(32) - length.astype(np.uint64)))
        address = base & keep & np.uint64(0xFFFFFFFF)
        addresses = np.concatenate([addresses, address])
        lengths = np.concatenate([lengths, length])
        key = (addresses << np.uint64(6)) | lengths.astype(np.uint64)
        _, first = np.unique(key, return_index=True)
        first.sort()
        addresses, lengths = addresses[first], lengths[first]
    addresses, lengths = addresses[:count], lengths[:count]
    return addresses.astype(np.uint32), lengths, np.arange(count, dtype=np.int64)


def routes6(count: int, seed: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``count`` distinct IPv6 routes under 2000::/3: (hi, lo, lengths, values)."""
    rng = np.random.default_rng(seed)
    hi = np.empty(0, np.uint64)
    lo = np.empty(0, np.uint64)
    lengths = np.empty(0, np.int64)
    ones = np.uint64(0xFFFFFFFFFFFFFFFF)
    while hi.size < count:
        want = int((count - hi.size) * 1.1) + 16
        length = _lengths(rng, want, MIX6)
        # Long prefixes sit inside allocations: the first 32 bits come from count/4 blocks.
        blocks = rng.integers(0, 1 << 29, max(1, count // 4), dtype=np.uint64) | np.uint64(1 << 29)
        h = ((rng.choice(blocks, want) << np.uint64(32))
             | rng.integers(0, 1 << 32, want, dtype=np.uint64))
        low = rng.integers(0, 1 << 63, want, dtype=np.uint64) * np.uint64(2)
        hbits = np.minimum(length, 64).astype(np.uint64)
        hkeep = np.where(hbits == 0, np.uint64(0),
                         ones << (np.uint64(64) - np.maximum(hbits, np.uint64(1))))
        lbits = np.maximum(length - 64, 0).astype(np.uint64)
        lkeep = np.where(lbits == 0, np.uint64(0),
                         ones << (np.uint64(64) - np.maximum(lbits, np.uint64(1))))
        hi = np.concatenate([hi, h & hkeep])
        lo = np.concatenate([lo, low & lkeep])
        lengths = np.concatenate([lengths, length])
        key = np.stack([hi, lo, lengths.astype(np.uint64)], axis=1)
        _, first = np.unique(key, axis=0, return_index=True)
        first.sort()
        hi, lo, lengths = hi[first], lo[first], lengths[first]
    return hi[:count], lo[:count], lengths[:count], np.arange(count, dtype=np.int64)


def queries4(addresses: np.ndarray, lengths: np.ndarray, count: int,
             seed: int = 5) -> np.ndarray:
    """``count`` addresses: 90 % inside a random route (random host bits), 10 % uniform."""
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, addresses.size, count)
    host = rng.integers(0, 1 << 32, count, dtype=np.uint64)
    span = (np.uint64(1) << (np.uint64(32) - lengths[pick].astype(np.uint64))) - np.uint64(1)
    inside = addresses[pick].astype(np.uint64) | (host & span)
    uniform = rng.integers(0, 1 << 32, count, dtype=np.uint64)
    return np.where(rng.random(count) < 0.9, inside, uniform).astype(np.uint32)


def queries6(hi: np.ndarray, lo: np.ndarray, lengths: np.ndarray, count: int,
             seed: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """``count`` IPv6 addresses: 90 % inside a random route, 10 % uniform in 2000::/3."""
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, hi.size, count)
    hbits = np.minimum(lengths[pick], 64).astype(np.uint64)
    lbits = np.maximum(lengths[pick] - 64, 0).astype(np.uint64)
    ones = np.uint64(0xFFFFFFFFFFFFFFFF)
    hhost = np.where(hbits >= 64, np.uint64(0), ones >> np.minimum(hbits, np.uint64(63)))
    lhost = np.where(lbits >= 64, np.uint64(0), ones >> np.minimum(lbits, np.uint64(63)))
    rh = rng.integers(0, 1 << 63, count, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    rl = rng.integers(0, 1 << 63, count, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    inside_hi = hi[pick] | (rh & hhost)
    inside_lo = lo[pick] | (rl & lhost)
    uniform = rng.random(count) >= 0.9
    uh = rng.integers(0, 1 << 61, count, dtype=np.uint64) | np.uint64(1 << 61)
    return (np.where(uniform, uh, inside_hi).astype(np.uint64),
            np.where(uniform, rl, inside_lo).astype(np.uint64))


# ---------------------------------------------------------------- peers
class DictLPM:
    """The pure-Python baseline: a dict per prefix length, probed longest first."""

    def __init__(self, width: int, addresses: Sequence[int], lengths: Sequence[int],
                 values: Sequence[int]) -> None:
        self.tables: dict[int, dict[int, int]] = {}
        for address, length, value in zip(addresses, lengths, values, strict=True):
            self.tables.setdefault(length, {})[address] = value
        full = (1 << width) - 1
        self.order = [(full ^ ((1 << (width - length)) - 1), self.tables[length])
                      for length in sorted(self.tables, reverse=True)]

    def lookup(self, addresses: Sequence[int]) -> list[int]:
        out: list[int] = []
        append = out.append
        order = self.order
        for address in addresses:
            for mask, table in order:
                value = table.get(address & mask)
                if value is not None:
                    append(value)
                    break
            else:
                append(NO_MATCH)
        return out


def _pytricia(width: int, keys: Sequence[Any], lengths: Sequence[int],
              values: Sequence[int]) -> Any:
    import pytricia

    table = pytricia.PyTricia(width)
    for key, length, value in zip(keys, lengths, values, strict=True):
        table.insert(key, length, value)
    return table


def _radix(packed: Sequence[bytes], lengths: Sequence[int], values: Sequence[int]) -> Any:
    import radix

    table = radix.Radix()
    for key, length, value in zip(packed, lengths, values, strict=True):
        table.add(packed=key, masklen=length).data["v"] = value
    return table


def _pytricia_lookup(table: Any, keys: Sequence[Any]) -> list[int]:
    get = table.get
    return [NO_MATCH if (value := get(key)) is None else value for key in keys]


def _radix_lookup(table: Any, packed: Sequence[bytes]) -> list[int]:
    search = table.search_best
    out = []
    for key in packed:
        node = search(packed=key)
        out.append(NO_MATCH if node is None else node.data["v"])
    return out


# ---------------------------------------------------------------- measuring
def _resident() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * 4096


def _settle() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _built(build: Callable[[], Any]) -> tuple[Any, float, int]:
    """(structure, build seconds, growth of the resident set in bytes)."""
    _settle()
    before = _resident()
    began = time.perf_counter()
    structure = build()
    seconds = time.perf_counter() - began
    return structure, seconds, max(0, _resident() - before)


def _check(name: str, got: Sequence[int], want: Sequence[int], label: str) -> None:
    if list(got) != list(want):
        bad = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
        raise MismatchError(f"lpm {label}: {name} gives {got[bad]} for address {bad}, "
                            f"portico {want[bad]}")


# ---------------------------------------------------------------- the workload
def run_lpm(settings: LpmSettings,
            status: Callable[[str], None] = lambda _: None) -> list[dict[str, Any]]:
    """Time every table size and batch size; one report entry per (family, size, batch)."""
    from portico.classify.lpm4 import LPM4
    from portico.classify.lpm6 import LPM6

    status("lpm: compiling (Numba first call)")  # so that build_s times the build alone
    LPM4(groups=1).add_many(np.array([0x0A000000]), np.array([28]), np.array([0]))
    LPM6(groups=1).add_many(np.array([1 << 63], np.uint64), np.zeros(1, np.uint64),
                            np.array([72]), np.array([0]))
    entries = []
    for routes in settings.sizes4:
        entries += _run_family(4, routes, settings, status)
        _settle()
    for routes in settings.sizes6:
        entries += _run_family(6, routes, settings, status)
    _settle()
    return entries


def _run_family(family: int, count: int, settings: LpmSettings,
                status: Callable[[str], None]) -> list[dict[str, Any]]:
    from portico.classify.lpm4 import LPM4
    from portico.classify.lpm6 import LPM6

    label = f"IPv{family}, {count} routes"
    status(f"lpm: generating {label}")
    lookups = settings.lookups
    if family == 4:
        addresses, lengths, values = routes4(count)
        pool: tuple[np.ndarray, ...] = (queries4(addresses, lengths, lookups),)
        ints = addresses.tolist()
        keys: list[Any] = ints
        packed = [a.to_bytes(4, "big") for a in ints]
        query_ints: list[int] = pool[0].tolist()
        query_keys: list[Any] = query_ints
        width = 32

        def build() -> Any:
            table = LPM4()
            table.add_many(addresses, lengths, values)
            return table
    else:
        hi, lo, lengths, values = routes6(count)
        pool = queries6(hi, lo, lengths, lookups)
        ints = [(h << 64) | low for h, low in zip(hi.tolist(), lo.tolist(), strict=True)]
        keys = packed = [a.to_bytes(16, "big") for a in ints]
        query_ints = [(h << 64) | low
                      for h, low in zip(pool[0].tolist(), pool[1].tolist(), strict=True)]
        query_keys = [a.to_bytes(16, "big") for a in query_ints]
        width = 128

        def build() -> Any:
            table = LPM6()
            table.add_many(hi, lo, lengths, values)
            return table
    lens, vals = lengths.tolist(), values.tolist()

    status(f"lpm: building portico, {label}")
    table, build_s, resident = _built(build)
    reference = table.lookup(*pool).tolist()
    peers: dict[str, tuple[float, float, float, int]] = {}
    for name in LPM_PEERS:
        status(f"lpm: {name}, {label}")
        n = min(settings.samples[name], lookups)
        if name == "python":
            peer, seconds, grown = _built(lambda: DictLPM(width, ints, lens, vals))
            work = functools.partial(peer.lookup, query_ints[:n])
        elif name == "pytricia":
            peer, seconds, grown = _built(lambda: _pytricia(width, keys, lens, vals))
            work = functools.partial(_pytricia_lookup, peer, query_keys[:n])
        else:
            peer, seconds, grown = _built(lambda: _radix(packed, lens, vals))
            sample = [a.to_bytes(width // 8, "big") for a in query_ints[:n]]
            work = functools.partial(_radix_lookup, peer, sample)
        elapsed, answers = median_seconds(work, settings.peer_repeats)
        _check(name, answers, reference[:n], label)  # type: ignore[arg-type]
        peers[name] = (n / elapsed, grown / count, seconds, n)
        del work  # the peer goes with the next build or this function
    entries = []
    out = np.empty(lookups, np.uint32)
    for size in settings.batches:
        status(f"lpm: portico at batch {size}, {label}")
        timed = _portico_work(table, pool, out, size)
        timed()
        seconds, _ = median_seconds(timed, settings.repeats)
        if out.tolist() != reference:
            raise MismatchError(f"lpm {label}: lookup_into at batch {size} disagrees "
                                "with lookup")
        rate = lookups / seconds
        entries.append({
            "name": "lpm", "family": f"ipv{family}", "routes": count, "batch": size,
            "lookups": lookups, "lookups_per_s": round(rate),
            "matched": round(sum(v != NO_MATCH for v in reference) / lookups, 3),
            "build_s": round(build_s, 3),
            "bytes_per_prefix": round(table.memory_bytes() / count, 1),
            "resident_bytes_per_prefix": round(resident / count, 1),
            "groups": table.groups_in_use,
            "peers": {name: round(p[0]) for name, p in peers.items()},
            "peer_lookups": {name: p[3] for name, p in peers.items()},
            "peer_bytes_per_prefix": {name: round(p[1], 1) for name, p in peers.items()},
            "peer_build_s": {name: round(p[2], 3) for name, p in peers.items()},
            "ratios": {name: round(rate / p[0], 1) for name, p in peers.items()},
        })
    return entries


def _portico_work(table: Any, pool: tuple[np.ndarray, ...], out: np.ndarray,
                  size: int) -> Callable[[], None]:
    """One timed pass: the address pool through ``lookup_into`` in batches of ``size``."""
    cuts = [slice(start, start + size) for start in range(0, out.size, size)]
    parts = [(*(column[cut] for column in pool), out[cut]) for cut in cuts]
    lookup_into = table.lookup_into

    def run() -> None:
        for part in parts:
            lookup_into(*part)
    return run


def format_lpm(entries: Sequence[dict[str, Any]]) -> list[str]:
    """The lpm rows of ``portico bench``'s table."""
    if not entries:
        return []
    lines = ["", f"{'lpm':<6}{'routes':>10}{'batch':>7}{'portico':>12}"
             + "".join(f"{name:>11}" for name in LPM_PEERS)
             + "".join(f"{'x ' + name:>11}" for name in LPM_PEERS)
             + f"{'B/prefix':>10}{'build s':>9}"]
    for e in entries:
        lines.append(f"{e['family']:<6}{e['routes']:>10,}{e['batch']:>7}"
                     f"{e['lookups_per_s'] / 1e6:>10.2f} M"
                     + "".join(f"{e['peers'][n] / 1e6:>9.3f} M" for n in LPM_PEERS)
                     + "".join(f"{e['ratios'][n]:>11,.0f}" for n in LPM_PEERS)
                     + f"{e['bytes_per_prefix']:>10,.0f}{e['build_s']:>9.2f}")
    seen = {}
    for e in entries:
        seen[(e["family"], e["routes"])] = e
    lines.append("lpm memory per prefix (resident growth while building): " + "; ".join(
        f"{fam} {routes:,}: portico {e['resident_bytes_per_prefix']:,.0f} B, "
        + ", ".join(f"{n} {b:,.0f} B" for n, b in e["peer_bytes_per_prefix"].items())
        for (fam, routes), e in seen.items()))
    first = entries[0]["peer_lookups"]
    lines.append("lpm peers timed on the first " + ", ".join(
        f"{n} addresses ({name})" for name, n in first.items())
        + f" of {entries[0]['lookups']}; every answer checked equal to portico's")
    return lines


def lpm_target_lines(entries: Sequence[dict[str, Any]]) -> list[str]:
    routes, mlps = TARGET_LPM
    got = [e for e in entries if e["family"] == "ipv4" and e["routes"] == routes
           and e["batch"] >= 256]
    if not got:
        return []
    at = min(got, key=lambda e: e["batch"])
    value = at["lookups_per_s"] / 1e6
    verdict = "met" if value >= mlps else "MISSED"
    return [f"lpm >= {mlps:g} M lookups/s at {routes:,} IPv4 routes: {value:.2f} M at batch "
            f"{at['batch']}, {verdict}"]
