"""The control plane's commands: ``portico daemon`` serves, the others are its API's clients.

``portico daemon CONFIG`` holds the gateway and the store and serves the API
(``portico.control.api``); ``show``, ``apply``, ``set``, ``flows``, ``stats``
and ``trace`` talk to a running daemon over HTTP, as any program could
(``--server``, or ``PORTICO_SERVER``; the token from ``PORTICO_TOKEN`` or
``--token-file``). ``apply`` works like ``kubectl apply``: it prints the
difference between the file and the daemon's desired state, then makes the
file the desired state (``--dry-run``: only the difference). ``set`` does the
same for a few fields of one object (``portico.control.fieldpath``), written
back only if nobody changed the desired state since it was read (If-Match).
``trace`` asks what the gateway would do with one packet, stage by stage
(``portico.control.trace``). Exit codes as every portico command: 0 ok, 1 the
work failed (refused config, a conflicting writer, unreachable daemon), 2 bad
usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_STORE = "sqlite:portico-state.db"

DAEMON_HELP = """\
Run the gateway as a service: the desired state lives in a store (SQLite by
default; etcd to share it between gateway nodes), the REST API changes it, and
every change is compiled into new tables and swapped in between two batches.
CONFIG seeds an empty store; a store that already holds a state keeps it.
"""

DAEMON_EXAMPLES = """\
examples:
  PORTICO_TOKEN=s3cret portico daemon examples/two-tenants.yaml --replay traffic.pcapng --loop
  portico daemon gw.yaml --store etcd://127.0.0.1:2379 --listen 0.0.0.0:8443 \\
      --token-file /etc/portico/token --tls-cert cert.pem --tls-key key.pem
  curl -H "Authorization: Bearer s3cret" http://127.0.0.1:8080/api/v1/stats
"""


def _token(args: argparse.Namespace) -> str:
    if getattr(args, "token_file", None):
        return Path(args.token_file).read_text(encoding="utf-8").strip()
    return os.environ.get("PORTICO_TOKEN", "")


def add_daemon_arguments(parser: argparse.ArgumentParser, *, replay: bool = True) -> None:
    """``portico daemon``'s arguments (``replay=False``: without the capture replay, for
    ``portico up``, whose traffic comes from live ports)."""
    parser.add_argument("config", help="the YAML config that seeds an empty store")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                        help=f"where the API listens (default {DEFAULT_LISTEN})")
    parser.add_argument("--store", default=DEFAULT_STORE, metavar="URL",
                        help="sqlite:PATH or etcd://HOST:PORT (default %(default)s)")
    parser.add_argument("--token-file", metavar="FILE",
                        help="the API token (default: the PORTICO_TOKEN variable)")
    parser.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate")
    parser.add_argument("--tls-key", metavar="PEM", help="... and this key")
    if not replay:
        return
    parser.add_argument("--replay", metavar="CAPTURE",
                        help="a pcapng whose packets are the traffic (live ports: portico up)")
    parser.add_argument("--loop", action="store_true", help="replay the capture forever")


class StartError(Exception):
    """The daemon could not start; ``code`` is the exit code (usage or failure)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def start_daemon(args: argparse.Namespace, prog: str) -> tuple[Any, str, str, int]:
    """The daemon of ``args`` (``add_daemon_arguments``), its token, host and port;
    ``StartError`` names the bad argument."""
    import yaml

    from portico.control.daemon import Daemon
    from portico.control.model import ConfigError
    from portico.control.store import StoreError, open_store

    try:
        token = _token(args)
    except OSError as error:
        raise StartError(f"{prog}: --token-file: {error.strerror or error}", EXIT_USAGE) from None
    if not token:
        raise StartError(f"{prog}: no API token: set PORTICO_TOKEN or pass --token-file",
                         EXIT_USAGE)
    host, _, port_text = args.listen.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise StartError(f"{prog}: --listen: {args.listen!r} is not HOST:PORT", EXIT_USAGE)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise StartError(f"{prog}: --tls-cert and --tls-key go together", EXIT_USAGE)
    try:
        initial = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
        daemon = Daemon(open_store(args.store), initial=initial)
    except (ConfigError, StoreError, ValueError) as error:
        raise StartError(f"{prog}: {error}", EXIT_FAILED) from None
    except OSError as error:
        raise StartError(f"{prog}: {args.config}: {error.strerror or error}",
                         EXIT_FAILED) from None
    return daemon, token, host, int(port_text)


def serve(daemon: Any, token: str, host: str, port: int, args: argparse.Namespace) -> None:
    """The API until SIGINT or SIGTERM (uvicorn's handlers end it)."""
    import uvicorn

    from portico.control.api import make_app

    uvicorn.run(make_app(daemon, token), host=host, port=port, log_level="warning",
                ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key)


def run_daemon(args: argparse.Namespace) -> int:
    try:
        daemon, token, host, port = start_daemon(args, "portico daemon")
    except StartError as error:
        print(error, file=sys.stderr)
        return error.code
    daemon.start_watching()
    if args.replay:
        daemon.replay(args.replay, loop=args.loop)
    try:
        serve(daemon, token, host, port, args)
    finally:
        daemon.stop()
    return EXIT_OK


# ---------------------------------------------------------------- clients
def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=os.environ.get("PORTICO_SERVER",
                                                           f"http://{DEFAULT_LISTEN}"),
                        help="the daemon's URL (default: PORTICO_SERVER or %(default)s)")
    parser.add_argument("--token-file", metavar="FILE",
                        help="the API token (default: the PORTICO_TOKEN variable)")
    parser.add_argument("--cacert", metavar="PEM", default=os.environ.get("PORTICO_CACERT"),
                        help="trust this CA for an https:// server (default: PORTICO_CACERT, "
                             "else the system's CAs)")
    parser.add_argument("--insecure", action="store_true",
                        help="https:// without checking the server's certificate (tests only)")


def _verify(args: argparse.Namespace) -> bool | str:
    """What httpx checks an https:// server's certificate against."""
    if getattr(args, "insecure", False):
        return False
    return getattr(args, "cacert", None) or True


class ClientError(Exception):
    """The daemon refused, or could not be reached; the message says which and why."""


class ClientConflict(ClientError):
    """409: the desired state changed since the revision the write was made against."""


def _call(args: argparse.Namespace, method: str, path: str, **kw: Any) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {_token(args)}", **kw.pop("headers", {})}
    try:
        response = httpx.request(method, args.server.rstrip("/") + path, headers=headers,
                                 timeout=30, verify=_verify(args), **kw)
    except httpx.HTTPError as error:
        raise ClientError(f"{args.server}: {error}") from None
    if response.status_code == 422:
        body = response.json()
        lines = [f"{p['path']}: {p['message']}" for p in body.get("problems", [])]
        raise ClientError("refused:\n  " + "\n  ".join(lines or [str(body)]))
    if response.status_code == 409:
        raise ClientConflict(f"{method} {path}: {response.text}")
    if response.status_code >= 400:
        try:
            detail = response.json()
        except ValueError:
            detail = response.text
        raise ClientError(f"{method} {path}: HTTP {response.status_code}: {detail}")
    return response.json() if "json" in response.headers.get("content-type", "") else response.text


def run_show(args: argparse.Namespace) -> int:
    import yaml

    state = _call(args, "GET", "/api/v1/config")
    document = state["config"]
    for part in (args.path.split(".") if args.path else []):
        if not isinstance(document, dict) or part not in document:
            print(f"portico show: {args.path}: not in the desired state", file=sys.stderr)
            return EXIT_FAILED
        document = document[part]
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(f"# revision {state['revision']}")
        print(yaml.safe_dump(document, sort_keys=False).rstrip())
    return EXIT_OK


def run_apply(args: argparse.Namespace) -> int:
    import yaml

    from portico.control.daemon import diff_text
    from portico.control.store import objects_of

    try:
        document = yaml.safe_load(Path(args.file).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        print(f"portico apply: {args.file}: {error}", file=sys.stderr)
        return EXIT_FAILED
    state = _call(args, "GET", "/api/v1/config")
    try:
        diff = diff_text(objects_of(state["config"]), objects_of(document))
    except ValueError as error:
        print(f"portico apply: {args.file}: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(diff or "# no change")
    if args.dry_run or not diff:
        return EXIT_OK
    result = _call(args, "PUT", "/api/v1/config", json=document,
                   headers={"If-Match": f'"{state["revision"]}"'})
    changed = ", ".join(f"{k} {v}" for k, v in sorted(result["changed"].items()))
    print(f"# applied: revision {result['revision']} ({changed})")
    return EXIT_OK


SET_HELP = """\
Change fields of one object of the daemon's desired state (a tenant, a port,
the provider) without writing the whole object: read it, set each PATH to
VALUE, print the difference as apply does, and write it back. The write is
conditional on the revision that was read (If-Match): if anyone changed the
desired state in between, nothing is written and the command fails (exit 1);
run it again. The daemon validates the result whole, as for apply.

PATH is written as the config's error messages write paths: .name for a key,
[N] for a list item ([len] appends). A path the model does not have is
refused, naming it. VALUE is JSON if it parses as JSON (9000, true,
["10.0.0.0/24"], "007") and a plain string otherwise (deny, 02:00:00:00:0a:05).
"""

SET_EXAMPLES = """\
examples:
  portico set ports/uplink mtu=9000
  portico set ports/uplink --unset mtu                      # back to the default
  portico set tenants/a 'router.firewall.ingress[2].action=deny'
  portico set tenants/b 'router.nat.snat[0].pool=["198.51.100.21/32"]' --dry-run
  portico set tenants/a 'router.firewall.containers.web[1]=10.0.0.6'   # [len]: append
  portico set tenants/a --unset 'router.firewall.ingress[0]'

exit codes: 0 written (or no change), 1 refused by the daemon, changed by another
writer in between, or unreachable; 2 bad usage (a path the model does not have).
"""

OBJECT_KINDS = ("tenants", "ports")


def _read_object(args: argparse.Namespace, key: str) -> tuple[int, dict[str, Any]]:
    """The object ``key`` and the revision it was read at, from one consistent read."""
    if key == "provider":
        state = _call(args, "GET", "/api/v1/config")
        return int(state["revision"]), dict(state["config"].get("provider") or {})
    kind, _, name = key.partition("/")
    listed = _call(args, "GET", f"/api/v1/{kind}")
    if name not in listed["items"]:
        there = ", ".join(listed["names"]) or "none"
        raise ClientError(f"{key}: no such object ({kind}: {there}); "
                          "make one with apply or PUT")
    return int(listed["revision"]), listed["items"][name]


def run_set(args: argparse.Namespace) -> int:
    from portico.control.daemon import diff_text
    from portico.control.fieldpath import (
        PathError,
        assign,
        check_path,
        parse_path,
        parse_value,
        remove,
    )

    key = args.object.strip("/")
    kind, _, name = key.partition("/")
    if not (key == "provider" or (kind in OBJECT_KINDS and name and "/" not in name)):
        print(f"portico set: {args.object}: name an object as tenants/NAME, ports/NAME or "
              "provider", file=sys.stderr)
        return EXIT_USAGE
    edits: list[tuple[list[Any], Any, bool]] = []  # (path, value, unset)
    try:
        for text in args.assignments:
            path, sep, value = text.partition("=")
            if not sep:
                raise PathError(f"{text}: write PATH=VALUE (or --unset PATH)")
            edits.append((parse_path(path.strip()), parse_value(value), False))
        edits += [(parse_path(path.strip()), None, True) for path in args.unset]
        if not edits:
            raise PathError("nothing to set: give PATH=VALUE or --unset PATH")
        for parts, _, _ in edits:
            check_path(kind, parts, key)
    except PathError as error:
        print(f"portico set: {key}: {error}", file=sys.stderr)
        return EXIT_USAGE
    revision, current = _read_object(args, key)
    edited = current
    try:
        for parts, value, unset in edits:
            edited = remove(edited, parts) if unset else assign(edited, parts, value)
    except PathError as error:
        print(f"portico set: {key}: {error}", file=sys.stderr)
        return EXIT_USAGE
    diff = diff_text({key: current}, {key: edited})
    print(diff or "# no change")
    if args.dry_run or not diff:
        return EXIT_OK
    try:
        result = _call(args, "PUT", f"/api/v1/{key}", json=edited,
                       headers={"If-Match": f'"{revision}"'})
    except ClientConflict:
        print(f"portico set: {key}: the desired state changed since revision {revision} was "
              "read; nothing was written (run the command again)", file=sys.stderr)
        return EXIT_FAILED
    changed = ", ".join(f"{k} {v}" for k, v in sorted(result["changed"].items()))
    print(f"# applied: revision {result['revision']} ({changed})")
    return EXIT_OK


def run_flows(args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("tenant", args.tenant), ("src", args.src), ("dst", args.dst),
                                ("protocol", args.protocol), ("limit", args.limit))
              if v is not None}
    flows = _call(args, "GET", "/api/v1/flows", params=params)
    if args.json:
        print(json.dumps(flows, indent=2))
        return EXIT_OK
    for f in flows:
        print(" ".join(f"{k}={v}" for k, v in f.items()))
    return EXIT_OK


def run_stats(args: argparse.Namespace) -> int:
    def table() -> str:
        s = _call(args, "GET", "/api/v1/stats")
        d = s["datapath"]
        lines = [f"revision {s['revision']}  generation {s['generation']}  "
                 f"packets {d['packets']}  hits {d['hits']}  misses {d['misses']}",
                 f"{'stage':<16}{'packets':>12}{'ns/pkt':>9}  drops"]
        for name, c in s["stages"].items():
            drops = ", ".join(f"{k} {v}" for k, v in sorted(c["drops"].items())) or "-"
            lines.append(f"{name:<16}{c['packets']:>12}{c['ns_per_packet']:>9.0f}  {drops}")
        return "\n".join(lines)

    if not args.watch:
        print(table())
        return EXIT_OK
    deadline = time.monotonic() + args.duration if args.duration else float("inf")
    while time.monotonic() < deadline:
        text = table()
        sys.stdout.write("\033[H\033[J" + text + "\n")
        sys.stdout.flush()
        time.sleep(args.interval)
    return EXIT_OK


TRACE_HELP = """\
Ask the running gateway what it would do with one packet arriving on a port:
every stage it goes through with its decision, in order, then the verdict
(the output port, the drop reason and the stage that dropped it, or held for
a neighbour) and the packet as it would leave, like ovs-appctl ofproto/trace.

Give the packet as fields (--src, --dst, --proto, --sport, --dport, ...; the
Ethernet header comes from the port: its VLAN, the router's MAC there) or as
a whole frame in hex (--hex). The packet runs through every stage (no flow
cache) on a copy of what the gateway learned (MACs, neighbours, connections,
NAT bindings): tracing changes nothing in the running gateway, not even its
counters.
"""

TRACE_EXAMPLES = """\
examples:
  portico trace --port access --vlan 10 --src 10.0.0.5 --dst 8.8.8.8 --proto udp --dport 53
  portico trace --port uplink --src 192.0.2.7 --dst 198.51.100.10 --dport 8080
  portico trace --port uplink --src 192.0.2.7 --dst 198.51.100.10 --proto icmp --json
  portico trace --port access --hex "$(xxd -p frame.bin | tr -d '\\n')"

defaults: --proto tcp, --flags S, --sport 40000, --dport 80, --ttl 64; ICMP: an echo
request whose identifier is --sport. The source MAC is 02:00:00:00:7e:01.
exit codes: 0 traced (whatever the verdict), 1 refused (the message names the field)
or unreachable, 2 bad usage.
"""

TRACE_FIELDS = ("vlan", "eth_src", "eth_dst", "src", "dst", "protocol", "sport", "dport",
                "tcp_flags", "ttl", "icmp_type", "icmp_code")


def run_trace(args: argparse.Namespace) -> int:
    from portico.control.trace import format_trace

    given = {name: getattr(args, name) for name in TRACE_FIELDS
             if getattr(args, name) is not None}
    if args.hex is not None and given:
        print(f"portico trace: --hex is the whole frame: leave out "
              f"{', '.join('--' + n.replace('_', '-') for n in given)}", file=sys.stderr)
        return EXIT_USAGE
    if args.hex is None and (args.src is None or args.dst is None):
        print("portico trace: give --src and --dst (or the frame as --hex)", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(given.get("protocol"), str) and given["protocol"].isdigit():
        given["protocol"] = int(given["protocol"])
    body: dict[str, Any] = {"port": args.port, **given}
    if args.hex is not None:
        body["hex"] = args.hex
    report = _call(args, "POST", "/api/v1/trace", json=body)
    print(json.dumps(report, indent=2) if args.json else format_trace(report))
    return EXIT_OK


def add_commands(sub: Any) -> None:
    """``daemon``, ``show``, ``apply``, ``set``, ``flows``, ``stats``, ``trace`` into
    ``portico``'s subcommands."""
    daemon = sub.add_parser("daemon", help="run the gateway as a service with its REST API",
                            description=DAEMON_HELP, epilog=DAEMON_EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_daemon_arguments(daemon)
    daemon.set_defaults(handler=run_daemon)

    show = sub.add_parser("show", help="the daemon's desired state (or one part of it)")
    add_client_arguments(show)
    show.add_argument("path", nargs="?", help="e.g. tenants.a.router (default: everything)")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_client(run_show, "show"))

    apply = sub.add_parser("apply", help="make a config file the desired state, diff first")
    add_client_arguments(apply)
    apply.add_argument("file", help="a YAML config")
    apply.add_argument("--dry-run", action="store_true", help="print the difference only")
    apply.set_defaults(handler=_client(run_apply, "apply"))

    set_ = sub.add_parser("set", help="change fields of one object of the desired state",
                          description=SET_HELP, epilog=SET_EXAMPLES,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    add_client_arguments(set_)
    set_.add_argument("object", metavar="OBJECT",
                      help="tenants/NAME, ports/NAME or provider")
    set_.add_argument("assignments", nargs="*", metavar="PATH=VALUE")
    set_.add_argument("--unset", action="append", default=[], metavar="PATH",
                      help="remove a field (back to its default) or a list item")
    set_.add_argument("--dry-run", action="store_true", help="print the difference only")
    set_.set_defaults(handler=_client(run_set, "set"))

    flows = sub.add_parser("flows", help="the running flow cache, filtered")
    add_client_arguments(flows)
    for name in ("tenant", "src", "dst"):
        flows.add_argument(f"--{name}")
    flows.add_argument("--protocol", type=int)
    flows.add_argument("--limit", type=int)
    flows.add_argument("--json", action="store_true")
    flows.set_defaults(handler=_client(run_flows, "flows"))

    stats = sub.add_parser("stats", help="the running gateway's counters")
    add_client_arguments(stats)
    stats.add_argument("--watch", action="store_true", help="a live table, refreshed")
    stats.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    stats.add_argument("--duration", type=float, default=0.0,
                       help="stop watching after this many seconds (default: never)")
    stats.set_defaults(handler=_client(run_stats, "stats"))

    trace = sub.add_parser("trace", help="what the gateway would do with one packet, per stage",
                           description=TRACE_HELP, epilog=TRACE_EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add_client_arguments(trace)
    trace.add_argument("--port", required=True, help="the ingress port, by name")
    trace.add_argument("--hex", help="the whole frame as hex digits (no other packet option)")
    trace.add_argument("--vlan", type=int, help="802.1Q tag (default: the port's one VLAN)")
    trace.add_argument("--eth-src", dest="eth_src", metavar="MAC")
    trace.add_argument("--eth-dst", dest="eth_dst", metavar="MAC",
                       help="default: the router's MAC on the port's segment")
    trace.add_argument("--src", metavar="ADDRESS", help="IPv4 or IPv6 source")
    trace.add_argument("--dst", metavar="ADDRESS", help="IPv4 or IPv6 destination")
    trace.add_argument("--proto", dest="protocol", metavar="NAME|NUMBER",
                       help="tcp, udp, icmp, icmpv6, ... or 0..255")
    trace.add_argument("--sport", type=int)
    trace.add_argument("--dport", type=int)
    trace.add_argument("--flags", dest="tcp_flags", metavar="LETTERS",
                       help="TCP flags: S, SA, A, FA, R, ...")
    trace.add_argument("--ttl", type=int)
    trace.add_argument("--icmp-type", dest="icmp_type", type=int)
    trace.add_argument("--icmp-code", dest="icmp_code", type=int)
    trace.add_argument("--json", action="store_true", help="the whole report as JSON")
    trace.set_defaults(handler=_client(run_trace, "trace"))


def _client(run: Any, name: str) -> Any:
    def handler(args: argparse.Namespace) -> int:
        try:
            return int(run(args))
        except ClientError as error:
            print(f"portico {name}: {error}", file=sys.stderr)
            return EXIT_FAILED
        except OSError as error:
            print(f"portico {name}: {error}", file=sys.stderr)
            return EXIT_USAGE

    return handler
