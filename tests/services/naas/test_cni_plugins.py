"""portico-cni as the IPAM plugin of the reference ``ptp`` and ``bridge`` plugins, for real.

Debian's containernetworking-plugins (``/usr/lib/cni``, installed by ``make
system-deps``) are run exactly as a runtime runs them: the CNI_* variables,
the network configuration on stdin, ``CNI_PATH`` holding a directory with
``portico-cni`` and the plugins' own. They create a veth pair whose container
end lands in a network namespace the test made, with the address they got
from portico-cni, which got it from the NaaS daemon. The "host" side is a
namespace of its own too, so the plugins' host changes (veths, routes,
``ip_forward``) never touch the machine's; every namespace is deleted at the
end, also when a test fails.

What is checked is what the kernel says (``ip -n NS -j addr``, ``ip route``),
beside what the plugins answered and what the daemon holds: two pods get the
same shared address on their own veths with different port blocks; DEL removes
the veth and releases the allocation, and leaves the other pod alone.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from portico.services.naas.allocator import Allocator, open_allocator
from portico.services.naas.pools import BlockLayout, parse_pool
from portico.services.naas.server import serving

PLUGINS = Path("/usr/lib/cni")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or not (PLUGINS / "ptp").exists(),
    reason="needs root, iproute2 and the reference CNI plugins "
           "(apt-get install containernetworking-plugins)")


@pytest.fixture
def namespace() -> Iterator[Callable[[], str]]:
    """Makes network namespaces (unique names); deletes every one at the end."""
    made: list[str] = []

    def make() -> str:
        name = f"pcni-{secrets.token_hex(4)}"
        subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
        made.append(name)
        return name

    yield make
    for name in made:
        subprocess.run(["ip", "netns", "delete", name], timeout=30, check=False)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Allocator, Path]]:
    allocator = open_allocator(f"sqlite:{tmp_path / 'naas.db'}",
                               [parse_pool("media=198.51.100.0/29", BlockLayout(16384))])
    with serving(allocator, tmp_path / "naas.sock") as path:
        yield allocator, path
    allocator.close()


def run_plugin(plugin: str, command: str, network: dict[str, Any], *, host: str, pod: str,
               container: str, cni_path: Path) -> tuple[int, dict[str, Any] | None, str]:
    """``plugin`` run in the ``host`` namespace as a runtime runs it; (status, JSON, stderr)."""
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "CNI_COMMAND": command, "CNI_CONTAINERID": container,
           "CNI_NETNS": f"/var/run/netns/{pod}", "CNI_IFNAME": "eth0",
           "CNI_PATH": f"{cni_path}:{PLUGINS}",
           "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=voice;K8S_POD_NAME={container}"}
    run = subprocess.run(["ip", "netns", "exec", host, str(PLUGINS / plugin)],
                         input=json.dumps(network).encode(), env=env, capture_output=True,
                         timeout=120)
    out = run.stdout.decode().strip()
    return run.returncode, json.loads(out) if out else None, run.stderr.decode()


def addresses(namespace: str, device: str = "eth0") -> list[str]:
    """The IPv4 addresses on ``device`` in ``namespace``, as the kernel says."""
    shown = subprocess.run(["ip", "-n", namespace, "-j", "-4", "addr", "show", "dev", device],
                           capture_output=True, text=True, timeout=30)
    if shown.returncode != 0:
        return []
    return [f"{a['local']}/{a['prefixlen']}" for link in json.loads(shown.stdout)
            for a in link.get("addr_info", [])]


def links(namespace: str) -> list[str]:
    shown = subprocess.run(["ip", "-n", namespace, "-j", "link"], capture_output=True,
                           text=True, timeout=30, check=True)
    return [link["ifname"] for link in json.loads(shown.stdout)]


def has_link(namespace: str, device: str) -> bool:
    return subprocess.run(["ip", "-n", namespace, "link", "show", device],
                          capture_output=True, timeout=30).returncode == 0


def default_route(namespace: str) -> str:
    return subprocess.run(["ip", "-n", namespace, "route", "show", "default"],
                          capture_output=True, text=True, timeout=30).stdout.strip()


def network(kind: str, socket_path: Path, **extra: Any) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "media", "type": kind, **extra,
            "ipam": {"type": "portico-cni", "socket": str(socket_path), "pool": "media"}}


def test_ptp_gives_two_pods_the_shared_address_and_del_releases_it(
        namespace: Callable[[], str], daemon: tuple[Allocator, Path], cni_path: Path,
        disjoint: Callable) -> None:
    allocator, socket_path = daemon
    host, pods = namespace(), [namespace(), namespace()]
    config = network("ptp", socket_path)
    results = []
    for i, pod in enumerate(pods):
        status, result, stderr = run_plugin("ptp", "ADD", config, host=host, pod=pod,
                                            container=f"pod-{i}", cni_path=cni_path)
        assert status == 0, f"ptp ADD failed: {result} {stderr}"
        assert result is not None
        results.append(result)
    for pod, result in zip(pods, results, strict=True):
        assert addresses(pod) == ["198.51.100.2/29"]  # the kernel has it on the veth
        assert default_route(pod) == "default via 198.51.100.1 dev eth0"
        (ip,) = result["ips"]
        assert ip["address"] == "198.51.100.2/29" and ip["gateway"] == "198.51.100.1"
        sandbox = [i for i in result["interfaces"] if i.get("sandbox")]
        assert sandbox == [{"name": "eth0", "mac": sandbox[0]["mac"],
                            "sandbox": f"/var/run/netns/{pod}"}]
    held = {a.owner.container_id: a for a in allocator.allocations()}
    assert set(held) == {"pod-0", "pod-1"}
    assert {str(a.address) for a in held.values()} == {"198.51.100.2"}
    assert held["pod-0"].owner.name == "pod-0" and held["pod-0"].owner.network == "media"
    assert disjoint((str(a.address), a.ranges) for a in held.values()) == 2
    host_veths = [name for name in links(host) if name.startswith("veth")]
    assert len(host_veths) == 2  # ptp's host ends, each with the gateway as a /32
    assert all(addresses(host, veth) == ["198.51.100.1/32"] for veth in host_veths)

    check = run_plugin("ptp", "CHECK", {**config, "prevResult": results[0]}, host=host,
                       pod=pods[0], container="pod-0", cni_path=cni_path)
    assert check[:2] == (0, None), check

    status, answer, stderr = run_plugin("ptp", "DEL", config, host=host, pod=pods[0],
                                        container="pod-0", cni_path=cni_path)
    assert (status, answer) == (0, None), stderr
    assert not has_link(pods[0], "eth0")
    assert [a.owner.container_id for a in allocator.allocations()] == ["pod-1"]
    assert addresses(pods[1]) == ["198.51.100.2/29"]  # the other pod keeps its address

    status, _, stderr = run_plugin("ptp", "DEL", config, host=host, pod=pods[1],
                                   container="pod-1", cni_path=cni_path)
    assert status == 0, stderr
    assert allocator.allocations() == [] and not has_link(pods[1], "eth0")


def test_bridge_puts_the_allocated_address_on_the_pod(
        namespace: Callable[[], str], daemon: tuple[Allocator, Path], cni_path: Path) -> None:
    allocator, socket_path = daemon
    host, pod = namespace(), namespace()
    bridge = f"pcbr{secrets.token_hex(3)}"
    config = network("bridge", socket_path, bridge=bridge, isGateway=True)
    status, result, stderr = run_plugin("bridge", "ADD", config, host=host, pod=pod,
                                        container="bridged", cni_path=cni_path)
    assert status == 0, f"bridge ADD failed: {result} {stderr}"
    assert result is not None and result["ips"][0]["address"] == "198.51.100.2/29"
    assert addresses(pod) == ["198.51.100.2/29"]
    assert default_route(pod).startswith("default via 198.51.100.1 dev eth0")
    assert addresses(host, bridge) == ["198.51.100.1/29"]  # the gateway, on the bridge
    (held,) = allocator.allocations()
    assert held.owner.container_id == "bridged" and held.ranges == ((1024, 17407),)

    status, _, stderr = run_plugin("bridge", "DEL", config, host=host, pod=pod,
                                   container="bridged", cni_path=cni_path)
    assert status == 0, stderr
    assert not has_link(pod, "eth0") and allocator.allocations() == []
