"""The control plane's commands: ``portico daemon`` serves, the others are its API's clients.

``portico daemon CONFIG`` holds the gateway and the store and serves the API
(``portico.control.api``); ``show``, ``apply``, ``flows`` and ``stats`` talk
to a running daemon over HTTP, as any program could (``--server``, or
``PORTICO_SERVER``; the token from ``PORTICO_TOKEN`` or ``--token-file``).
``apply`` works like ``kubectl apply``: it prints the difference between the
file and the daemon's desired state, then makes the file the desired state
(``--dry-run``: only the difference). Exit codes as every portico command: 0
ok, 1 the work failed (refused config, unreachable daemon), 2 bad usage.
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


def add_daemon_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the YAML config that seeds an empty store")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                        help=f"where the API listens (default {DEFAULT_LISTEN})")
    parser.add_argument("--store", default=DEFAULT_STORE, metavar="URL",
                        help="sqlite:PATH or etcd://HOST:PORT (default %(default)s)")
    parser.add_argument("--token-file", metavar="FILE",
                        help="the API token (default: the PORTICO_TOKEN variable)")
    parser.add_argument("--replay", metavar="CAPTURE",
                        help="a pcapng whose packets are the traffic (no live ports yet)")
    parser.add_argument("--loop", action="store_true", help="replay the capture forever")
    parser.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate")
    parser.add_argument("--tls-key", metavar="PEM", help="... and this key")


def run_daemon(args: argparse.Namespace) -> int:
    import uvicorn
    import yaml

    from portico.control.api import make_app
    from portico.control.daemon import Daemon
    from portico.control.model import ConfigError
    from portico.control.store import StoreError, open_store

    try:
        token = _token(args)
    except OSError as error:
        print(f"portico daemon: --token-file: {error.strerror or error}", file=sys.stderr)
        return EXIT_USAGE
    if not token:
        print("portico daemon: no API token: set PORTICO_TOKEN or pass --token-file",
              file=sys.stderr)
        return EXIT_USAGE
    host, _, port_text = args.listen.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        print(f"portico daemon: --listen: {args.listen!r} is not HOST:PORT", file=sys.stderr)
        return EXIT_USAGE
    if bool(args.tls_cert) != bool(args.tls_key):
        print("portico daemon: --tls-cert and --tls-key go together", file=sys.stderr)
        return EXIT_USAGE
    try:
        initial = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
        daemon = Daemon(open_store(args.store), initial=initial)
    except (ConfigError, StoreError, ValueError) as error:
        print(f"portico daemon: {error}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as error:
        print(f"portico daemon: {args.config}: {error.strerror or error}", file=sys.stderr)
        return EXIT_FAILED
    daemon.start_watching()
    if args.replay:
        daemon.replay(args.replay, loop=args.loop)
    try:
        uvicorn.run(make_app(daemon, token), host=host, port=int(port_text), log_level="warning",
                    ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key)
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


class ClientError(Exception):
    """The daemon refused, or could not be reached; the message says which and why."""


def _call(args: argparse.Namespace, method: str, path: str, **kw: Any) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {_token(args)}", **kw.pop("headers", {})}
    try:
        response = httpx.request(method, args.server.rstrip("/") + path, headers=headers,
                                 timeout=30, verify=False, **kw)
    except httpx.HTTPError as error:
        raise ClientError(f"{args.server}: {error}") from None
    if response.status_code == 422:
        body = response.json()
        lines = [f"{p['path']}: {p['message']}" for p in body.get("problems", [])]
        raise ClientError("refused:\n  " + "\n  ".join(lines or [str(body)]))
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


def add_commands(sub: Any) -> None:
    """``daemon``, ``show``, ``apply``, ``flows``, ``stats`` into ``portico``'s subcommands."""
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
