"""Namespace labs: a topology of network namespaces and veth pairs, built and always removed.

A lab is what live ports are tried on: a few network namespaces standing for
tenants and an uplink, each joined by a veth pair to the namespace the gateway
runs in (the *host* side), with addresses and routes. It is described as data
(YAML or a dict, see ``examples/lab-two-tenants.yaml``)::

    name: demo
    namespaces:
      tenant-a: {}                    # or a list of names
      uplink: {forwarding: true}      # net.ipv4/ipv6 forwarding on
    links:
      - name: gw-a                    # this end: in the host namespace...
        peer: {name: eth0, namespace: tenant-a, addresses: [10.0.0.7/24]}
    routes:
      - {namespace: tenant-a, to: default, via: 10.0.0.1}

An end names its interface, its ``namespace`` (none: the host's),
``addresses``, ``mac``, ``ipv6`` (false: IPv6 off, so no router or
neighbour solicitations join the traffic) and ``offloads`` (false, the
default: checksum and segmentation offloads off, so the gateway's rings see
whole frames with whole checksums, as from a real wire); a link may set its
``mtu``.

Theory of operation: ``Lab`` builds with the ``ip`` command and *records each
thing before making it*, in memory and, for the CLI, in a JSON state file, so
whatever exists is always on the record, even if the build is interrupted
half-way. Removal walks the record (host-side links first, then namespaces,
whose own interfaces go with them), ignores what is already gone, and runs
with Ctrl-C and SIGTERM held back until it is done. As a context manager the
lab is removed however the block ends; while it is up SIGTERM becomes an
exception (``LabInterrupted``) so that a killed test still cleans up. A
``prefix`` makes names unique (tests use ``"pt" + random hex``): it is put in
front of every namespace and every host-side interface name, which must then
still fit Linux's 15 characters.

The CLI (``portico lab up TOPOLOGY`` / ``portico lab down [TOPOLOGY]``) leaves a
lab up between the two commands; ``down`` finds what ``up`` made through the
state file, also after a crash.

``inside(namespace)`` moves the calling *thread* into a lab namespace for a
``with`` block: sockets (and ports) made there stay in that namespace when
used from anywhere afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import yaml

COMMAND_TIMEOUT = 30.0
IFNAMSIZ = 15  # characters in an interface name, without the terminating NUL
STATE_DIR = Path(os.environ.get("PORTICO_LAB_STATE", "/run/portico/lab"))
CLONE_NEWNET = 0x40000000

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


class TopologyError(ValueError):
    """A topology that cannot be built; names the field, e.g. ``links[1].peer.mac``."""


class LabError(RuntimeError):
    """A command that building the lab needed failed; the lab was removed."""


class LabInterrupted(BaseException):
    """SIGTERM arrived while a lab was up (raised so the lab comes down first)."""


# ---------------------------------------------------------------- the description
@dataclass(frozen=True)
class End:
    """One end of a veth pair."""

    name: str
    namespace: str | None = None  # None: the host namespace (where the gateway runs)
    addresses: tuple[str, ...] = ()
    mac: str | None = None
    ipv6: bool = True
    # Checksum and segmentation offloads. Off by default: a veth end's kernel would
    # otherwise hand the other end TCP/UDP frames with their checksum only begun
    # (CHECKSUM_PARTIAL) and TCP in 64 KiB super-frames, which a user-space datapath
    # reading the wire through AF_PACKET receives as they are.
    offloads: bool = False


@dataclass(frozen=True)
class Link:
    """A veth pair: ``end`` and ``peer``."""

    end: End
    peer: End
    mtu: int | None = None


@dataclass(frozen=True)
class Route:
    namespace: str | None
    to: str
    via: str | None = None
    dev: str | None = None


@dataclass(frozen=True)
class Namespace:
    name: str
    forwarding: bool = False


@dataclass(frozen=True)
class Topology:
    name: str
    namespaces: tuple[Namespace, ...] = ()
    links: tuple[Link, ...] = ()
    routes: tuple[Route, ...] = ()


def _fail(where: str, problem: str) -> TopologyError:
    return TopologyError(f"{where}: {problem}")


def _check_keys(value: Any, where: str, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(where, f"expected a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise _fail(where, f"unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    return value


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise _fail(where, f"{value!r} is not a name (letters, digits, '_', '.', '-')")
    return value


def _end(value: Any, where: str, namespaces: set[str]) -> End:
    data = _check_keys(value, where, {"name", "namespace", "addresses", "mac", "ipv6",
                                      "offloads"})
    if "name" not in data:
        raise _fail(where, "an end needs a 'name'")
    name = _name(data["name"], f"{where}.name")
    if len(name) > IFNAMSIZ:
        raise _fail(f"{where}.name", f"{name!r} is longer than {IFNAMSIZ} characters")
    namespace = data.get("namespace")
    if namespace is not None:
        namespace = _name(namespace, f"{where}.namespace")
        if namespace not in namespaces:
            raise _fail(f"{where}.namespace", f"{namespace!r} is not in 'namespaces'")
    addresses = data.get("addresses", [])
    if not isinstance(addresses, list):
        raise _fail(f"{where}.addresses", "expected a list")
    for i, address in enumerate(addresses):
        try:
            ipaddress.ip_interface(str(address))
        except ValueError:
            raise _fail(f"{where}.addresses[{i}]",
                        f"{address!r} is not an address with a prefix length") from None
        if "/" not in str(address):
            raise _fail(f"{where}.addresses[{i}]", f"{address!r} needs a prefix length (/24)")
    mac = data.get("mac")
    if mac is not None and (not isinstance(mac, str) or not _MAC.match(mac)):
        raise _fail(f"{where}.mac", f"{mac!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
    flags = {}
    for flag, default in (("ipv6", True), ("offloads", False)):
        flags[flag] = data.get(flag, default)
        if not isinstance(flags[flag], bool):
            raise _fail(f"{where}.{flag}", f"expected true or false, got {flags[flag]!r}")
    return End(name, namespace, tuple(str(a) for a in addresses), mac, **flags)


def parse_topology(data: Any, *, name: str = "lab") -> Topology:
    """A ``Topology`` from plain data (a parsed YAML file); ``TopologyError`` names the field."""
    data = _check_keys(data, "topology", {"name", "namespaces", "links", "routes"})
    lab_name = _name(data.get("name", name), "name")
    raw_namespaces = data.get("namespaces", {}) or {}
    namespaces: list[Namespace] = []
    if isinstance(raw_namespaces, list):
        namespaces = [Namespace(_name(n, f"namespaces[{i}]"))
                      for i, n in enumerate(raw_namespaces)]
    elif isinstance(raw_namespaces, Mapping):
        for key, options in raw_namespaces.items():
            where = f"namespaces.{key}"
            options = _check_keys(options or {}, where, {"forwarding"})
            forwarding = options.get("forwarding", False)
            if not isinstance(forwarding, bool):
                raise _fail(f"{where}.forwarding", f"expected true or false, got {forwarding!r}")
            namespaces.append(Namespace(_name(key, where), forwarding))
    else:
        raise _fail("namespaces", "expected a list of names or a mapping")
    known = {n.name for n in namespaces}
    if len(known) != len(namespaces):
        raise _fail("namespaces", "a name appears twice")
    links: list[Link] = []
    raw_links = data.get("links", []) or []
    if not isinstance(raw_links, list):
        raise _fail("links", "expected a list")
    seen: set[tuple[str | None, str]] = set()
    for i, raw in enumerate(raw_links):
        where = f"links[{i}]"
        raw = _check_keys(raw, where, {"name", "namespace", "addresses", "mac", "ipv6",
                                       "offloads", "peer", "mtu"})
        if "peer" not in raw:
            raise _fail(where, "a link needs a 'peer' end")
        end = _end({k: v for k, v in raw.items() if k not in ("peer", "mtu")}, where, known)
        peer = _end(raw["peer"], f"{where}.peer", known)
        for this, label in ((end, where), (peer, f"{where}.peer")):
            if (this.namespace, this.name) in seen:
                raise _fail(f"{label}.name", f"{this.name!r} is already used in "
                            f"{this.namespace or 'the host namespace'}")
            seen.add((this.namespace, this.name))
        mtu = raw.get("mtu")
        if mtu is not None and (not isinstance(mtu, int) or not 68 <= mtu <= 65535):
            raise _fail(f"{where}.mtu", f"expected 68..65535, got {mtu!r}")
        links.append(Link(end, peer, mtu))
    routes: list[Route] = []
    raw_routes = data.get("routes", []) or []
    if not isinstance(raw_routes, list):
        raise _fail("routes", "expected a list")
    for i, raw in enumerate(raw_routes):
        where = f"routes[{i}]"
        raw = _check_keys(raw, where, {"namespace", "to", "via", "dev"})
        namespace = raw.get("namespace")
        if namespace is not None and _name(namespace, f"{where}.namespace") not in known:
            raise _fail(f"{where}.namespace", f"{namespace!r} is not in 'namespaces'")
        to = str(raw.get("to", ""))
        if to != "default":
            try:
                ipaddress.ip_network(to, strict=False)
            except ValueError:
                raise _fail(f"{where}.to", f"{to!r} is not 'default' or a prefix") from None
        via = raw.get("via")
        if via is not None:
            try:
                ipaddress.ip_address(str(via))
            except ValueError:
                raise _fail(f"{where}.via", f"{via!r} is not an address") from None
        dev = raw.get("dev")
        if via is None and dev is None:
            raise _fail(where, "a route needs 'via' or 'dev'")
        routes.append(Route(namespace, to, None if via is None else str(via),
                            None if dev is None else _name(dev, f"{where}.dev")))
    return Topology(lab_name, tuple(namespaces), tuple(links), tuple(routes))


def load_topology(path: str | os.PathLike[str]) -> Topology:
    """Read a topology file (YAML); its name defaults to the file's stem."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise TopologyError(f"{path}: not YAML: {error}") from None
    try:
        return parse_topology(data or {}, name=Path(path).stem)
    except TopologyError as error:
        raise TopologyError(f"{path}: {error}") from None


# ---------------------------------------------------------------- commands and signals
def run(command: Sequence[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, bounded in time; LabError with its stderr when ``check`` and it fails."""
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout,
                              input=input, check=False)
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(command)}: no answer in {timeout:g} s") from None
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(command)}: {done.stderr.strip() or done.returncode}")
    return done


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the block (main thread only); deliver them after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        arrived.append(signum)

    previous = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for pending in dict.fromkeys(arrived):
            signal.raise_signal(pending)


_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def inside_netns(path: str | os.PathLike[str]) -> Iterator[None]:
    """Run the block with the calling thread in the network namespace at ``path``."""
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                raise OSError(code, f"setns {path}: {os.strerror(code)}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            if _libc.setns(back, CLONE_NEWNET) != 0:  # pragma: no cover - cannot fail back
                code = ctypes.get_errno()
                raise OSError(code, f"setns back: {os.strerror(code)}")
    finally:
        os.close(back)


# ---------------------------------------------------------------- the lab
@dataclass
class Record:
    """What a lab has made (or was about to make): the state file's content."""

    name: str
    prefix: str = ""
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)  # host-namespace interfaces
    pid: int = 0

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "prefix": self.prefix,
                           "namespaces": self.namespaces, "links": self.links,
                           "pid": self.pid}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Record:
        data = json.loads(text)
        return cls(str(data["name"]), str(data.get("prefix", "")),
                   [str(n) for n in data.get("namespaces", [])],
                   [str(n) for n in data.get("links", [])], int(data.get("pid", 0)))


def state_path(name: str, directory: Path | None = None) -> Path:
    return (directory or STATE_DIR) / f"{name}.json"


class Lab:
    """Builds a ``Topology``; removes everything it made on ``down`` or leaving ``with``.

    ``prefix`` goes in front of namespace names and host-side interface names.
    ``state_file``: where to keep the record on disk (the CLI's; tests need none).
    """

    def __init__(self, topology: Topology | Mapping[str, Any] | str | os.PathLike[str], *,
                 prefix: str = "", state_file: Path | None = None) -> None:
        if isinstance(topology, Topology):
            self.topology = topology
        elif isinstance(topology, Mapping):
            self.topology = parse_topology(topology)
        else:
            self.topology = load_topology(topology)
        if prefix and not _NAME.match(prefix):
            raise TopologyError(f"prefix: {prefix!r} is not a name")
        self.prefix = prefix
        for i, link in enumerate(self.topology.links):
            for end, label in ((link.end, f"links[{i}]"), (link.peer, f"links[{i}].peer")):
                if end.namespace is None and len(prefix + end.name) > IFNAMSIZ:
                    raise TopologyError(
                        f"{label}.name: {prefix + end.name!r} (with the prefix) is longer "
                        f"than {IFNAMSIZ} characters")
        self.state_file = state_file
        self.record = Record(prefix + self.topology.name, prefix, pid=os.getpid())
        self._previous_term: Any = None

    # -- names --------------------------------------------------------------------------

    def namespace(self, name: str) -> str:
        """The real name of the topology's namespace ``name``."""
        if name not in {n.name for n in self.topology.namespaces}:
            raise KeyError(f"no namespace {name!r} in lab {self.topology.name!r}")
        return self.prefix + name

    def interface(self, name: str, namespace: str | None = None) -> str:
        """The real name of an interface: host-side names carry the prefix."""
        return name if namespace is not None else self.prefix + name

    def _ns(self, namespace: str | None) -> str | None:
        return None if namespace is None else self.prefix + namespace

    def _ip(self, namespace: str | None, *args: str) -> None:
        real = self._ns(namespace)
        run(["ip", *(["-n", real] if real else []), *args])

    def exec_args(self, namespace: str | None, *command: str) -> list[str]:
        """The argv that runs ``command`` inside a namespace (for Popen)."""
        real = self._ns(namespace)
        return ["ip", "netns", "exec", real, *command] if real else list(command)

    def run(self, namespace: str | None, *command: str, check: bool = True,
            timeout: float = COMMAND_TIMEOUT, input: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        """Run a command inside a namespace (None: here)."""
        return run(self.exec_args(namespace, *command), check=check, timeout=timeout,
                   input=input)

    def inside(self, namespace: str) -> contextlib.AbstractContextManager[None]:
        """Move the calling thread into a lab namespace for a ``with`` block."""
        return inside_netns(f"/run/netns/{self.namespace(namespace)}")

    # -- building -----------------------------------------------------------------------

    def _note(self) -> None:
        if self.state_file is not None:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.state_file.with_suffix(".tmp")
            temporary.write_text(self.record.to_json(), encoding="utf-8")
            temporary.replace(self.state_file)

    def up(self) -> Lab:
        """Build the topology; on any failure (or Ctrl-C) remove what was made, then raise."""
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def _build(self) -> None:
        topology = self.topology
        self._note()
        for namespace in topology.namespaces:
            real = self.prefix + namespace.name
            # On the record first: an interruption may land as soon as it exists.
            self.record.namespaces.append(real)
            self._note()
            run(["ip", "netns", "add", real])
            self._ip(namespace.name, "link", "set", "lo", "up")
            if namespace.forwarding:
                for key in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
                    self.run(namespace.name, "sysctl", "-qw", f"{key}=1")
        for link in topology.links:
            for end in (link.end, link.peer):
                if end.namespace is None:
                    self.record.links.append(self.prefix + end.name)
            self._note()
            command = ["ip", "link", "add", *self._end_args(link.end), "type", "veth",
                       "peer", *self._end_args(link.peer)]
            run(command)
            for end in (link.end, link.peer):
                self._configure(end, link.mtu)
        for route in topology.routes:
            args = ["route", "add", route.to]
            if route.via:
                args += ["via", route.via]
            if route.dev:
                args += ["dev", route.dev if route.namespace else self.prefix + route.dev]
            self._ip(route.namespace, *args)

    def _end_args(self, end: End) -> list[str]:
        args = ["name", self.interface(end.name, end.namespace)]
        if end.namespace is not None:
            args += ["netns", self.prefix + end.namespace]
        if end.mac:
            args += ["address", end.mac]
        return args

    def _configure(self, end: End, mtu: int | None) -> None:
        name = self.interface(end.name, end.namespace)
        if not end.ipv6:
            # The slash form: an interface name may hold dots, which sysctl reads as separators.
            self.run(end.namespace, "sysctl", "-qw", f"net/ipv6/conf/{name}/disable_ipv6=1")
        if mtu is not None:
            self._ip(end.namespace, "link", "set", "dev", name, "mtu", str(mtu))
        if not end.offloads:
            self.run(end.namespace, "ethtool", "-K", name, "tx", "off", "tso", "off", "gso",
                     "off", "gro", "off")
        for address in end.addresses:
            self._ip(end.namespace, "address", "add", address, "dev", name)
        self._ip(end.namespace, "link", "set", "dev", name, "up")

    # -- removing -----------------------------------------------------------------------

    def down(self) -> list[str]:
        """Remove everything on the record; the problems met (already gone is none)."""
        with signals_held():
            problems = remove(self.record)
            if self.state_file is not None and not problems:
                self.state_file.unlink(missing_ok=True)
        return problems

    # -- as a context manager -----------------------------------------------------------

    def __enter__(self) -> Lab:
        if threading.current_thread() is threading.main_thread():
            self._previous_term = signal.signal(signal.SIGTERM, _terminated)
        try:
            return self.up()
        except BaseException:
            self._restore_term()
            raise

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        try:
            self.down()
        finally:
            self._restore_term()

    def _restore_term(self) -> None:
        if self._previous_term is not None:
            signal.signal(signal.SIGTERM, self._previous_term)
            self._previous_term = None


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise LabInterrupted(f"signal {signum}: removing the lab")


def _exists_link(name: str) -> bool:
    return run(["ip", "link", "show", "dev", name], check=False).returncode == 0


def _exists_namespace(name: str) -> bool:
    return Path(f"/run/netns/{name}").exists()


def remove(record: Record) -> list[str]:
    """Remove a record's links and namespaces; what could not be removed, as messages."""
    problems = []
    for name in record.links:
        if _exists_link(name):
            done = run(["ip", "link", "del", "dev", name], check=False)
            if done.returncode != 0 and _exists_link(name):
                problems.append(f"link {name}: {done.stderr.strip()}")
    for name in record.namespaces:
        if _exists_namespace(name):
            done = run(["ip", "netns", "del", name], check=False)
            if done.returncode != 0 and _exists_namespace(name):
                problems.append(f"namespace {name}: {done.stderr.strip()}")
    return problems


# ---------------------------------------------------------------- portico lab
HELP = """\
Build a lab of network namespaces and veth pairs from a topology file, for
trying live ports: tenant and uplink namespaces, each joined by a veth pair to
the namespace you run in, where the gateway binds. `up` records what it makes
in a state file (default directory /run/portico/lab, or PORTICO_LAB_STATE),
and removes everything again if any step fails or is interrupted; `down`
removes what `up` made, also after a crash.
"""

EXAMPLES = """\
examples:
  portico lab up examples/lab-two-tenants.yaml
  ip netns exec tenant-a ping -c 3 10.0.0.1      # once a gateway answers there
  portico lab down examples/lab-two-tenants.yaml
  portico lab up examples/lab-two-tenants.yaml --prefix t1-   # a second copy, names t1-...
  portico lab down                               # every lab on record
  portico lab show examples/lab-two-tenants.yaml --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="lab_command", metavar="ACTION", required=True)
    up = sub.add_parser("up", help="build a topology (removed again if anything fails)",
                        description="Build the namespaces, veth pairs, addresses and routes "
                        "of TOPOLOGY and leave them up.", epilog=EXAMPLES,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    up.add_argument("topology", help="a topology file (YAML)")
    down = sub.add_parser("down", help="remove a lab (or, without TOPOLOGY, every lab on record)",
                          description="Remove what `portico lab up` made, by its state file; "
                          "without a state file, whatever the topology names.",
                          epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    down.add_argument("topology", nargs="?", help="a topology file (YAML)")
    show = sub.add_parser("show", help="print the topology as the lab would build it",
                          epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    show.add_argument("topology", help="a topology file (YAML)")
    show.add_argument("--json", action="store_true", help="print JSON")
    for action in (up, down, show):
        action.add_argument("--prefix", default="", metavar="TEXT",
                            help="put TEXT in front of namespace and host-side interface names")
        action.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                            help=f"where state files live (default {STATE_DIR})")


def run_command(args: argparse.Namespace) -> int:
    try:
        if args.lab_command == "up":
            return _cli_up(args)
        if args.lab_command == "down":
            return _cli_down(args)
        return _cli_show(args)
    except (TopologyError, OSError) as error:
        print(f"portico lab: {error}", file=sys.stderr)
        return 2 if isinstance(error, TopologyError) else 1


def _cli_up(args: argparse.Namespace) -> int:
    topology = load_topology(args.topology)
    name = args.prefix + topology.name
    path = state_path(name, args.state_dir)
    if path.exists():
        print(f"portico lab: {name} is already up (state {path}); "
              f"run `portico lab down {args.topology}` first", file=sys.stderr)
        return 1
    lab = Lab(topology, prefix=args.prefix, state_file=path)
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        lab.up()
    except LabError as error:
        print(f"portico lab: {error}; removed what was made", file=sys.stderr)
        return 1
    except LabInterrupted:
        print("portico lab: terminated; removed what was made", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"lab {name} up: {len(lab.record.namespaces)} namespaces "
          f"({', '.join(lab.record.namespaces)}), host links: {', '.join(lab.record.links)}")
    print(f"state: {path}")
    return 0


def _cli_down(args: argparse.Namespace) -> int:
    records: list[tuple[Record, Path | None]] = []
    if args.topology:
        topology = load_topology(args.topology)
        path = state_path(args.prefix + topology.name, args.state_dir)
        if path.exists():
            records.append((Record.from_json(path.read_text(encoding="utf-8")), path))
        else:  # no record: remove whatever this topology would have made
            lab = Lab(topology, prefix=args.prefix)
            record = lab.record
            record.namespaces = [args.prefix + n.name for n in topology.namespaces]
            record.links = [args.prefix + e.name for link in topology.links
                            for e in (link.end, link.peer) if e.namespace is None]
            records.append((record, None))
    else:
        directory = args.state_dir or STATE_DIR
        for path in sorted(directory.glob("*.json")) if directory.exists() else []:
            records.append((Record.from_json(path.read_text(encoding="utf-8")), path))
        if not records:
            print("no lab on record")
            return 0
    failed = False
    for record, recorded in records:
        with signals_held():
            problems = remove(record)
            if recorded is not None and not problems:
                recorded.unlink(missing_ok=True)
        for problem in problems:
            print(f"portico lab: {record.name}: {problem}", file=sys.stderr)
        failed = failed or bool(problems)
        if not problems:
            print(f"lab {record.name} down")
    return 1 if failed else 0


def _cli_show(args: argparse.Namespace) -> int:
    topology = load_topology(args.topology)
    lab = Lab(topology, prefix=args.prefix)
    plan = {
        "name": args.prefix + topology.name,
        "namespaces": [lab.namespace(n.name) for n in topology.namespaces],
        "links": [
            {"end": {"name": lab.interface(link.end.name, link.end.namespace),
                     "namespace": lab._ns(link.end.namespace),
                     "addresses": list(link.end.addresses)},
             "peer": {"name": lab.interface(link.peer.name, link.peer.namespace),
                      "namespace": lab._ns(link.peer.namespace),
                      "addresses": list(link.peer.addresses)}}
            for link in topology.links],
    }
    if args.json:
        print(json.dumps(plan, indent=2))
        return 0
    print(f"lab {plan['name']}: namespaces {', '.join(plan['namespaces']) or '(none)'}")

    def side(end: dict[str, Any]) -> str:
        return " ".join([f"{end['namespace'] or '(host)'}/{end['name']}", *end["addresses"]])

    for link in plan["links"]:
        print(f"  {side(link['end'])}  <->  {side(link['peer'])}")
    return 0


__all__ = [
    "End",
    "Lab",
    "LabError",
    "LabInterrupted",
    "Link",
    "Namespace",
    "Record",
    "Route",
    "Topology",
    "TopologyError",
    "inside_netns",
    "load_topology",
    "parse_topology",
    "remove",
    "run",
    "signals_held",
]
