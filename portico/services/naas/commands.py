"""``portico naas``: run the NaaS allocator's daemon, and look at what it allocated.

``portico naas serve`` opens the store (SQLite, or etcd to share pools between
gateway nodes), registers the pools and serves the API (``naas.server``) on a
Unix socket, where ``portico-cni`` finds it. ``portico naas show`` asks a
running one for its pools and allocations. Exit codes as every portico
command: 0 ok, 1 the work failed (store unreachable, a pool the store holds
otherwise, no daemon answering), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_SOCKET = "/run/portico/naas.sock"
DEFAULT_STORE = "sqlite:portico-naas.db"
DEFAULT_BLOCK = 1024

NAAS_HELP = """\
Networking as a Service: pods get an external address, shared with other pods,
and a block of its ports of their own. The daemon holds the pools; the CNI
plugin portico-cni asks it over a Unix socket for each pod a runtime starts.
"""

SERVE_HELP = """\
Serve the allocator on a Unix socket. Each --pool is a name and the networks of
its shared addresses (a /30 or larger gives its first host to the gateway; a
/32 is one address). Every address's ports from 1024 up are cut into blocks of
--block-size ports, or into the 2^k port sets of RFC 7597 (MAP-E) with
--psid-length k. Allocations live in the store: they survive a restart, and on
etcd several gateway nodes share the pools without ever overlapping.
"""

SERVE_EXAMPLES = """\
examples:
  portico naas serve --socket /run/portico/naas.sock --store sqlite:/var/lib/portico/naas.db \\
      --pool media=198.51.100.0/28 --block-size 2048
  portico naas serve --store etcd://10.0.0.1:2379 --pool rtp=203.0.113.7/32,203.0.113.9/32 \\
      --psid-length 6
  portico naas show --socket /run/portico/naas.sock

a network configuration for a runtime (/etc/cni/net.d/10-media.conf), portico-cni
being in the runtime's CNI path beside the reference plugins:
  {"cniVersion": "1.0.0", "name": "media", "type": "ptp",
   "ipam": {"type": "portico-cni", "socket": "/run/portico/naas.sock", "pool": "media"}}
"""


def add_naas_command(sub: Any) -> None:
    """``naas serve`` and ``naas show`` into ``portico``'s subcommands."""
    naas = sub.add_parser("naas", help="shared addresses and port blocks for pods (CNI)",
                          description=NAAS_HELP, epilog=SERVE_EXAMPLES,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    naas.set_defaults(handler=lambda _args: _usage(naas))
    commands = naas.add_subparsers(dest="naas_command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve the allocator on a Unix socket",
                                description=SERVE_HELP, epilog=SERVE_EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--socket", default=DEFAULT_SOCKET, metavar="PATH",
                       help="where the API listens (default %(default)s)")
    serve.add_argument("--store", default=DEFAULT_STORE, metavar="URL",
                       help="sqlite:PATH or etcd://HOST:PORT[/PREFIX] (default %(default)s)")
    serve.add_argument("--pool", action="append", required=True, metavar="NAME=CIDR[,CIDR...]",
                       help="a pool of shared addresses; repeatable (the first is the default)")
    shape = serve.add_mutually_exclusive_group()
    shape.add_argument("--block-size", type=_whole("--block-size"), metavar="N",
                       help=f"ports per block (default {DEFAULT_BLOCK})")
    shape.add_argument("--psid-length", type=_whole("--psid-length", 0), metavar="K",
                       help="cut ports into 2^K RFC 7597 port sets instead of blocks")
    serve.add_argument("--psid-offset", type=_whole("--psid-offset", 0), metavar="A",
                       help="with --psid-length: RFC 7597 PSID offset bits (default 6: ports "
                            "below 1024 are never handed out)")
    serve.set_defaults(handler=run_serve)

    show = commands.add_parser("show", help="a running daemon's pools and allocations")
    show.add_argument("--socket", default=DEFAULT_SOCKET, metavar="PATH",
                      help="the daemon's socket (default %(default)s)")
    show.add_argument("--pool", help="only this pool's allocations")
    show.add_argument("--json", action="store_true", help="print the answers as JSON")
    show.set_defaults(handler=run_show)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _whole(option: str, least: int = 1):  # type: ignore[no-untyped-def]
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option}: not a whole number: {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{option}: must be at least {least}, got {value}")
        return value

    return check


def run_serve(args: argparse.Namespace) -> int:
    from portico.services.naas.allocator import NaasError, open_allocator
    from portico.services.naas.pools import BlockLayout, Layout, parse_pool
    from portico.services.naas.psid import PsidLayout
    from portico.services.naas.server import serve

    if args.psid_offset is not None and args.psid_length is None:
        print("portico naas serve: --psid-offset: only with --psid-length", file=sys.stderr)
        return EXIT_USAGE
    try:
        layout: Layout = (PsidLayout(args.psid_length, 6 if args.psid_offset is None
                                     else args.psid_offset)
                          if args.psid_length is not None
                          else BlockLayout(args.block_size or DEFAULT_BLOCK))
        pools = [parse_pool(text, layout) for text in args.pool]
    except ValueError as error:
        print(f"portico naas serve: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        allocator = open_allocator(args.store, pools)
    except ValueError as error:
        print(f"portico naas serve: {error}", file=sys.stderr)
        return EXIT_USAGE
    except NaasError as error:
        print(f"portico naas serve: {error}", file=sys.stderr)
        return EXIT_FAILED
    try:
        for pool in pools:
            shape = pool.describe()
            print(f"portico naas: pool {pool.name}: {', '.join(shape['networks'])}, "
                  f"{shape['addresses']} addresses x {shape['blocks_per_address']} blocks of "
                  f"{shape['ports_per_block']} ports", file=sys.stderr)
        print(f"portico naas: serving on {args.socket}, store {args.store}", file=sys.stderr)
        serve(allocator, args.socket)
    except OSError as error:
        print(f"portico naas serve: {args.socket}: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        allocator.close()
    return EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    from portico.services.naas.cni import CniError, DaemonClient

    client = DaemonClient(args.socket)
    try:
        _, pools = client.request("GET", "/v1/pools")
        query = f"?pool={args.pool}" if args.pool else ""
        status, allocations = client.request("GET", f"/v1/allocations{query}")
    except CniError as error:
        print(f"portico naas show: {error.msg} ({error.details})", file=sys.stderr)
        return EXIT_FAILED
    if status != 200:
        print(f"portico naas show: {allocations.get('error', allocations)}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps({**pools, **allocations}, indent=2))
        return EXIT_OK
    print(f"{'pool':<12}{'addresses':>10}{'blocks':>8}{'ports':>7}{'allocated':>11}{'free':>7}"
          "  networks")
    for pool in pools.get("pools", []):
        print(f"{pool['name']:<12}{pool['addresses']:>10}{pool['blocks_per_address']:>8}"
              f"{pool['ports_per_block']:>7}{pool['allocated']:>11}{pool['free']:>7}  "
              f"{', '.join(pool['networks'])}")
    rows = allocations.get("allocations", [])
    print()
    print(f"{'pool':<12}{'address':<17}{'ports':<14}{'container':<26}{'if':<7}pod / session")
    for a in rows:
        ports = a["ports"]
        text = (f"{ports['first']}-{ports['last']}" if ports["kind"] == "block"
                else f"PSID {ports['psid']}/{ports['psid_length']}")
        pod = f"{a['namespace']}/{a['name']}" if a["name"] else "-"
        if a["session"]:
            pod += f" session {a['session']}"
        print(f"{a['pool']:<12}{a['address']:<17}{text:<14}{a['container_id'][:25]:<26}"
              f"{a['interface']:<7}{pod}")
    if not rows:
        print("(no allocations)")
    return EXIT_OK
