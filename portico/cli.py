"""The ``portico`` command: one entry point, a subcommand per job.

Each subcommand lives beside the code it drives (``portico.gen``, ``bench``)
and exposes ``add_arguments(parser)`` and ``run(args) -> int``; this module
only wires them together, so ``portico --help`` stays a table of contents.
Heavy imports (Numba kernels, Scapy for the benchmarks) happen only when
their subcommand runs.

Exit codes, the same for every subcommand:

  0   success
  1   the work failed: unreadable or corrupt input, a file that cannot be written
  2   bad usage: an unknown option or a value out of range (the message names it)
  130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import numpy as np

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DESCRIPTION = """\
Portico: a multi-tenant software gateway with a vectorized packet datapath.

Packets travel in batches through compiled stages; capture files (pcap,
pcapng) stand in for interfaces, so everything here runs offline.
"""

EPILOG = """\
examples:
  portico gen traffic.pcapng --packets 100000 --flows 1000 --sizes imix
  portico parse traffic.pcapng
  portico parse traffic.pcapng --json | jq .drops
  portico run examples/two-tenants.yaml --in traffic.pcapng --out out.pcapng --trace 3
  PORTICO_TOKEN=s3cret portico daemon examples/two-tenants.yaml --replay traffic.pcapng
  PORTICO_TOKEN=s3cret portico apply examples/two-tenants.yaml --dry-run
  PORTICO_TOKEN=s3cret portico set ports/uplink mtu=9000
  PORTICO_TOKEN=s3cret portico trace --port uplink --src 192.0.2.7 --dst 198.51.100.10
  portico lab up examples/lab-two-tenants.yaml    # namespaces and veth pairs for live ports
  PORTICO_TOKEN=s3cret portico up gw.yaml --bind uplink=lab-up --bind a=lab-a --bind b=lab-b
  portico lab down examples/lab-two-tenants.yaml
  portico naas serve --store sqlite:/var/lib/portico/naas.db --pool media=198.51.100.0/28
  portico bench --quick

exit codes: 0 ok, 1 the work failed (bad input file, I/O), 2 bad usage, 130 interrupted.
"""


def version() -> str:
    try:
        return metadata.version("portico")
    except metadata.PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------- portico gen
GEN_HELP = """\
Write synthetic traffic with a known shape: so many packets over so many
flows, a protocol mix, a size distribution, an IPv6 share, VLAN tags, spread
over gateway ports (one pcapng interface each). The same arguments and seed
always give the same bytes, and every length and checksum in it is valid.
"""

GEN_EXAMPLES = """\
examples:
  portico gen small.pcapng --packets 1000 --flows 10
  portico gen imix.pcapng --packets 1000000 --flows 100000 --sizes imix --ipv6 0.2
  portico gen skewed.pcapng --distribution zipf --zipf-exponent 1.2 --vlans 8 --ports 4
  portico gen plain.pcap --mix tcp=1 --sizes fixed:128 --seed 7
"""


# ---------------------------------------------------------------- portico parse
PARSE_HELP = """\
Read a capture and parse every packet with the batch parser, then print how
many packets carried each layer and how many were dropped, by reason. Each
pcapng interface is a gateway port and is counted separately.
"""


def add_parse_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a pcap or pcapng capture")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of tables"
    )
    parser.add_argument(
        "--batch",
        type=_positive("--batch"),
        default=256,
        metavar="N",
        help="packets per batch (default 256)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def summarize_capture(path: str, *, batch_size: int = 256, quiet: bool = True) -> dict[str, Any]:
    """Parse a whole capture; the per-layer and per-drop counts ``portico parse`` prints.

    Raises ``CaptureError`` for a corrupt file, after counting the packets before it;
    the partial counts are on the exception as ``summary``.
    """
    import os

    from portico import drops
    from portico.datapath.stages.parse import parse
    from portico.io.capture import CaptureError, open_capture
    from portico.packet.layers import INNER, Layer
    from portico.progress import Progress

    layer_bits = np.arange(32, dtype=np.uint32)
    layer_counts = np.zeros(32, dtype=np.int64)
    drop_counts = np.zeros(256, dtype=np.int64)
    packets = 0
    octets = 0
    with open_capture(path) as reader:
        port_counts = np.zeros(max(1, len(reader.interfaces)), dtype=np.int64)
        summary: dict[str, Any] = {"file": path, "format": reader.format}
        try:
            with Progress(os.path.getsize(path), label="parse", quiet=quiet, unit="B") as bar:
                for batch in reader.batches(batch_size):
                    n = batch.count
                    parse(batch)
                    meta = batch.meta[:n]
                    packets += n
                    octets += int(meta["wire_length"].sum())
                    layer_counts += ((meta["layers"][:, None] >> layer_bits) & 1).sum(
                        axis=0, dtype=np.int64
                    )
                    drop_counts += np.bincount(meta["drop"], minlength=256)
                    port_counts += np.bincount(meta["port"], minlength=len(port_counts))[
                        : len(port_counts)
                    ]
                    bar.advance(reader.offset - bar.done)
        except CaptureError as error:
            error.summary = summary  # type: ignore[attr-defined]
            raise
        finally:
            names = [iface.name or f"port{i}" for i, iface in enumerate(reader.interfaces)]
            summary.update(
                packets=packets,
                bytes=octets,
                parsed=packets - int(drop_counts[1:].sum()),
                dropped=int(drop_counts[1:].sum()),
                interfaces={
                    names[i] if i < len(names) else f"port{i}": int(c)
                    for i, c in enumerate(port_counts)
                },
                layers={
                    ("inner-" if bit >= INNER else "") + Layer(bit % INNER).name.lower(): int(c)
                    for bit, c in enumerate(layer_counts)
                    if c
                },
                drops={
                    drops.name(code): int(c) for code, c in enumerate(drop_counts) if code and c
                },
            )
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    packets = summary["packets"] or 1
    lines = [
        f"{summary['file']} ({summary['format']}): {summary['packets']} packets, "
        f"{summary['bytes']} bytes; {summary['parsed']} parsed, {summary['dropped']} dropped",
        "",
        f"{'port':<24}{'packets':>12}",
    ]
    lines += [f"{name:<24}{count:>12}" for name, count in summary["interfaces"].items()]
    lines += ["", f"{'layer':<24}{'packets':>12}{'share':>9}"]
    lines += [
        f"{name:<24}{count:>12}{count / packets:>9.1%}" for name, count in summary["layers"].items()
    ]
    lines += ["", f"{'drop reason':<24}{'packets':>12}{'share':>9}"]
    if summary["drops"]:
        lines += [
            f"{name:<24}{count:>12}{count / packets:>9.1%}"
            for name, count in sorted(summary["drops"].items(), key=lambda kv: -kv[1])
        ]
    else:
        lines.append(f"{'(none)':<24}{0:>12}")
    return "\n".join(lines)


def run_parse(args: argparse.Namespace) -> int:
    from portico.io.capture import CaptureError

    try:
        summary = summarize_capture(args.file, batch_size=args.batch, quiet=args.quiet or args.json)
    except CaptureError as error:
        partial = getattr(error, "summary", None)
        if partial and "packets" in partial:
            print(json.dumps(partial, indent=2) if args.json else format_summary(partial))
        print(f"portico parse: {error}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as error:
        print(f"portico parse: {args.file}: {error.strerror or error}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return EXIT_OK


# ---------------------------------------------------------------- wiring
def _positive(option: str):  # type: ignore[no-untyped-def]
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option}: not a whole number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{option}: must be positive, got {value}")
        return value

    return check


def build_parser() -> argparse.ArgumentParser:
    from portico import gen

    parser = argparse.ArgumentParser(
        prog="portico",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"portico {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    gen_parser = sub.add_parser(
        "gen",
        help="write synthetic traffic to a capture file",
        description=GEN_HELP,
        epilog=GEN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gen.add_arguments(gen_parser)
    gen_parser.set_defaults(handler=gen.run)

    parse_parser = sub.add_parser(
        "parse",
        help="parse a capture and count layers and drop reasons",
        description=PARSE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_parse_arguments(parse_parser)
    parse_parser.set_defaults(handler=run_parse)

    from portico import run as gateway_run

    run_parser = sub.add_parser(
        "run",
        help="run a config's gateway over a capture; write what leaves each port",
        description=gateway_run.HELP,
        epilog=gateway_run.EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gateway_run.add_arguments(run_parser)
    run_parser.set_defaults(handler=gateway_run.run)

    from portico.control.commands import add_commands

    add_commands(sub)

    from portico.services.naas.commands import add_naas_command

    add_naas_command(sub)

    from portico import lab, up

    up.add_command(sub)

    lab_parser = sub.add_parser(
        "lab",
        help="build or remove a lab of network namespaces and veth pairs",
        description=lab.HELP,
        epilog=lab.EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lab.add_arguments(lab_parser)
    lab_parser.set_defaults(handler=lab.run_command)

    bench_parser = sub.add_parser(
        "bench",
        help="benchmarks, side by side with Scapy, dpkt and a struct loop",
        description="Run the benchmark workloads through Portico and the peers on the same "
        "packets, in one run, and report packets/s and ratios. Every run first checks that "
        "Portico and the peers computed the same thing.",
        epilog="examples:\n"
        "  portico bench --quick                      every workload, small, under a minute\n"
        "  portico bench --json > results.json        the full run, as JSON\n"
        "  portico bench --workload parse --batch 256 --batch 4096\n"
        "  portico bench --workload lpm --workload classify\n"
        "results of a full run on this project's machine: bench/RESULTS.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    try:
        from bench import harness
    except ImportError as error:  # the bench extras are not installed
        missing = str(error)
        bench_parser.set_defaults(handler=lambda _args: _bench_missing(missing))
    else:
        harness.add_arguments(bench_parser)
        bench_parser.set_defaults(handler=harness.run)
    return parser


def _bench_missing(why: str) -> int:
    print(
        f"portico bench: the benchmark code is not importable ({why}); "
        "install with: pip install -e '.[bench]'",
        file=sys.stderr,
    )
    return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("portico: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
