"""``portico run``: a config's gateway over a capture file — what leaves each port, and why.

The capture stands in for the gateway's ports: each pcapng interface is the
port whose ``id`` is its index (a classic pcap has one interface, so
``--in-port`` says which port it is). Packets go through the gateway in
batches, in file order, with the capture's timestamps as the clock (so
timeouts behave as they did on the wire, however fast the file is read). What
leaves goes to ``--out``, a pcapng with one interface per port, named after
the config's ports; packets the gateway sends itself (ARP requests, replies,
released packets) go there too.

At the end it prints what ``vppctl show runtime`` and ``ovs-appctl
dpctl/show`` would: per-stage calls, packets, ns per packet and drops by
reason; the flow cache's hits, misses, evictions; NAT and connection-tracking
counters. ``--trace`` follows single packets through the stages, as
``ovs-appctl ofproto/trace`` does.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from ipaddress import ip_address
from typing import Any

import numpy as np

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

HELP = """\
Run the gateway described by CONFIG over the packets of a capture file and
write what leaves each port. Each pcapng interface is a gateway port (the
interface index is the port id of the config); a classic pcap needs
--in-port. The capture's timestamps are the gateway's clock.
"""

EXAMPLES = """\
examples:
  portico run examples/two-tenants.yaml --in traffic.pcapng --out out.pcapng
  portico run gw.yaml --in uplink.pcap --in-port 0 --out out.pcapng --json
  portico run gw.yaml --in t.pcapng --out o.pcapng --trace 5
  portico run gw.yaml --in t.pcapng --out o.pcapng --trace 20 \
      --trace-filter dst=198.51.100.10,dport=8080
  portico run gw.yaml --in t.pcapng --out o.pcapng --no-cache   # every packet through the stages

--trace-filter takes FIELD=VALUE pairs joined by commas, all of which must
hold: src, dst (IPv4 or IPv6 addresses), sport, dport, protocol (number or
tcp/udp/icmp/icmpv6), port (ingress port id), vlan, tenant (id).
"""

PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}
FILTER_FIELDS = ("src", "dst", "sport", "dport", "protocol", "port", "vlan", "tenant")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the gateway's YAML config (see examples/two-tenants.yaml)")
    parser.add_argument("--in", dest="input", required=True, metavar="IN",
                        help="the capture to read (pcap or pcapng)")
    parser.add_argument("--out", required=True, metavar="OUT",
                        help="pcapng to write what leaves, one interface per port")
    parser.add_argument("--in-port", type=int, default=None, metavar="ID",
                        help="the port a classic pcap was captured on (pcapng: per interface)")
    parser.add_argument("--trace", type=int, default=0, metavar="N",
                        help="print each stage's decision for the first N packets "
                             "(that match --trace-filter, if given)")
    parser.add_argument("--trace-filter", default=None, metavar="F=V,...",
                        help="trace only packets matching these fields (see below)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-cache", action="store_true",
                        help="no flow cache: every packet runs every stage")
    parser.add_argument("--batch", type=int, default=256, metavar="N",
                        help="packets per batch (default 256)")
    parser.add_argument("--flows", type=int, default=1 << 16, metavar="N",
                        help="flow cache size in flows (default 65536)")


class UsageError(ValueError):
    """Bad arguments; the message names the option."""


def parse_filter(text: str | None) -> dict[str, int | tuple[int, int]]:
    """``src=10.0.0.5,dport=80`` as {column: value}; an address as (version, value)."""
    if not text:
        return {}
    wanted: dict[str, int | tuple[int, int]] = {}
    for part in text.split(","):
        field, sep, value = part.partition("=")
        field, value = field.strip(), value.strip()
        if not sep or field not in FILTER_FIELDS:
            raise UsageError(f"--trace-filter: {part!r}: use FIELD=VALUE with FIELD one of "
                             f"{', '.join(FILTER_FIELDS)}")
        try:
            if field in ("src", "dst"):
                address = ip_address(value)
                wanted[field] = (address.version, int(address))
            elif field == "protocol" and value.lower() in PROTOCOLS:
                wanted[field] = PROTOCOLS[value.lower()]
            else:
                wanted[field] = int(value, 0)
        except ValueError:
            raise UsageError(f"--trace-filter: {field}: {value!r} is not a valid value") from None
    return wanted


def matching(meta: np.ndarray, wanted: dict[str, int | tuple[int, int]]) -> np.ndarray:
    """Which rows of ``meta`` (parsed, classified) match every field of the filter."""
    keep = np.ones(len(meta), dtype=bool)
    for field, value in wanted.items():
        if field in ("src", "dst"):
            assert isinstance(value, tuple)
            version, number = value
            if version == 4:
                keep &= (meta["ip_version"] == 4) & (meta[f"{field}4"] == number)
            else:
                keep &= ((meta["ip_version"] == 6) & (meta[f"{field}6_hi"] == number >> 64)
                         & (meta[f"{field}6_lo"] == number & (1 << 64) - 1))
        else:
            column = {"vlan": "vlan_outer"}.get(field, field)
            keep &= meta[column] == value
    return keep


def run(args: argparse.Namespace) -> int:
    from portico.control.model import ConfigError, load_config
    from portico.io.capture import CaptureError

    try:
        wanted = parse_filter(args.trace_filter)
        if args.batch <= 0 or args.flows <= 0 or args.trace < 0:
            raise UsageError("--batch and --flows must be positive, --trace >= 0")
        config = load_config(args.config)
    except UsageError as error:
        print(f"portico run: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as error:
        print(f"portico run: {error}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as error:
        print(f"portico run: {args.config}: {error.strerror or error}", file=sys.stderr)
        return EXIT_FAILED
    try:
        report = replay(config, args.input, args.out, in_port=args.in_port,
                        cache=not args.no_cache, batch_size=args.batch, flows=args.flows,
                        trace=args.trace, wanted=wanted)
    except UsageError as error:
        print(f"portico run: {error}", file=sys.stderr)
        return EXIT_USAGE
    except CaptureError as error:
        print(f"portico run: {error}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as error:
        print(f"portico run: {error.filename or args.input}: {error.strerror or error}",
              file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return EXIT_OK


def replay(config: Any, source: str, target: str, *, in_port: int | None = None,
           cache: bool = True, batch_size: int = 256, flows: int = 1 << 16, trace: int = 0,
           wanted: dict[str, int | tuple[int, int]] | None = None) -> dict[str, Any]:
    """Run ``config``'s gateway over the capture ``source``; write what leaves to
    ``target``; return the counters (what ``portico run --json`` prints)."""
    from portico import drops
    from portico.datapath.gateway import Gateway
    from portico.datapath.stages.ingress import classify
    from portico.datapath.stages.parse import parse
    from portico.io.capture import CaptureWriter, open_capture
    from portico.io.pcap import Interface

    gateway = Gateway(config, cache=cache, flows=flows)
    ports = {port.id: name for name, port in config.ports.items()}
    names = [ports.get(i, f"port{i}") for i in range(max(ports, default=0) + 1)]
    traced: list[dict[str, Any]] = []
    wanted = wanted or {}
    packets_in = packets_out = 0
    out_per_port = np.zeros(len(names), dtype=np.int64)
    drop_counts = np.zeros(256, dtype=np.int64)
    held = 0
    with open_capture(source) as reader, CaptureWriter(
            target, interfaces=[Interface(n, 1, 65535) for n in names]) as writer:
        if reader.format == "pcap" and in_port is None:
            raise UsageError(f"--in-port: {source} is a classic pcap (one interface, no port "
                             "ids); say which port it was captured on")
        if in_port is not None and in_port not in ports:
            raise UsageError(f"--in-port: {in_port} is not a port of the config "
                             f"(ports: {', '.join(f'{n}={i}' for i, n in sorted(ports.items()))})")
        seen = 0
        for batch in reader.batches(batch_size):
            n = batch.count
            if in_port is not None:
                batch.meta["port"][:n] = in_port
            if trace and len(traced) < trace:
                parse(batch)  # to match the filter; the datapath parses again
                classify(batch, gateway.topology)
                pick = np.flatnonzero(matching(batch.meta[:n], wanted))
                pick = pick[: trace - len(traced)]
                batch.meta["trace"][pick] = 1
                first = {int(r): seen + int(r) for r in pick}
                received = {int(r): batch.packet(int(r)) for r in pick}
            else:
                first, received = {}, {}
            now = int(batch.meta["timestamp"][:n].max())
            gateway.pipeline.trace.clear()
            sent = gateway.process(batch, now)
            if first:
                traced.extend(_traces(gateway, batch, first, received))
            for b in (batch, *sent):
                meta = b.meta[: b.count]
                leaving = np.flatnonzero((meta["out_port"] >= 0) & (meta["drop"] == 0))
                if len(leaving):
                    writer.write(b, leaving)
                packets_out += len(leaving)
                out_per_port += np.bincount(meta["out_port"][leaving],
                                            minlength=len(names))[: len(names)]
                drop_counts += np.bincount(meta["drop"], minlength=256)
                held += int(((meta["out_port"] < 0) & (meta["drop"] == 0)).sum())
            packets_in += n
            seen += n
    stats = gateway.stats()
    released = int(gateway.counters["released"])
    return {
        "config": getattr(config, "source", None),
        "input": source,
        "output": target,
        "cache": cache,
        "packets": {"in": packets_in, "out": packets_out,
                    "dropped": int(drop_counts[1:].sum()),
                    "waiting": len(gateway.pending),
                    "held_then_sent": released, "held": held},
        "ports": {names[i]: int(c) for i, c in enumerate(out_per_port) if c},
        "drops": {drops.name(code): int(c) for code, c in enumerate(drop_counts) if code and c},
        **stats,
        "trace": traced,
    }


def _traces(gateway: Any, batch: Any, first: dict[int, int],
            received: dict[int, bytes]) -> list[dict[str, Any]]:
    from portico import drops

    lines: dict[int, list[str]] = {row: [] for row in first}
    for line in gateway.pipeline.trace:
        if line.row in lines:
            lines[line.row].append(f"{line.stage} -> {line.outcome}")
    out = []
    for row, number in sorted(first.items(), key=lambda kv: kv[1]):
        m = batch.meta[row]
        stages = lines[row] or ["flow cache hit: the cached action, no stage ran"]
        verdict = (f"drop: {drops.name(int(m['drop']))}" if m["drop"] else
                   f"out port {int(m['out_port'])}" if m["out_port"] >= 0 else "held")
        out.append({"packet": number + 1, "in_port": int(m["port"]),
                    "summary": describe(received[row]), "stages": stages,
                    "verdict": verdict})
    return out


def describe(packet: bytes) -> str:
    """One line for a packet, as the trace shows it: ``vlan 10 TCP 10.0.0.5:80 > 8.8.8.8:9``."""
    from ipaddress import IPv4Address, IPv6Address

    from portico.packet.summary import summarize

    m = summarize(packet)
    words = [f"vlan {m['vlan_outer']}"] if m["vlan_count"] else []
    if m["ip_version"] == 0:
        return " ".join([*words, "ARP" if m["ethertype"] == 0x0806 else
                         f"ethertype {m['ethertype']:#06x}"])
    if m["ip_version"] == 4:
        src, dst = str(IPv4Address(m["src4"])), str(IPv4Address(m["dst4"]))
    else:
        src = str(IPv6Address(m["src6_hi"] << 64 | m["src6_lo"]))
        dst = str(IPv6Address(m["dst6_hi"] << 64 | m["dst6_lo"]))
    name = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPv6"}.get(m["protocol"],
                                                               f"proto {m['protocol']}")
    if m["protocol"] in (6, 17):
        words += [name, f"{src}:{m['sport']} > {dst}:{m['dport']}"]
        if m["protocol"] == 6:
            flags = "".join(f for bit, f in ((2, "S"), (16, "A"), (1, "F"), (4, "R"))
                            if m["tcp_flags"] & bit)
            words.append(f"[{flags or '.'}]")
    else:
        words += [name, f"{src} > {dst}"]
        if m["protocol"] in (1, 58):
            words.append(f"type {m['icmp_type']} code {m['icmp_code']}")
    words.append(f"ttl {m['ttl']}")
    return " ".join(words)


def format_report(report: dict[str, Any]) -> str:
    p = report["packets"]
    lines = [f"{report['input']} -> {report['output']}: {p['in']} packets in, {p['out']} out, "
             f"{p['dropped']} dropped, {p['waiting']} still waiting for a neighbour"
             f" (cache {'on' if report['cache'] else 'off'})", ""]
    lines.append(f"{'port':<24}{'packets out':>12}")
    lines += [f"{name:<24}{n:>12}" for name, n in report["ports"].items()] or ["(none)"]
    lines += ["", f"{'stage':<16}{'calls':>8}{'packets':>10}{'ns/pkt':>9}  drops"]
    for name, c in report["stages"].items():
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(c["drops"].items())) or "-"
        lines.append(f"{name:<16}{c['calls']:>8}{c['packets']:>10}{c['ns_per_packet']:>9.0f}"
                     f"  {dropped}")
    lines += ["", f"{'drop reason':<28}{'packets':>10}"]
    lines += [f"{k:<28}{v:>10}" for k, v in sorted(report["drops"].items(),
                                                  key=lambda kv: -kv[1])] or ["(none)"]
    d = report["datapath"]
    lines += ["", f"datapath: {d['hits']} cache hits, {d['misses']} misses "
                  f"({d['forced']} forced through the stages), {d['uncacheable']} uncacheable"]
    if report["cache"]:
        c = report["cache"]
        lines.append("flow cache: " + ", ".join(f"{k} {v}" for k, v in c.items()))
    nat = report["nat"]
    lines.append("nat: " + ", ".join(f"{k} {v}" for k, v in nat.items() if v))
    ct = report["conntrack"]
    lines.append("conntrack: " + ", ".join(f"{k} {v}" for k, v in ct.items() if v))
    for t in report["trace"]:
        lines += ["", f"packet {t['packet']} (port {t['in_port']}): {t['summary']}"]
        lines += [f"  {s}" for s in t["stages"]]
        lines.append(f"  => {t['verdict']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - via portico.cli
    parser = argparse.ArgumentParser(prog="portico run")
    add_arguments(parser)
    return run(parser.parse_args(argv))
