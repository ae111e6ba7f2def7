"""up: ``portico up CONFIG``, the gateway on live interfaces with its API, until stopped.

Role. ``portico daemon`` with live ports: the config's ports are bound to Linux
interfaces (``--bind PORT=INTERFACE``), an AF_PACKET ring each
(``portico.io.afpacket``), and one loop (``portico.live.LiveLoop``) runs the
gateway over them while the API serves. With ``--management-address`` the
gateway's own address lives on one of those ports (in-band management,
``portico.datapath.management``): the frames for it reach the kernel through a
TAP device that holds the address, so the API and ordinary tools (ssh, ping)
answer on it, and the kernel's answers leave by the same port.

Theory of operation. Start-up order: the daemon (store, config, gateway), the
ports, the TAP and its address and routes, the fence (the bound interfaces'
frames are dropped for the kernel's own stack, so only the gateway handles
them), the loop's thread, then the API server in the foreground. Ctrl-C or
SIGTERM ends the server; then everything is undone in reverse, each step
whatever the others did: the loop stops, the rings are unmapped, the TAP is
removed (the kernel drops its address and routes with it), the fence goes,
and the store is closed. Every accepted change was durable when the API
answered it, so there is no state to flush beyond that. After a crash nothing
is left that a new ``portico up`` does not replace: the TAP dies with the
process, and the fence is made afresh.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from portico.control.commands import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    StartError,
    add_daemon_arguments,
    serve,
    start_daemon,
)

HELP = """\
Run the gateway on live interfaces: each config port is bound to a Linux
interface (an AF_PACKET ring), the datapath runs over them, and the REST API
serves as with `portico daemon`. With --management-address the gateway's own
address lives in-band on one of the ports: frames for it go to the kernel
through a TAP device, so the API, ssh and ping answer on the same wire as
tenant traffic, and nothing else of the bound interfaces reaches the kernel.
Ctrl-C or SIGTERM stops it cleanly (rings unmapped, TAP removed).
"""

EXAMPLES = """\
examples:
  portico lab up examples/lab-two-tenants.yaml
  PORTICO_TOKEN=s3cret portico up gw.yaml --bind uplink=lab-up --bind a=lab-a --bind b=lab-b
  PORTICO_TOKEN=s3cret portico up gw.yaml --bind uplink=eth1 --bind access=eth2 \\
      --management-port uplink --management-address 203.0.113.10/24 \\
      --management-gateway 203.0.113.1 --listen 0.0.0.0:8080
  curl -H "Authorization: Bearer s3cret" http://203.0.113.10:8080/api/v1/stats
"""

TAP_NAME = "portico-mgmt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_daemon_arguments(parser, replay=False)
    parser.add_argument("--bind", action="append", default=[], metavar="PORT=INTERFACE",
                        help="run config port PORT on Linux interface INTERFACE (repeat)")
    parser.add_argument("--batch", type=int, default=256, metavar="N",
                        help="frames taken from a ring at a time (default %(default)s)")
    parser.add_argument("--no-fence", action="store_true",
                        help="leave the bound interfaces' frames to the kernel as well")
    group = parser.add_argument_group("in-band management")
    group.add_argument("--management-port", metavar="PORT",
                       help="the config port the management address lives on")
    group.add_argument("--management-address", metavar="ADDR/LEN",
                       help="the gateway's own address there (IPv4 or IPv6, with its prefix)")
    group.add_argument("--management-gateway", metavar="ADDR",
                       help="the kernel's default route through it")
    group.add_argument("--management-mac", metavar="MAC", default="02:00:00:00:0a:0a",
                       help="the TAP's MAC, the management address's on the wire "
                            "(default %(default)s)")
    group.add_argument("--management-tcp", default="", metavar="PORTS",
                       help="TCP ports the kernel serves there, comma-separated "
                            "(default: the API's port; 22 for ssh, say)")
    group.add_argument("--management-udp", default="", metavar="PORTS",
                       help="UDP ports the kernel serves there")
    group.add_argument("--punt-rate", type=float, default=10_000, metavar="PPS",
                       help="frames a second the kernel may get (default %(default)s)")


def _ports(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise StartError(f"portico up: {flag}: {text!r} is not a list of port numbers",
                         EXIT_USAGE) from None


def _bindings(args: argparse.Namespace, ports: dict[str, Any]) -> dict[str, str]:
    bound: dict[str, str] = {}
    for text in args.bind:
        name, sep, interface = text.partition("=")
        if not sep or not name or not interface:
            raise StartError(f"portico up: --bind: {text!r} is not PORT=INTERFACE", EXIT_USAGE)
        if name not in ports:
            raise StartError(f"portico up: --bind: {name!r} is not a port of the config "
                             f"(ports: {', '.join(sorted(ports))})", EXIT_USAGE)
        bound[name] = interface
    if not bound:
        raise StartError("portico up: no --bind PORT=INTERFACE given", EXIT_USAGE)
    return bound


def _ip(*words: str) -> None:
    subprocess.run(["ip", *words], check=True, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def management_tap(args: argparse.Namespace, port_id: int, api_port: int) -> Iterator[Any]:
    """The TAP, its address and default route, and the matching ``Management``."""
    from portico.datapath.management import Management
    from portico.io.tap import TapPort

    try:
        interface = ipaddress.ip_interface(args.management_address)
    except ValueError:
        raise StartError(f"portico up: --management-address: {args.management_address!r} "
                         "is not ADDR/LEN", EXIT_USAGE) from None
    tcp = _ports(args.management_tcp, "--management-tcp") or (api_port,)
    udp = _ports(args.management_udp, "--management-udp")
    v4 = interface.version == 4
    management = Management(port=port_id, address=str(interface.ip) if v4 else None,
                            address6=None if v4 else str(interface.ip), tcp_ports=tcp,
                            udp_ports=udp, rate=args.punt_rate,
                            burst=max(1, int(args.punt_rate // 10)))
    tap = TapPort(TAP_NAME, port=-1, mac=args.management_mac)
    try:
        _ip("addr", "add", str(interface), "dev", tap.name)
        if args.management_gateway:
            _ip("route", "add", "default", "via", args.management_gateway, "dev", tap.name)
        yield management, tap
    finally:
        tap.close()  # the kernel drops the address and the route with the device


def run(args: argparse.Namespace) -> int:
    from portico.io.afpacket import AfPacketPort
    from portico.live import LiveLoop, fence, unfence

    try:
        daemon, token, host, api_port = start_daemon(args, "portico up")
    except StartError as error:
        print(error, file=sys.stderr)
        return error.code
    opened: list[Any] = []
    try:
        with contextlib.ExitStack() as undo:
            undo.callback(daemon.stop)
            config_ports = dict(daemon.config.ports)
            bound = _bindings(args, config_ports)
            for name, interface in bound.items():
                port = AfPacketPort(interface, port=config_ports[name].id)
                opened.append(port)
                undo.callback(port.close)
            management = tap = None
            if args.management_address:
                if args.management_port not in bound:
                    raise StartError("portico up: --management-port: name one of the bound "
                                     f"ports ({', '.join(sorted(bound))})", EXIT_USAGE)
                management, tap = undo.enter_context(management_tap(
                    args, config_ports[args.management_port].id, api_port))
            if not args.no_fence:
                fence(list(bound.values()))
                undo.callback(unfence)
            loop = LiveLoop(lambda batch, now: daemon.gateway.process(batch, now), opened,
                            lock=daemon.lock, management=management, tap=tap,
                            batch_size=args.batch,
                            counted=lambda batch, received: daemon.ports.count(
                                batch, received=received))
            daemon.sources["live"] = loop.counts
            if management is not None:
                daemon.sources["management"] = lambda: dict(management.counters)
            loop.start()
            undo.callback(loop.stop)
            daemon.start_watching()
            serve(daemon, token, host, api_port, args)
    except StartError as error:
        print(error, file=sys.stderr)
        return error.code
    except (OSError, ValueError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", None) or error
        print(f"portico up: {detail}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def add_command(sub: Any) -> None:
    parser = sub.add_parser("up", help="run the gateway on live interfaces, with its API",
                            description=HELP, epilog=EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(handler=run)


__all__ = ["add_command", "run"]
