"""services.naas.cni: ``portico-cni``, the CNI plugin that asks Portico for a pod's address.

Role. A container runtime runs this executable for every pod joining a
network, as the CNI spec (1.0, 1.1; 0.3.x and 0.4.0 too) says: the command in
``CNI_COMMAND``, the pod in ``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``
and ``CNI_ARGS``, the network configuration as JSON on stdin; the result (or
an error) as JSON on stdout, the exit status non-zero on error. The plugin
holds no state: it asks the NaaS daemon (``naas.server``) over its Unix socket
and translates.

It works two ways:

* *as the network's plugin* (``"type": "portico-cni"``, settings at the top
  level): it returns the allocation and creates no interface;
* *as the IPAM plugin of another* (``"ipam": {"type": "portico-cni", ...}``
  under ``ptp`` or ``bridge``): that plugin runs this one with its own
  configuration and environment, gets an IPAM result (``ips`` without an
  interface index, ``routes``) and puts the address on the veth it creates.

Settings: ``socket`` (default ``/run/portico/naas.sock``), ``pool`` (default:
the daemon's first pool), ``timeout`` (seconds, default 10)::

    {"cniVersion": "1.0.0", "name": "media", "type": "ptp",
     "ipam": {"type": "portico-cni", "socket": "/run/portico/naas.sock", "pool": "media"}}

The ADD result carries the port block in a Portico field beside the spec's::

    {"cniVersion": "1.0.0",
     "ips": [{"address": "198.51.100.2/29", "gateway": "198.51.100.1"}],
     "routes": [{"dst": "0.0.0.0/0", "gw": "198.51.100.1"}], "dns": {},
     "portico": {"pool": "media", "address": "198.51.100.2",
                 "ports": {"kind": "block", "first": 1024, "last": 2047, "count": 1024,
                           "ranges": [[1024, 2047]], ...}, ...}}

Commands: ADD allocates (asked again for the same container and interface,
it returns the same allocation); DEL releases the attachment's allocations
(nothing to release is success); CHECK (0.4.0+) checks the allocation exists
and is the one in ``prevResult``; GC (1.1.0) releases this network's
allocations in the pool whose attachment is not in
``cni.dev/valid-attachments``; STATUS (1.1.0) fails with code 50 when the
daemon does not answer or the pool is full; VERSION lists the versions.

Errors are the spec's ``{"cniVersion", "code", "msg", "details"}`` with its
codes: 1 incompatible version, 2 unsupported field, 4 bad environment
variable (``msg`` names them), 5 I/O, 6 undecodable JSON, 7 invalid network
configuration (``msg`` names the field), 11 try again later (the daemon or
its store is unreachable), 50 not available (STATUS); and Portico's own: 100
pool exhausted, 101 no allocation (CHECK), 102 allocation differs or is held
elsewhere, 103 the daemon refused.

The module imports only the standard library and ``naas.names``: a runtime
starts it for every pod, so it must start fast.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from portico.services.naas.names import check_container_id, check_interface

PLUGIN_TYPE = "portico-cni"
SPEC_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = SPEC_VERSIONS[-1]
DEFAULT_SOCKET = "/run/portico/naas.sock"
DEFAULT_TIMEOUT = 10.0  # s for one request to the daemon

# The spec's error codes, then Portico's (100 and up are a plugin's own).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
POOL_EXHAUSTED = 100
NO_ALLOCATION = 101
ALLOCATION_DIFFERS = 102
DAEMON_REFUSED = 103

# The environment each command needs (the spec's, as libcni's skel checks them).
REQUIRED_ENVIRONMENT: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": (),
    "VERSION": (),
}
# The commands and the first spec version that has each.
SINCE = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}
SETTINGS = frozenset({"type", "socket", "pool", "timeout"})  # of an "ipam" section


class CniError(Exception):
    """A failure as the spec reports it."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def as_json(self, version: str) -> dict[str, Any]:
        return {"cniVersion": version, "code": self.code, "msg": self.msg,
                "details": self.details}


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


# ---------------------------------------------------------------- the daemon
class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("naas", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class DaemonClient:
    """HTTP/JSON to the NaaS daemon over its Unix socket, one connection a request."""

    def __init__(self, path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout

    def request(self, method: str, url: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        connection = _UnixConnection(self.path, self.timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            connection.request(method, url, body=data,
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            status, text = response.status, response.read()
        except (OSError, http.client.HTTPException) as error:
            raise CniError(TRY_AGAIN_LATER, f"the Portico NaaS daemon does not answer at "
                           f"{self.path}", f"{type(error).__name__}: {error}") from None
        finally:
            connection.close()
        try:
            answer = json.loads(text)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise CniError(DAEMON_REFUSED, f"the Portico NaaS daemon at {self.path} answered "
                           f"HTTP {status} without JSON", text[:300].decode(errors="replace"))
        return status, answer


def daemon_error(status: int, answer: dict[str, Any], where: str) -> CniError:
    """The CNI error for an error the daemon answered."""
    found = answer.get("error")
    error: dict[str, Any] = found if isinstance(found, dict) else {}
    code, message = error.get("code"), str(error.get("message", answer))
    if code == "pool_exhausted":
        return CniError(POOL_EXHAUSTED, message)
    if code == "invalid" and error.get("field") == "pool":
        return CniError(INVALID_CONFIG, f"{where}.{message}" if where else message)
    if code == "store_unavailable":
        return CniError(TRY_AGAIN_LATER, "the Portico NaaS store is unavailable", message)
    if code == "owner_conflict":
        return CniError(ALLOCATION_DIFFERS, message)
    return CniError(DAEMON_REFUSED, f"the Portico NaaS daemon refused (HTTP {status})", message)


# ---------------------------------------------------------------- input
def decode_config(raw: bytes) -> dict[str, Any]:
    """The network configuration: a JSON object (``version_of`` and ``check_network`` look
    into it)."""
    try:
        config = json.loads(raw)
    except ValueError as error:  # UnicodeDecodeError is one
        raise CniError(DECODING_FAILURE, "the network configuration on stdin is not JSON",
                       str(error)) from None
    if not isinstance(config, dict):
        raise CniError(DECODING_FAILURE, "the network configuration on stdin is not a JSON "
                       f"object (got {type(config).__name__})")
    return config


def version_of(config: dict[str, Any]) -> str:
    """The configuration's ``cniVersion``, one this plugin supports."""
    version = config.get("cniVersion")
    if version is None:
        raise CniError(INVALID_CONFIG, "cniVersion: missing from the network configuration")
    if version not in SPEC_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"incompatible CNI version {version!r}: "
                       f"portico-cni supports {', '.join(SPEC_VERSIONS)}")
    return str(version)


def check_network(config: dict[str, Any]) -> None:
    """The network's ``name`` and ``type`` are there."""
    for field in ("name", "type"):
        if not isinstance(config.get(field), str) or not config[field]:
            raise CniError(INVALID_CONFIG, f"{field}: the network configuration needs a "
                           f"non-empty string, got {config.get(field)!r}")


def settings_of(config: dict[str, Any], program: str) -> tuple[dict[str, Any], str]:
    """The plugin's settings and where they are: "" (the top level) or "ipam"."""
    settings: dict[str, Any] = config
    where = ""
    if config["type"] not in (PLUGIN_TYPE, program):
        ipam, where = config.get("ipam"), "ipam"
        if not isinstance(ipam, dict):
            raise CniError(INVALID_CONFIG, f"ipam: the network of type {config['type']!r} "
                           "has no ipam section for portico-cni")
        settings = ipam
        for key, value in settings.items():
            if key not in SETTINGS:
                raise CniError(UNSUPPORTED_FIELD, f"ipam.{key}: unsupported field "
                               f"(value {json.dumps(value)[:100]}); portico-cni knows "
                               f"{', '.join(sorted(SETTINGS))}")
    prefix = f"{where}." if where else ""
    socket_path = settings.get("socket", DEFAULT_SOCKET)
    if not isinstance(socket_path, str) or not socket_path:
        raise CniError(INVALID_CONFIG, f"{prefix}socket: expected a path, got {socket_path!r}")
    pool = settings.get("pool")
    if pool is not None and (not isinstance(pool, str) or not pool):
        raise CniError(INVALID_CONFIG, f"{prefix}pool: expected a pool name, got {pool!r}")
    timeout = settings.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise CniError(INVALID_CONFIG, f"{prefix}timeout: expected seconds, got {timeout!r}")
    return {"socket": socket_path, "pool": pool, "timeout": float(timeout)}, where


def pod_of(environ: Mapping[str, str]) -> tuple[str, str]:
    """The pod's namespace and name from ``CNI_ARGS`` (Kubernetes' K8S_POD_* keys)."""
    args = dict(pair.split("=", 1) for pair in environ.get("CNI_ARGS", "").split(";")
                if "=" in pair)
    return args.get("K8S_POD_NAMESPACE", ""), args.get("K8S_POD_NAME", "")


def attachment_of(environ: Mapping[str, str]) -> tuple[str, str]:
    try:
        container_id = check_container_id(environ["CNI_CONTAINERID"], "CNI_CONTAINERID")
        interface = check_interface(environ["CNI_IFNAME"], "CNI_IFNAME")
    except ValueError as error:
        raise CniError(INVALID_ENVIRONMENT, str(error)) from None
    return container_id, interface


def allocation_url(container_id: str, interface: str) -> str:
    return (f"/v1/allocations/{urllib.parse.quote(container_id, safe='')}/"
            f"{urllib.parse.quote(interface, safe='')}")


# ---------------------------------------------------------------- output
def result_of(allocation: dict[str, Any], version: str) -> dict[str, Any]:
    """The IPAM result of an allocation, in the spec version asked for."""
    address, gateway = allocation["address"], allocation.get("gateway")
    ip: dict[str, Any] = {"address": f"{address}/{allocation['prefix_length']}"}
    if version_tuple(version) < (1, 0, 0):
        ip["version"] = "6" if ":" in address else "4"
    routes = []
    if gateway:
        ip["gateway"] = gateway
        routes.append({"dst": "::/0" if ":" in address else "0.0.0.0/0", "gw": gateway})
    return {"cniVersion": version, "ips": [ip], "routes": routes, "dns": {},
            "portico": {"pool": allocation["pool"], "address": address,
                        "ports": allocation["ports"], "allocation": allocation["id"],
                        "key": allocation["key"]}}


# ---------------------------------------------------------------- commands
def add(config: dict[str, Any], settings: dict[str, Any], where: str,
        environ: Mapping[str, str], client: DaemonClient) -> dict[str, Any]:
    container_id, interface = attachment_of(environ)
    namespace, name = pod_of(environ)
    status, answer = client.request("PUT", allocation_url(container_id, interface), {
        "pool": settings["pool"], "namespace": namespace, "name": name,
        "network": config["name"]})
    if status not in (200, 201):
        raise daemon_error(status, answer, where)
    return result_of(answer["allocation"], config["cniVersion"])


def delete(config: dict[str, Any], settings: dict[str, Any], where: str,
           environ: Mapping[str, str], client: DaemonClient) -> None:
    container_id, interface = attachment_of(environ)
    status, answer = client.request("DELETE", allocation_url(container_id, interface))
    if status != 200:
        raise daemon_error(status, answer, where)


def check(config: dict[str, Any], settings: dict[str, Any], where: str,
          environ: Mapping[str, str], client: DaemonClient) -> None:
    container_id, interface = attachment_of(environ)
    previous = config.get("prevResult")
    if not isinstance(previous, dict):
        raise CniError(INVALID_CONFIG, "prevResult: CHECK needs the result of the ADD")
    status, answer = client.request("GET", allocation_url(container_id, interface))
    if status == 404:
        raise CniError(NO_ALLOCATION, f"container {container_id} interface {interface} holds "
                       "no Portico allocation", str(answer.get("error", "")))
    if status != 200:
        raise daemon_error(status, answer, where)
    allocation = answer["allocation"]
    want = f"{allocation['address']}/{allocation['prefix_length']}"
    ips = previous.get("ips")
    got = [ip.get("address") for ip in ips if isinstance(ip, dict)] if isinstance(ips, list) \
        else []
    if want not in got:
        raise CniError(ALLOCATION_DIFFERS, f"prevResult.ips: {', '.join(map(str, got)) or 'none'}"
                       f", not the allocated {want}")
    if settings["pool"] is not None and allocation["pool"] != settings["pool"]:
        raise CniError(ALLOCATION_DIFFERS, f"the allocation is in pool {allocation['pool']}, "
                       f"the configuration says {settings['pool']}")


def gc(config: dict[str, Any], settings: dict[str, Any], where: str,
       environ: Mapping[str, str], client: DaemonClient) -> None:
    field = ("cni.dev/valid-attachments" if "cni.dev/valid-attachments" in config
             else "cni.dev/attachments")
    listed = config.get(field, [])
    if not isinstance(listed, list):
        raise CniError(INVALID_CONFIG, f"{field}: expected a list of attachments")
    valid = []
    for i, attachment in enumerate(listed):
        if not isinstance(attachment, dict) or not isinstance(
                attachment.get("containerID"), str):
            raise CniError(INVALID_CONFIG, f"{field}[{i}]: expected "
                           '{"containerID": ..., "ifname": ...}')
        valid.append({"container_id": attachment["containerID"],
                      "interface": str(attachment.get("ifname", ""))})
    # An attachment listed without ifname keeps every interface of its container.
    containers = [a["container_id"] for a in valid if not a["interface"]]
    status, answer = client.request("POST", "/v1/gc", {
        "pool": settings["pool"], "network": config["name"], "valid_containers": containers,
        "valid_attachments": [a for a in valid if a["interface"]]})
    if status != 200:
        raise daemon_error(status, answer, where)


def status_of(config: dict[str, Any], settings: dict[str, Any], where: str,
              environ: Mapping[str, str], client: DaemonClient) -> None:
    try:
        status, answer = client.request("GET", "/v1/pools")
    except CniError as error:
        raise CniError(NOT_AVAILABLE, error.msg, error.details) from None
    if status != 200:
        raise CniError(NOT_AVAILABLE, f"the Portico NaaS daemon answered HTTP {status}",
                       json.dumps(answer)[:300])
    pools = answer.get("pools") or []
    wanted = [p for p in pools if settings["pool"] in (None, p.get("name"))][:1]
    if not wanted:
        raise CniError(NOT_AVAILABLE, f"the Portico NaaS daemon has no pool "
                       f"{settings['pool']!r}")
    if wanted[0].get("free", 0) <= 0:
        raise CniError(NOT_AVAILABLE, f"pool {wanted[0].get('name')} is exhausted "
                       f"({wanted[0].get('slots')} slots allocated)")


Command = Callable[[dict[str, Any], dict[str, Any], str, Mapping[str, str], DaemonClient],
                   "dict[str, Any] | None"]
COMMANDS: dict[str, Command] = {"ADD": add, "DEL": delete, "CHECK": check, "GC": gc,
                                "STATUS": status_of}


def execute(environ: Mapping[str, str], read_input: Callable[[], bytes], program: str = "",
            client_of: Callable[[str, float], DaemonClient] = DaemonClient
            ) -> tuple[int, dict[str, Any] | None]:
    """Run one CNI command: (exit status, JSON to print or None)."""
    version = LATEST
    try:
        command = environ.get("CNI_COMMAND", "")
        if not command:
            raise CniError(INVALID_ENVIRONMENT, "CNI_COMMAND: missing environment variable",
                           f"one of {', '.join(REQUIRED_ENVIRONMENT)}")
        if command not in REQUIRED_ENVIRONMENT:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND: unknown command {command!r}",
                           f"one of {', '.join(REQUIRED_ENVIRONMENT)}")
        missing = [name for name in REQUIRED_ENVIRONMENT[command] if not environ.get(name)]
        if missing:
            raise CniError(INVALID_ENVIRONMENT, f"{', '.join(missing)}: missing environment "
                           f"variable{'s' if len(missing) > 1 else ''} for {command}",
                           f"{command} needs {', '.join(REQUIRED_ENVIRONMENT[command])}")
        try:
            raw = read_input()
        except OSError as error:
            raise CniError(IO_FAILURE, "cannot read the network configuration from stdin",
                           str(error)) from None
        if command == "VERSION":
            return 0, version_answer(raw)
        config = decode_config(raw)
        version = version_of(config)  # errors from here on are in the configuration's version
        check_network(config)
        since = SINCE.get(command)
        if since and version_tuple(version) < version_tuple(since):
            raise CniError(INCOMPATIBLE_VERSION, f"{command} needs CNI {since} or later; the "
                           f"configuration says {version}")
        settings, where = settings_of(config, program)
        client = client_of(settings["socket"], settings["timeout"])
        return 0, COMMANDS[command](config, settings, where, environ, client)
    except CniError as error:
        return 1, error.as_json(version)


def version_answer(raw: bytes) -> dict[str, Any]:
    """VERSION: the versions supported, answered in the version asked for (or the latest)."""
    try:
        asked = json.loads(raw).get("cniVersion") if raw.strip() else None
    except (ValueError, AttributeError):
        asked = None
    return {"cniVersion": asked if asked in SPEC_VERSIONS else LATEST,
            "supportedVersions": list(SPEC_VERSIONS)}


def main() -> int:
    """``portico-cni``: one CNI command, as a runtime runs it."""
    code, output = execute(os.environ, sys.stdin.buffer.read,
                           os.path.basename(sys.argv[0] if sys.argv else ""))
    if output is not None:
        sys.stdout.write(json.dumps(output) + "\n")
        sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
