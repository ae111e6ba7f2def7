"""portico-cni run the way a container runtime runs it: an executable found in CNI_PATH, the
CNI_* variables in its environment, the network configuration on stdin.

Every call here is a real process (the ``portico-cni`` script of the
``cni_path`` fixture) talking to a real daemon on a Unix socket. The first
tests walk a pod through ADD, CHECK, DEL, GC and STATUS; the rest feed bad
input and check the answer is the spec's error object (``cniVersion``,
``code``, ``msg``, ``details``), on stdout, with a non-zero exit status and the
spec's code, and that the message names what is wrong.
"""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from portico.services.naas.allocator import Allocator, open_allocator
from portico.services.naas.pools import BlockLayout, parse_pool
from portico.services.naas.server import serving

ROOT = Path(__file__).resolve().parents[3]


class Daemon:
    def __init__(self, allocator: Allocator, socket_path: Path) -> None:
        self.allocator = allocator
        self.socket = socket_path


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    allocator = open_allocator(f"sqlite:{tmp_path / 'naas.db'}",
                               [parse_pool("media=198.51.100.0/29", BlockLayout(16384)),
                                parse_pool("tiny=203.0.113.9/32", BlockLayout(32256))])
    with serving(allocator, tmp_path / "naas.sock") as path:
        yield Daemon(allocator, path)
    allocator.close()


def config(daemon: Daemon, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": "media-net", "type": "portico-cni",
            "socket": str(daemon.socket), "pool": "media", **extra}


def cni(cni_path: Path, command: str | None, stdin: bytes | dict[str, Any], *,
        container: str | None = "c0ffee01", netns: str | None = "/var/run/netns/pod",
        ifname: str | None = "eth0", path: bool = True, args: str = ""
        ) -> tuple[int, dict[str, Any] | None]:
    """Run portico-cni as a runtime does; (exit status, the JSON it printed or None)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for name, value in (("CNI_COMMAND", command), ("CNI_CONTAINERID", container),
                        ("CNI_NETNS", netns), ("CNI_IFNAME", ifname),
                        ("CNI_PATH", f"{cni_path}:/usr/lib/cni" if path else None),
                        ("CNI_ARGS", args or None)):
        if value is not None:
            env[name] = value
    data = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
    run = subprocess.run([str(cni_path / "portico-cni")], input=data, env=env,
                         capture_output=True, timeout=60)
    out = run.stdout.decode().strip()
    return run.returncode, json.loads(out) if out else None


def assert_cni_error(answer: tuple[int, dict[str, Any] | None], code: int, *words: str,
                     version: str = "1.1.0") -> dict[str, Any]:
    status, error = answer
    assert status != 0 and error is not None
    assert set(error) == {"cniVersion", "code", "msg", "details"}, error
    assert error["code"] == code and error["cniVersion"] == version, error
    for word in words:
        assert word in error["msg"], error
    return error


# ---------------------------------------------------------------- a pod's life
def test_add_check_del_as_a_runtime_calls_them(cni_path: Path, daemon: Daemon) -> None:
    status, result = cni(cni_path, "ADD", config(daemon),
                         args="IgnoreUnknown=1;K8S_POD_NAMESPACE=voice;K8S_POD_NAME=relay-0")
    assert status == 0 and result is not None
    assert result["cniVersion"] == "1.0.0"
    assert result["ips"] == [{"address": "198.51.100.2/29", "gateway": "198.51.100.1"}]
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "198.51.100.1"}]
    assert "interfaces" not in result  # an IPAM result: no interface created
    assert result["portico"]["ports"]["ranges"] == [[1024, 17407]]
    assert result["portico"]["pool"] == "media"
    held = daemon.allocator.get("c0ffee01")
    assert held is not None and held.owner.namespace == "voice"
    assert held.owner.name == "relay-0" and held.owner.network == "media-net"

    assert cni(cni_path, "ADD", config(daemon)) == (0, result)  # the same, asked again

    assert cni(cni_path, "CHECK", config(daemon, prevResult=result)) == (0, None)
    wrong = {**result, "ips": [{"address": "10.0.0.9/24"}]}
    assert_cni_error(cni(cni_path, "CHECK", config(daemon, prevResult=wrong)), 102,
                     "prevResult.ips: 10.0.0.9/24, not the allocated 198.51.100.2/29",
                     version="1.0.0")

    assert cni(cni_path, "DEL", config(daemon), netns=None) == (0, None)
    assert daemon.allocator.get("c0ffee01") is None
    assert cni(cni_path, "DEL", config(daemon)) == (0, None)  # DEL again: still success
    assert_cni_error(cni(cni_path, "CHECK", config(daemon, prevResult=result)), 101,
                     "c0ffee01", version="1.0.0")


def test_two_pods_share_the_address_with_their_own_ports(cni_path: Path,
                                                         daemon: Daemon) -> None:
    results = [cni(cni_path, "ADD", config(daemon), container=f"pod{i}")[1] for i in range(2)]
    assert all(r is not None for r in results)
    assert [r["ips"][0]["address"] for r in results] == ["198.51.100.2/29"] * 2  # type: ignore
    assert [r["portico"]["ports"]["ranges"] for r in results] == [  # type: ignore
        [[1024, 17407]], [[17408, 33791]]]


def test_older_spec_versions_get_their_result_format(cni_path: Path, daemon: Daemon) -> None:
    status, result = cni(cni_path, "ADD", config(daemon, version="0.4.0"))
    assert status == 0 and result is not None and result["cniVersion"] == "0.4.0"
    assert result["ips"] == [{"address": "198.51.100.2/29", "gateway": "198.51.100.1",
                              "version": "4"}]


def test_version(cni_path: Path) -> None:
    status, answer = cni(cni_path, "VERSION", {"cniVersion": "1.0.0"}, container=None,
                         netns=None, ifname=None, path=False)
    assert status == 0 and answer == {
        "cniVersion": "1.0.0",
        "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


def test_gc_releases_attachments_not_listed(cni_path: Path, daemon: Daemon) -> None:
    for container in ("alive", "dead"):
        assert cni(cni_path, "ADD", config(daemon, version="1.1.0"), container=container)[0] == 0
    gc = config(daemon, version="1.1.0", **{"cni.dev/valid-attachments": [
        {"containerID": "alive", "ifname": "eth0"}]})
    assert cni(cni_path, "GC", gc, container=None, netns=None, ifname=None) == (0, None)
    assert [a.owner.container_id for a in daemon.allocator.allocations()] == ["alive"]
    assert_cni_error(cni(cni_path, "GC", config(daemon)), 1, "GC needs CNI 1.1.0",
                     version="1.0.0")


def test_status(cni_path: Path, daemon: Daemon, tmp_path: Path) -> None:
    tiny = config(daemon, version="1.1.0", pool="tiny")
    assert cni(cni_path, "STATUS", tiny) == (0, None)
    for container in ("a", "b"):
        cni(cni_path, "ADD", tiny, container=container)
    assert_cni_error(cni(cni_path, "STATUS", tiny), 50, "pool tiny is exhausted")
    nobody = config(daemon, version="1.1.0", socket=str(tmp_path / "nobody.sock"))
    assert_cni_error(cni(cni_path, "STATUS", nobody), 50, "does not answer")


def test_the_console_script_is_declared() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["portico-cni"] == "portico.services.naas.cni:main"


# ---------------------------------------------------------------- bad input
def test_missing_cni_command(cni_path: Path, daemon: Daemon) -> None:
    assert_cni_error(cni(cni_path, None, config(daemon)), 4, "CNI_COMMAND")


def test_unknown_command(cni_path: Path, daemon: Daemon) -> None:
    error = assert_cni_error(cni(cni_path, "ATTACH", config(daemon)), 4,
                             "CNI_COMMAND: unknown command 'ATTACH'")
    assert "ADD" in error["details"]


def test_missing_container_id(cni_path: Path, daemon: Daemon) -> None:
    assert_cni_error(cni(cni_path, "ADD", config(daemon), container=None), 4,
                     "CNI_CONTAINERID: missing environment variable for ADD")
    assert daemon.allocator.allocations() == []


def test_every_missing_variable_is_named(cni_path: Path, daemon: Daemon) -> None:
    assert_cni_error(cni(cni_path, "ADD", config(daemon), container=None, netns=None,
                         ifname=None, path=False), 4,
                     "CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_PATH: missing environment "
                     "variables for ADD")
    assert_cni_error(cni(cni_path, "DEL", config(daemon), ifname=None), 4, "CNI_IFNAME")


def test_a_bad_container_id_or_interface(cni_path: Path, daemon: Daemon) -> None:
    assert_cni_error(cni(cni_path, "ADD", config(daemon), container="../etc"), 4,
                     "CNI_CONTAINERID: '../etc' is not a container ID", version="1.0.0")
    assert_cni_error(cni(cni_path, "ADD", config(daemon), ifname="eth0:1"), 4,
                     "CNI_IFNAME: 'eth0:1' is not an interface name", version="1.0.0")


@pytest.mark.parametrize("stdin", [b"{\"cniVersion\": \"1.0.0\",", b"", b"\xff\xfe"])
def test_malformed_json(cni_path: Path, stdin: bytes) -> None:
    error = assert_cni_error(cni(cni_path, "ADD", stdin), 6,
                             "the network configuration on stdin is not JSON")
    assert error["details"]


def test_json_that_is_not_an_object(cni_path: Path) -> None:
    assert_cni_error(cni(cni_path, "ADD", b"[1, 2]"), 6, "not a JSON object")


def test_a_missing_or_unsupported_version(cni_path: Path, daemon: Daemon) -> None:
    no_version = config(daemon)
    del no_version["cniVersion"]
    assert_cni_error(cni(cni_path, "ADD", no_version), 7, "cniVersion: missing")
    assert_cni_error(cni(cni_path, "ADD", config(daemon, version="0.2.0")), 1,
                     "incompatible CNI version '0.2.0'", "1.1.0")
    assert_cni_error(cni(cni_path, "CHECK", config(daemon, version="0.3.1",
                                                   prevResult={})), 1, "CHECK needs CNI 0.4.0",
                     version="0.3.1")


def test_bad_settings_name_the_field(cni_path: Path, daemon: Daemon) -> None:
    ipam = {"cniVersion": "1.0.0", "name": "n", "type": "ptp",
            "ipam": {"type": "portico-cni", "socket": str(daemon.socket), "subnet": "x"}}
    assert_cni_error(cni(cni_path, "ADD", ipam), 2, "ipam.subnet: unsupported field",
                     '"x"', version="1.0.0")
    ipam["ipam"] = {"type": "portico-cni", "socket": str(daemon.socket), "pool": "nope"}
    assert_cni_error(cni(cni_path, "ADD", ipam), 7, "ipam.pool: no pool 'nope'",
                     version="1.0.0")
    assert_cni_error(cni(cni_path, "ADD", config(daemon, timeout=-1)), 7, "timeout",
                     version="1.0.0")
    assert_cni_error(cni(cni_path, "ADD", {"cniVersion": "1.0.0", "type": "portico-cni"}),
                     7, "name:", version="1.0.0")
    assert_cni_error(cni(cni_path, "ADD", {"cniVersion": "1.0.0", "name": "n",
                                           "type": "bridge"}), 7, "ipam:", version="1.0.0")


def test_no_daemon_is_try_again_later(cni_path: Path, tmp_path: Path) -> None:
    nobody = {"cniVersion": "1.0.0", "name": "n", "type": "portico-cni",
              "socket": str(tmp_path / "nobody.sock")}
    error = assert_cni_error(cni(cni_path, "ADD", nobody), 11, "does not answer",
                             version="1.0.0")
    assert "nobody.sock" in error["msg"]
    assert_cni_error(cni(cni_path, "DEL", nobody), 11, version="1.0.0")


def test_exhaustion_is_a_plugin_error_naming_the_pool(cni_path: Path, daemon: Daemon) -> None:
    tiny = config(daemon, pool="tiny")
    for container in ("a", "b"):
        assert cni(cni_path, "ADD", tiny, container=container)[0] == 0
    assert_cni_error(cni(cni_path, "ADD", tiny, container="c"), 100,
                     "pool tiny is exhausted: all 2 slots", version="1.0.0")
