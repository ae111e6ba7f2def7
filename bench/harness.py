"""``portico bench``: run the workloads through Portico and the peers, side by side.

One run generates one pool of packets (64-byte IPv4 TCP/UDP, 100k flows, the
issue's traffic) and, per workload (``parse``, ``snat``, ``read``), times

* Portico over the whole pool, cut into Batches of each requested size (the
  cost curve against batch size), and
* each peer (``struct``, ``dpkt``, ``scapy``) over a stated sample of the same
  packets, the first N of the pool, since the slow ones would take minutes
  over all of it.

For ``parse`` and ``snat``, Portico is timed in two regimes in the same run:

* ``pps``: over a working set of ``RESIDENT`` packets (the first of the pool)
  that stays in cache between passes. A port refills the same few Batches
  again and again, so the packets a stage reads were just written there; this
  is the regime the datapath runs in and the one the targets are judged on.
* ``pps_streaming``: over the whole pool, every packet's slot and metadata
  record fetched from DRAM. It shows what memory traffic costs on top.

``read`` has one regime. The run writes the pool's packets once to a classic
pcap file (``portico.io.capture.CaptureWriter``, microsecond timestamps) in a
temporary directory, removed afterwards, and reads the file once so that it
sits in the page cache. Portico reads the whole file with
``open_capture(path).batches(batch)``, each pass opening it afresh and counting
the packets; the peers read the first N records of the same file in their
idiom (a ``struct`` loop over the file's bytes, ``dpkt.pcap.Reader``, Scapy's
``RawPcapReader``, its fastest reader). Its ``pps_streaming`` equals ``pps``
and its ``resident_packets`` equals ``packets``: the whole file is resident.
Its target is a rate (``TARGETS``); the ratio targets against Scapy and dpkt
are for the packet-processing workloads (``RATIO_WORKLOADS``).

A figure is packets divided by the median wall time of several repeats, with
the garbage collector off while timing (as ``timeit`` does) and the process
pinned to one CPU (``os.sched_setaffinity``) so Portico and the peers get the
same single core. Numba's first call (compiling, or loading its cache) is
timed apart and reported as ``numba_first_call_s``.

Before any figure is trusted, the run checks that everyone computed the same
thing: Portico's parsed 5-tuples and every peer's equal the ``struct`` peer's,
Portico's SNAT output equals the ``struct`` peer's byte for byte (as do
dpkt's and Scapy's on their samples), and the packets Portico read from the
capture are the pool's, every one, as are the N each peer read (and every
timed Portico pass counted all of them). A mismatch fails the run (exit 1).

Output: a table with ratios (Portico / peer), or ``--json``::

    {"machine": {...}, "run": {..., "capture": {...}},
     "workloads": [{"name": "parse", "packets": N, "batch": B, "pps": X,
                    "pps_streaming": X, "resident_packets": R,
                    "peers": {"scapy": X, "dpkt": X, "struct": X},
                    "peer_packets": {...}, "ratios": {...}}, ...]}

with one entry per workload and batch size. ``run.capture`` (format, size in
bytes) describes ``read``'s file and is there only when ``read`` ran.
``--plot PATH`` draws pps against batch size (PNG).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.classify import (
    FULL_CLASSIFY,
    QUICK_CLASSIFY,
    ClassifySettings,
    classify_target_lines,
    format_classify,
    run_classify,
)
from bench.control import (
    CONTROL_WORKLOADS,
    FULL_APPLY,
    FULL_WRITES,
    QUICK_APPLY,
    QUICK_WRITES,
    ApplySettings,
    WritesSettings,
    control_target_lines,
    format_control,
    run_api_writes,
    run_config_apply,
)
from bench.flowcache import (
    FULL_FLOWCACHE,
    QUICK_FLOWCACHE,
    FlowcacheSettings,
    flowcache_target_lines,
    format_flowcache,
    run_flowcache,
)
from bench.live_forward import (
    FULL_LIVE_FORWARD,
    QUICK_LIVE_FORWARD,
    LiveForwardSettings,
    format_live_forward,
    run_live_forward,
)
from bench.lpm import FULL_LPM, QUICK_LPM, LpmSettings, format_lpm, lpm_target_lines, run_lpm
from bench.naas import FULL_NAAS, QUICK_NAAS, NaasSettings, format_naas, run_naas_alloc
from bench.naas_nat import (
    FULL_NAAS_NAT,
    QUICK_NAAS_NAT,
    NaasNatSettings,
    format_naas_nat,
    run_naas_nat,
)
from bench.peers import PEERS
from bench.pipeline import (
    FULL_FLOWS,
    FULL_MISS,
    FULL_PIPELINE,
    QUICK_FLOWS,
    QUICK_MISS,
    QUICK_PIPELINE,
    FlowsSettings,
    MissSettings,
    PipelineSettings,
    format_pipeline,
    pipeline_target_lines,
    run_flows,
    run_miss,
    run_pipeline,
)
from bench.timing import median_seconds
from bench.workloads import (
    WORKLOADS,
    MismatchError,
    Pool,
    bench_spec,
    compare_frames,
    five_tuples,
    make_pool,
    output_frames,
    read_count,
    read_frames,
    snat,
    views,
    write_capture,
)

# Beside the packet workloads: route lookups (bench/lpm.py), the container
# classifier (bench/classify.py), the flow cache (bench/flowcache.py) and the
# gateway end to end (bench/pipeline.py), the control plane (bench/control.py), the NaaS
# allocator (bench/naas.py) and its port-range NAT (bench/naas_nat.py), each reported in its
# own table; live-forward (bench/live_forward.py) forwards on live ports in namespaces
# (root only), beside the kernel.
CLASSIFY_WORKLOADS = ("classify", "classify-update")
PIPELINE_WORKLOADS = ("pipeline-hit", "pipeline-miss", "pipeline-flows")
ALL_WORKLOADS = (*WORKLOADS, "lpm", *CLASSIFY_WORKLOADS, "flowcache", *PIPELINE_WORKLOADS,
                 *CONTROL_WORKLOADS, "naas-alloc", "naas-nat", "live-forward")
PEER_NAMES = ("struct", "dpkt", "scapy")
RESIDENT = 1 << 14  # packets in the cache-resident working set: 4 MiB of slots
SWEEP = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)

# Targets from issue 2: (workload, smallest batch it applies to, Mpps).
TARGETS = (("parse", 256, 20.0), ("snat", 256, 8.0), ("snat", 4096, 10.0),
           ("read", 256, 5.0))
# Ratio targets (Portico / peer), for the per-packet processing workloads.
RATIO_TARGETS = {"scapy": 1000.0, "dpkt": 100.0}
RATIO_WORKLOADS = ("parse", "snat")


@dataclass(frozen=True)
class Settings:
    packets: int
    batches: tuple[int, ...]
    repeats: int
    samples: dict[str, int] = field(default_factory=dict)  # peer -> packets
    peer_repeats: int = 3
    quick: bool = False
    lpm: LpmSettings = FULL_LPM
    classify: ClassifySettings = FULL_CLASSIFY
    flowcache: FlowcacheSettings = FULL_FLOWCACHE
    pipeline: PipelineSettings = FULL_PIPELINE
    pipeline_miss: MissSettings = FULL_MISS
    pipeline_flows: FlowsSettings = FULL_FLOWS
    config_apply: ApplySettings = FULL_APPLY
    api_writes: WritesSettings = FULL_WRITES
    naas_alloc: NaasSettings = FULL_NAAS
    naas_nat: NaasNatSettings = FULL_NAAS_NAT
    live_forward: LiveForwardSettings = FULL_LIVE_FORWARD


FULL = Settings(packets=1 << 18, batches=SWEEP, repeats=7,
                samples={"struct": 1 << 18, "dpkt": 50_000, "scapy": 5_000})
QUICK = Settings(packets=1 << 16, batches=(256, 4096), repeats=3,
                 samples={"struct": 20_000, "dpkt": 5_000, "scapy": 500}, quick=True,
                 lpm=QUICK_LPM, classify=QUICK_CLASSIFY, flowcache=QUICK_FLOWCACHE,
                 pipeline=QUICK_PIPELINE, pipeline_miss=QUICK_MISS, pipeline_flows=QUICK_FLOWS,
                 config_apply=QUICK_APPLY, api_writes=QUICK_WRITES, naas_alloc=QUICK_NAAS,
                 naas_nat=QUICK_NAAS_NAT, live_forward=QUICK_LIVE_FORWARD)


# ---------------------------------------------------------------- timing
def portico_work(workload: str, pool: Pool, batch_size: int, out: np.ndarray | None,
                 capture: Path | None = None) -> Callable[[], object]:
    """One timed pass of ``workload``; ``read`` returns the packets it counted."""
    from portico.datapath.stages.parse import parse

    if workload == "read":
        if capture is None:
            raise ValueError("the read workload needs a capture file")
        return lambda: read_count(capture, batch_size)
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
def verify(workload: str, pool: Pool, peer_results: dict[str, Sequence], *,
           capture: Path | None = None, peer_packets: dict[str, int] | None = None) -> None:
    """Raise MismatchError unless Portico and every peer agree with ``struct``.

    For ``read`` the reference is the pool itself: Portico must read every packet
    of ``capture``, and each peer its ``peer_packets`` first ones, byte for byte.
    """
    from portico.datapath.stages.parse import parse

    if workload == "read":
        if capture is None:
            raise ValueError("the read workload needs a capture file")
        verify_read(pool, peer_results, read_frames(capture, 256), peer_packets or {})
        return
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


def verify_read(pool: Pool, peer_results: dict[str, Sequence], portico: Sequence[bytes],
                peer_packets: dict[str, int]) -> None:
    """The packets each contender read from the capture against the pool's frames."""
    for name, result in {"portico": portico, **peer_results}.items():
        want = pool.count if name == "portico" else peer_packets.get(name, len(result))
        if len(result) != want:
            raise MismatchError(f"read: {name} read {len(result)} packets, not {want}")
        compare_frames(pool.frames[:want], result, expected_by="the pool", actual_by=name)


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
    versions: dict[str, str | None] = {}
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


def run_workload(workload: str, pool: Pool, settings: Settings, capture: Path | None,
                 status: Callable[[str], None]) -> list[dict[str, Any]]:
    """Time one workload: the peers, the check, then Portico at every batch size."""
    peers: dict[str, float] = {}
    peer_packets: dict[str, int] = {}
    results: dict[str, Sequence] = {}
    for name in PEER_NAMES:
        count = min(settings.samples.get(name, pool.count), pool.count)
        status(f"{workload}: {name} over {count} packets")
        peer = PEERS[workload][name]
        if workload == "read":
            call = functools.partial(peer, capture, count)
        else:
            call = functools.partial(peer, pool.frames[:count])
        seconds, result = median_seconds(call, settings.peer_repeats)
        peers[name] = count / seconds
        peer_packets[name] = count
        results[name] = result  # type: ignore[assignment]
    status(f"{workload}: checking everyone agrees")
    verify(workload, pool, results, capture=capture, peer_packets=peer_packets)
    out = None if workload == "read" else np.zeros_like(pool.batch.data)
    # read has one regime (the file in the page cache): time it once, over the pool.
    resident = (pool if workload == "read"
                else Pool(views(pool.batch, min(RESIDENT, pool.count))[0][0], []))
    regimes = (resident,) if resident is pool else (resident, pool)
    entries = []
    for size in settings.batches:
        status(f"{workload}: portico at batch {size}")
        rates = []
        for working_set in regimes:
            work = portico_work(workload, working_set, size, out, capture)
            work()  # warm caches and pages
            seconds, counted = median_seconds(work, settings.repeats)
            if workload == "read" and counted != pool.count:
                raise MismatchError(f"read: portico counted {counted} packets at batch "
                                    f"{size}, the file holds {pool.count}")
            rates.append(working_set.count / seconds)
        pps, streaming = rates[0], rates[-1]
        entries.append({
            "name": workload, "packets": pool.count, "batch": size, "pps": round(pps),
            "pps_streaming": round(streaming), "resident_packets": resident.count,
            "peers": {name: round(value) for name, value in peers.items()},
            "peer_packets": peer_packets,
            "ratios": {name: round(pps / value, 1) for name, value in peers.items()},
        })
    return entries


def run_bench(settings: Settings, workloads: Sequence[str],
              status: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Run the suite; the dict ``--json`` prints. Raises MismatchError on disagreement."""
    began = time.perf_counter()
    machine = machine_info()
    machine["pinned_cpu"] = pin_to_one_cpu()
    status("compiling (Numba first call)")
    machine["numba_first_call_s"] = round(first_call_seconds(), 3)
    packet_workloads = [name for name in workloads if name in WORKLOADS]
    if packet_workloads:
        status(f"generating {settings.packets} packets")
        pool = make_pool(bench_spec(settings.packets))
    entries = []
    with contextlib.ExitStack() as scratch:
        capture, capture_bytes = None, None
        if "read" in workloads:
            status("read: writing the capture file")
            folder = scratch.enter_context(tempfile.TemporaryDirectory(prefix="portico-bench-"))
            capture = Path(folder) / "pool.pcap"
            write_capture(pool, capture)
            capture_bytes = len(capture.read_bytes())  # into the page cache, for everyone
        for workload in packet_workloads:
            entries += run_workload(workload, pool, settings, capture, status)
    if "lpm" in workloads:
        entries += run_lpm(settings.lpm, status)
    if any(name in workloads for name in CLASSIFY_WORKLOADS):
        entries += run_classify(settings.classify, workloads, status)
    # One workload, one runner, one field of Settings.
    for name, runner, attribute in (
            ("flowcache", run_flowcache, "flowcache"),
            ("pipeline-hit", run_pipeline, "pipeline"),
            ("pipeline-miss", run_miss, "pipeline_miss"),
            ("pipeline-flows", run_flows, "pipeline_flows"),
            ("config-apply", run_config_apply, "config_apply"),
            ("api-writes", run_api_writes, "api_writes"),
            ("naas-alloc", run_naas_alloc, "naas_alloc"),
            ("naas-nat", run_naas_nat, "naas_nat"),
            ("live-forward", run_live_forward, "live_forward")):
        if name in workloads:
            entries += runner(getattr(settings, attribute), status)
    run = {"quick": settings.quick,
           "repeats": settings.repeats, "peer_repeats": settings.peer_repeats,
           "traffic": "64-byte IPv4 frames, TCP/UDP 50/50, 100k flows, uniform",
           "timing": "median wall time; GC off while timing; one pinned CPU",
           "verified": True, "elapsed_s": round(time.perf_counter() - began, 1)}
    if capture_bytes is not None:
        run["capture"] = {"format": "pcap", "timestamps": "microseconds",
                          "bytes": capture_bytes, "where": "page cache (read once first)"}
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
             f"{'workload':<9}{'batch':>7}{'portico pps':>14}{'streaming':>12}"
             + "".join(f"{name + ' pps':>13}" for name in PEER_NAMES)
             + "".join(f"{'x ' + name:>10}" for name in PEER_NAMES)]
    entries = [e for e in report["workloads"] if e["name"] in WORKLOADS]
    if not entries:
        lines = lines[:2]
    for entry in entries:
        lines.append(f"{entry['name']:<9}{entry['batch']:>7}{_rate(entry['pps']):>14}"
                     f"{_rate(entry['pps_streaming']):>12}"
                     + "".join(f"{_rate(entry['peers'][n]):>13}" for n in PEER_NAMES)
                     + "".join(f"{entry['ratios'][n]:>10,.0f}" for n in PEER_NAMES))
    samples = entries[0]["peer_packets"] if entries else {}
    if entries:
        lines += ["", "peers timed on the first " + ", ".join(
            f"{count} packets ({name})" for name, count in samples.items())
            + f" of the {entries[0]['packets']}; "
            "outputs checked equal to struct's (read: to the pool's packets)"]
    processing = [e for e in entries if e["name"] != "read"]
    if processing:
        lines.append(f"portico pps: a cache-resident working set of "
                     f"{processing[0]['resident_packets']} packets, as a port's reused "
                     "batches are; streaming: the whole pool from DRAM")
    if any(e["name"] == "read" for e in entries):
        lines.append("read: a classic pcap file of the pool's packets, in the page cache "
                     "(one regime: streaming = pps); scapy is RawPcapReader")
    lines += format_lpm([e for e in report["workloads"] if e["name"] == "lpm"])
    lines += format_classify(report["workloads"])
    lines += format_flowcache(report["workloads"])
    lines += format_pipeline(report["workloads"])
    lines += format_control(report["workloads"])
    lines += format_naas(report["workloads"])
    lines += format_naas_nat(report["workloads"])
    lines += format_live_forward(report["workloads"])
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
        for workload in dict.fromkeys(e["name"] for e in report["workloads"]
                                      if e["name"] in RATIO_WORKLOADS):
            at = [e for e in report["workloads"] if e["name"] == workload and e["batch"] == 256]
            if at:
                value = at[0]["ratios"][peer]
                verdict = "met" if value >= ratio else "MISSED"
                lines.append(f"{workload} >= {ratio:g}x {peer} at batch 256: "
                             f"{value:,.0f}x, {verdict}")
    lines += lpm_target_lines([e for e in report["workloads"] if e["name"] == "lpm"])
    return (lines + classify_target_lines(report["workloads"])
            + flowcache_target_lines(report["workloads"])
            + pipeline_target_lines(report["workloads"])
            + control_target_lines(report["workloads"]))


def plot(report: dict[str, Any], path: str | Path) -> None:
    """pps against batch size for each workload, peers as flat lines (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {"parse": ("tab:blue", "o"), "snat": ("tab:red", "s"), "read": ("tab:green", "^")}
    for workload in dict.fromkeys(e["name"] for e in report["workloads"]
                                  if e["name"] in WORKLOADS):
        entries = sorted((e for e in report["workloads"] if e["name"] == workload),
                         key=lambda e: e["batch"])
        color, marker = styles.get(workload, ("black", "x"))
        ax.plot([e["batch"] for e in entries], [e["pps"] for e in entries], marker=marker,
                color=color, label=f"Portico {workload}")
        if workload != "read":  # read has one regime: its streaming figure is its pps
            ax.plot([e["batch"] for e in entries], [e["pps_streaming"] for e in entries],
                    marker=marker, color=color, alpha=0.45, linestyle="--", fillstyle="none",
                    label=f"Portico {workload}, streaming from DRAM")
        for name, dash in zip(PEER_NAMES, (":", "--", "-."), strict=True):
            ax.axhline(entries[0]["peers"][name], color=color, linestyle=dash, linewidth=0.8,
                       alpha=0.6, label=f"{name} {workload}")
    present = {e["name"] for e in report["workloads"]}
    for workload, batch, mpps in TARGETS:
        if workload not in present:
            continue
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
    parser.add_argument("--workload", action="append", choices=ALL_WORKLOADS, metavar="NAME",
                        help=f"run only this workload ({', '.join(ALL_WORKLOADS)}); "
                             "repeatable")
    parser.add_argument("--batch", action="append", type=_positive, metavar="B",
                        help="batch size for Portico; repeatable (default: a sweep "
                             "32..16384, or 256 and 4096 with --quick)")
    parser.add_argument("--packets", type=_positive, metavar="N",
                        help="packets in the pool (default 262144, 65536 with --quick)")
    parser.add_argument("--plot", metavar="PATH", help="write pps against batch size (PNG)")


def settings_from_args(args: argparse.Namespace) -> Settings:
    base = QUICK if args.quick else FULL
    packets = args.packets or base.packets
    batches = tuple(dict.fromkeys(args.batch)) if args.batch else None
    lpm = dataclasses.replace(base.lpm, batches=batches) if batches else base.lpm
    flowcache = (dataclasses.replace(base.flowcache, batches=batches) if batches
                 else base.flowcache)
    return Settings(packets=packets, batches=batches or base.batches,
                    repeats=base.repeats, samples=base.samples,
                    peer_repeats=base.peer_repeats, quick=base.quick, lpm=lpm,
                    classify=base.classify, flowcache=flowcache,
                    pipeline=(dataclasses.replace(base.pipeline, batches=batches) if batches
                              else base.pipeline),
                    pipeline_miss=(dataclasses.replace(base.pipeline_miss, batches=batches)
                                   if batches else base.pipeline_miss),
                    pipeline_flows=(dataclasses.replace(base.pipeline_flows, batches=batches)
                                    if batches else base.pipeline_flows),
                    config_apply=base.config_apply, api_writes=base.api_writes,
                    naas_alloc=base.naas_alloc,
                    naas_nat=(dataclasses.replace(base.naas_nat, batches=batches) if batches
                              else base.naas_nat),
                    live_forward=base.live_forward)


def run(args: argparse.Namespace) -> int:
    """``portico bench``: 0 on success, 1 if the contenders disagree."""
    settings = settings_from_args(args)
    workloads = tuple(dict.fromkeys(args.workload)) if args.workload else ALL_WORKLOADS
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

