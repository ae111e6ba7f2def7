"""``portico bench``: run the workloads through Portico and the peers, side by side.

One run generates one pool of packets (64-byte IPv4 TCP/UDP, 100k flows, the
issue's traffic) and, per workload, times

* Portico over the whole pool, cut into Batches of each requested size (the
  cost curve against batch size), and
* each peer (``struct``, ``dpkt``, ``scapy``) over a stated sample of the same
  packets, the first N of the pool, since the slow ones would take minutes
  over all of it.

A figure is packets divided by the median wall time of several repeats, with
the garbage collector off while timing (as ``timeit`` does) and the process
pinned to one CPU (``os.sched_setaffinity``) so Portico and the peers get the
same single core. Numba's first call (compiling, or loading its cache) is
timed apart and reported as ``numba_first_call_s``.

Before any figure is trusted, the run checks that everyone computed the same
thing: Portico's parsed 5-tuples and every peer's equal the ``struct`` peer's,
and Portico's SNAT output equals the ``struct`` peer's byte for byte (as do
dpkt's and Scapy's on their samples). A mismatch fails the run (exit 1).

Output: a table with ratios (Portico / peer), or ``--json``::

    {"machine": {...}, "run": {...},
     "workloads": [{"name": "parse", "packets": N, "batch": B, "pps": X,
                    "peers": {"scapy": X, "dpkt": X, "struct": X},
                    "peer_packets": {...}, "ratios": {...}}, ...]}

with one entry per workload and batch size. ``--plot PATH`` draws pps
against batch size (PNG).
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.peers import PEERS
from bench.workloads import (
    WORKLOADS,
    MismatchError,
    Pool,
    bench_spec,
    compare_frames,
    five_tuples,
    make_pool,
    output_frames,
    snat,
    views,
)

PEER_NAMES = ("struct", "dpkt", "scapy")
SWEEP = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)

# Targets from issue 2: (workload, smallest batch it applies to, Mpps).
TARGETS = (("parse", 256, 20.0), ("snat", 256, 8.0), ("snat", 4096, 10.0))
RATIO_TARGETS = {"scapy": 1000.0, "dpkt": 100.0}


@dataclass(frozen=True)
class Settings:
    packets: int
    batches: tuple[int, ...]
    repeats: int
    samples: dict[str, int] = field(default_factory=dict)  # peer -> packets
    peer_repeats: int = 3
    quick: bool = False


FULL = Settings(packets=1 << 18, batches=SWEEP, repeats=7,
                samples={"struct": 1 << 18, "dpkt": 50_000, "scapy": 5_000})
QUICK = Settings(packets=1 << 16, batches=(256, 4096), repeats=3,
                 samples={"struct": 20_000, "dpkt": 5_000, "scapy": 500}, quick=True)


# ---------------------------------------------------------------- timing
def median_seconds(work: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls, GC off; also the last call's result."""
    times = []
    result: object = None
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            began = time.perf_counter()
            result = work()
            times.append(time.perf_counter() - began)
    finally:
        if enabled:
            gc.enable()
    return statistics.median(times), result


def portico_work(workload: str, pool: Pool, batch_size: int,
                 out: np.ndarray) -> Callable[[], None]:
    from portico.datapath.stages.parse import parse

    cut = views(pool.batch, batch_size, out)
    if workload == "parse":
        def run() -> None:
            for view, _ in cut:
                parse(view)
    else:
        def run() -> None:
            for view, rows in cut:
                parse(view)
                snat(view, rows)  # type: ignore[arg-type]
    return run


def first_call_seconds() -> float:
    """Time Numba's first calls (compile on a cold cache, load on a warm one)."""
    from portico.datapath.stages.parse import parse

    pool = make_pool(bench_spec(4, flows=4))
    out = np.zeros_like(pool.batch.data)
    began = time.perf_counter()
    parse(pool.batch)
    snat(pool.batch, out)
    return time.perf_counter() - began


# ---------------------------------------------------------------- checking
def verify(workload: str, pool: Pool, peer_results: dict[str, Sequence]) -> None:
    """Raise MismatchError unless Portico and every peer agree with ``struct``."""
    from portico.datapath.stages.parse import parse

    reference = peer_results["struct"]
    rows = len(reference)
    parse(pool.batch)
    if workload == "parse":
        portico = five_tuples(pool.batch, rows)
        if portico != list(reference):
            bad = next(i for i, (a, b) in enumerate(zip(reference, portico, strict=True))
                       if a != b)
            raise MismatchError(f"parse: packet {bad}: portico {portico[bad]}, "
                                f"struct {reference[bad]}")
        for name, result in peer_results.items():
            if list(result) != list(reference[: len(result)]):
                raise MismatchError(f"parse: {name} disagrees with struct")
        return
    out = np.zeros_like(pool.batch.data)
    snat(pool.batch, out)
    compare_frames(reference, output_frames(pool.batch, out, rows),
                   expected_by="struct", actual_by="portico")
    for name, result in peer_results.items():
        if name != "struct":
            compare_frames(reference[: len(result)], result, expected_by="struct",
                           actual_by=name)


# ---------------------------------------------------------------- a run
def machine_info() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        memory_gb = round(int(first.split()[1]) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    versions = {}
    for package in ("numpy", "numba", "scapy", "dpkt"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": model, "cores": os.cpu_count(), "memory_gb": memory_gb,
            "platform": platform.platform(), "python": platform.python_version(), **versions}


def pin_to_one_cpu() -> int | None:
    """Pin this process to the last CPU it may use; None where that is not possible."""
    try:
        cpu = max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):
        return None
    return cpu


def run_bench(settings: Settings, workloads: Sequence[str],
              status: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Run the suite; the dict ``--json`` prints. Raises MismatchError on disagreement."""
    began = time.perf_counter()
    machine = machine_info()
    machine["pinned_cpu"] = pin_to_one_cpu()
    status("compiling (Numba first call)")
    machine["numba_first_call_s"] = round(first_call_seconds(), 3)
    status(f"generating {settings.packets} packets")
    pool = make_pool(bench_spec(settings.packets))
    entries = []
    for workload in workloads:
        peers: dict[str, float] = {}
        peer_packets: dict[str, int] = {}
        results: dict[str, Sequence] = {}
        for name in PEER_NAMES:
            sample = pool.frames[: min(settings.samples.get(name, pool.count), pool.count)]
            status(f"{workload}: {name} over {len(sample)} packets")
            peer = PEERS[workload][name]
            seconds, result = median_seconds(lambda p=peer, s=sample: p(s),
                                             settings.peer_repeats)
            peers[name] = len(sample) / seconds
            peer_packets[name] = len(sample)
            results[name] = result  # type: ignore[assignment]
        status(f"{workload}: checking everyone agrees")
        verify(workload, pool, results)
        out = np.zeros_like(pool.batch.data)
        for size in settings.batches:
            status(f"{workload}: portico at batch {size}")
            work = portico_work(workload, pool, size, out)
            work()  # warm caches and pages
            seconds, _ = median_seconds(work, settings.repeats)
            pps = pool.count / seconds
            entries.append({
                "name": workload, "packets": pool.count, "batch": size, "pps": round(pps),
                "peers": {name: round(value) for name, value in peers.items()},
                "peer_packets": peer_packets,
                "ratios": {name: round(pps / value, 1) for name, value in peers.items()},
            })
    run = {"quick": settings.quick,
           "repeats": settings.repeats, "peer_repeats": settings.peer_repeats,
           "traffic": "64-byte IPv4 frames, TCP/UDP 50/50, 100k flows, uniform",
           "timing": "median wall time; GC off while timing; one pinned CPU",
           "verified": True, "elapsed_s": round(time.perf_counter() - began, 1)}
    return {"machine": machine, "run": run, "workloads": entries}


# ---------------------------------------------------------------- reporting
def _rate(pps: float) -> str:
    if pps >= 1e6:
        return f"{pps / 1e6:.2f} M"
    if pps >= 1e3:
        return f"{pps / 1e3:.1f} k"
    return f"{pps:.0f} "


def format_table(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"{m['cpu']}, {m['cores']} cores; Python {m['python']}, NumPy {m['numpy']}, "
             f"Numba {m['numba']}; pinned to CPU {m['pinned_cpu']}; "
             f"Numba first call {m['numba_first_call_s']} s",
             "",
             f"{'workload':<9}{'batch':>7}{'portico pps':>14}"
             + "".join(f"{name + ' pps':>13}" for name in PEER_NAMES)
             + "".join(f"{'x ' + name:>10}" for name in PEER_NAMES)]
    for entry in report["workloads"]:
        lines.append(f"{entry['name']:<9}{entry['batch']:>7}{_rate(entry['pps']):>14}"
                     + "".join(f"{_rate(entry['peers'][n]):>13}" for n in PEER_NAMES)
                     + "".join(f"{entry['ratios'][n]:>10,.0f}" for n in PEER_NAMES))
    samples = report["workloads"][0]["peer_packets"] if report["workloads"] else {}
    lines += ["", "peers timed on the first " + ", ".join(
        f"{count} packets ({name})" for name, count in samples.items())
        + f" of the {report['workloads'][0]['packets'] if report['workloads'] else 0}; "
        "outputs checked equal to struct's"]
    lines += [""] + [f"target: {line}" for line in target_lines(report)]
    return "\n".join(lines)


def target_lines(report: dict[str, Any]) -> list[str]:
    """The issue's targets, each with what this run measured."""
    lines = []
    for workload, batch, mpps in TARGETS:
        got = [e for e in report["workloads"] if e["name"] == workload and e["batch"] == batch]
        if got:
            value = got[0]["pps"] / 1e6
            verdict = "met" if value >= mpps else "MISSED"
            lines.append(f"{workload} >= {mpps:g} Mpps at batch {batch}: "
                         f"{value:.2f} Mpps, {verdict}")
    for peer, ratio in RATIO_TARGETS.items():
        for workload in dict.fromkeys(e["name"] for e in report["workloads"]):
            at = [e for e in report["workloads"] if e["name"] == workload and e["batch"] == 256]
            if at:
                value = at[0]["ratios"][peer]
                verdict = "met" if value >= ratio else "MISSED"
                lines.append(f"{workload} >= {ratio:g}x {peer} at batch 256: "
                             f"{value:,.0f}x, {verdict}")
    return lines


def plot(report: dict[str, Any], path: str | Path) -> None:
    """pps against batch size for each workload, peers as flat lines (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {"parse": ("tab:blue", "o"), "snat": ("tab:red", "s")}
    for workload in dict.fromkeys(e["name"] for e in report["workloads"]):
        entries = sorted((e for e in report["workloads"] if e["name"] == workload),
                         key=lambda e: e["batch"])
        color, marker = styles.get(workload, ("black", "x"))
        ax.plot([e["batch"] for e in entries], [e["pps"] for e in entries], marker=marker,
                color=color, label=f"Portico {workload}")
        for name, dash in zip(PEER_NAMES, (":", "--", "-."), strict=True):
            ax.axhline(entries[0]["peers"][name], color=color, linestyle=dash, linewidth=0.8,
                       alpha=0.6, label=f"{name} {workload}")
    for workload, batch, mpps in TARGETS:
        color = styles.get(workload, ("black", "x"))[0]
        ax.plot([batch], [mpps * 1e6], marker="*", markersize=11, color=color,
                linestyle="none")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (packets)")
    ax.set_ylabel("packets per second")
    m = report["machine"]
    ax.set_title(f"Portico vs peers, 64-byte IPv4 TCP/UDP, one core\n{m['cpu']}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="center right")
    fig.text(0.99, 0.01, "stars: issue 2 targets", ha="right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- CLI
def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``portico bench``."""
    parser.add_argument("--quick", action="store_true",
                        help="fewer packets, batch 256 and 4096 only (under a minute)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--workload", action="append", choices=WORKLOADS, metavar="NAME",
                        help=f"run only this workload ({', '.join(WORKLOADS)}); repeatable")
    parser.add_argument("--batch", action="append", type=_positive, metavar="B",
                        help="batch size for Portico; repeatable (default: a sweep "
                             "32..16384, or 256 and 4096 with --quick)")
    parser.add_argument("--packets", type=_positive, metavar="N",
                        help="packets in the pool (default 262144, 65536 with --quick)")
    parser.add_argument("--plot", metavar="PATH", help="write pps against batch size (PNG)")


def settings_from_args(args: argparse.Namespace) -> Settings:
    base = QUICK if args.quick else FULL
    packets = args.packets or base.packets
    return Settings(packets=packets,
                    batches=tuple(dict.fromkeys(args.batch)) if args.batch else base.batches,
                    repeats=base.repeats, samples=base.samples,
                    peer_repeats=base.peer_repeats, quick=base.quick)


def run(args: argparse.Namespace) -> int:
    """``portico bench``: 0 on success, 1 if the contenders disagree."""
    settings = settings_from_args(args)
    workloads = tuple(dict.fromkeys(args.workload)) if args.workload else WORKLOADS
    chatty = sys.stderr.isatty()

    def status(text: str) -> None:
        if chatty:
            sys.stderr.write(f"\r\033[Kbench: {text}")
            sys.stderr.flush()

    try:
        report = run_bench(settings, workloads, status)
    except MismatchError as err:
        status("")
        print(f"portico bench: error: results disagree: {err}", file=sys.stderr)
        return 1
    status("")
    if chatty:
        sys.stderr.write("\r\033[K")
    if args.plot:
        plot(report, args.plot)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.harness``: the same as ``portico bench``."""
    parser = argparse.ArgumentParser(prog="portico bench", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

