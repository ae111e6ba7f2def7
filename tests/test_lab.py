"""The namespace lab: topologies read, with errors naming the field; labs built and always removed.

What a lab made is checked with ``ip`` (and a datagram across it); that it is
gone afterwards, after a success, an exception, a failed step, SIGINT or SIGTERM,
and through the CLI's state file, by listing namespaces and links by the test's
unique prefix. Loops and waits are bounded; nothing is timed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from portico.cli import main
from portico.lab import Lab, LabError, TopologyError, load_topology, parse_topology

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lab-two-tenants.yaml"
live = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                          reason="building labs needs root and iproute2")

TWO_HOSTS = {
    "name": "pair",
    "namespaces": {"left": {}, "right": {"forwarding": True}},
    "links": [
        {"name": "x0", "namespace": "left", "addresses": ["10.66.0.1/24"], "ipv6": False,
         "peer": {"name": "y0", "namespace": "right", "addresses": ["10.66.0.2/24"],
                  "mac": "02:00:00:00:66:02", "ipv6": False}},
        {"name": "h", "addresses": ["10.67.0.1/24"], "ipv6": False,  # host side
         "peer": {"name": "y1", "namespace": "right", "addresses": ["10.67.0.2/24"]}},
    ],
    "routes": [{"namespace": "left", "to": "10.67.0.0/24", "via": "10.66.0.2"}],
}


def prefix() -> str:
    return f"pt{secrets.token_hex(3)}"


def leftovers(tag: str) -> list[str]:
    """Namespaces and host links whose names start with ``tag``."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=True, timeout=30).stdout.splitlines()
    namespaces = [line.split()[0] for line in listed if line.strip()]
    shown = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           check=True, timeout=30).stdout.splitlines()
    links = [line.split()[1].split("@")[0].rstrip(":") for line in shown]  # "7: name@peer: ..."
    return sorted(n for n in namespaces + links if n.startswith(tag))


# ---------------------------------------------------------------- the description
@pytest.mark.parametrize(("change", "field"), [
    (lambda t: t["links"][0].update(mtu=20), "links[0].mtu"),
    (lambda t: t["links"][0]["peer"].update(mac="02:00"), "links[0].peer.mac"),
    (lambda t: t["links"][0]["peer"].update(addresses=["10.66.0.300/24"]),
     "links[0].peer.addresses[0]"),
    (lambda t: t["links"][0]["peer"].update(addresses=["10.66.0.2"]),
     "links[0].peer.addresses[0]"),
    (lambda t: t["links"][1]["peer"].update(namespace="elsewhere"), "links[1].peer.namespace"),
    (lambda t: t["links"][1].update(name="a-name-far-too-long"), "links[1].name"),
    (lambda t: t["links"][1].update(colour="blue"), "links[1]: unknown key 'colour'"),
    (lambda t: t["links"][1]["peer"].update(name="y0"), "links[1].peer.name"),
    (lambda t: t["routes"][0].update(via="ten"), "routes[0].via"),
    (lambda t: t["routes"][0].pop("via"), "routes[0]: a route needs"),
    (lambda t: t["namespaces"].update({"bad name": {}}), "namespaces.bad name"),
])
def test_a_bad_topology_names_the_field(change: Callable[[dict[str, Any]], object],
                                        field: str) -> None:
    topology = yaml.safe_load(yaml.safe_dump(TWO_HOSTS))
    change(topology)
    with pytest.raises(TopologyError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_topology(topology)


def test_the_prefix_must_leave_host_names_within_15_characters() -> None:
    with pytest.raises(TopologyError, match=r"links\[1\]\.name: 'a-longer-prefix-h'"):
        Lab(TWO_HOSTS, prefix="a-longer-prefix-")


def test_the_example_topology_reads_and_fits_a_test_prefix() -> None:
    topology = load_topology(EXAMPLE)
    assert topology.name == "two-tenants"
    assert [n.name for n in topology.namespaces] == ["tenant-a", "tenant-b", "uplink"]
    assert [link.end.name for link in topology.links] == ["lab-a", "lab-b", "lab-up"]
    Lab(topology, prefix=prefix())  # raises if a name would not fit


def test_a_file_that_is_not_yaml_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("links: [\n")
    with pytest.raises(TopologyError, match="not YAML"):
        load_topology(bad)


# ---------------------------------------------------------------- building and removing
@live
def test_a_lab_is_built_as_described_and_removed_on_exit() -> None:
    tag = prefix()
    with Lab(TWO_HOSTS, prefix=tag) as lab:
        assert leftovers(tag) == sorted([f"{tag}h", f"{tag}left", f"{tag}right"])
        shown = lab.run("right", "ip", "-o", "address", "show", "dev", "y0").stdout
        assert "10.66.0.2/24" in shown
        assert "02:00:00:00:66:02" in lab.run("right", "ip", "link", "show", "y0").stdout
        assert "10.67.0.0/24 via 10.66.0.2" in lab.run("left", "ip", "route").stdout
        assert lab.run("right", "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
        assert lab.run("left", "sysctl", "-n",
                       "net.ipv6.conf.x0.disable_ipv6").stdout.strip() == "1"
        host = subprocess.run(["ip", "-o", "address", "show", "dev", f"{tag}h"],
                              capture_output=True, text=True, check=True, timeout=30).stdout
        assert "10.67.0.1/24" in host
        # A datagram from left to the right namespace's far address: addresses and route work.
        with lab.inside("right"):
            server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with lab.inside("left"):
            client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            server.bind(("10.67.0.2", 4000))
            server.settimeout(10)
            client.sendto(b"across the lab", ("10.67.0.2", 4000))
            assert server.recvfrom(100)[0] == b"across the lab"
        finally:
            server.close()
            client.close()
    assert leftovers(tag) == []


@live
def test_an_exception_inside_removes_everything() -> None:
    tag = prefix()
    with pytest.raises(RuntimeError, match="boom"), Lab(TWO_HOSTS, prefix=tag):
        assert leftovers(tag)
        raise RuntimeError("boom")
    assert leftovers(tag) == []


@live
def test_a_step_that_fails_removes_what_was_made() -> None:
    tag = prefix()
    broken = yaml.safe_load(yaml.safe_dump(TWO_HOSTS))
    broken["routes"].append({"namespace": "left", "to": "10.99.0.0/24", "via": "192.0.2.99"})
    with pytest.raises(LabError, match="route add 10.99.0.0/24"), Lab(broken, prefix=tag):
        pytest.fail("the lab should not have come up")
    assert leftovers(tag) == []


@live
def test_inside_moves_only_the_calling_thread() -> None:
    tag = prefix()
    with Lab(TWO_HOSTS, prefix=tag) as lab:
        home = os.stat("/proc/thread-self/ns/net").st_ino
        with lab.inside("left"):
            assert os.stat("/proc/thread-self/ns/net").st_ino != home
            assert "x0" in socket.if_nameindex().__repr__()
        assert os.stat("/proc/thread-self/ns/net").st_ino == home
    assert leftovers(tag) == []


@live
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_the_lab_is_up_still_removes_it(signum: int) -> None:
    tag = prefix()
    script = (
        "import sys, time\n"
        "from portico.lab import Lab\n"
        f"with Lab({TWO_HOSTS!r}, prefix={tag!r}):\n"
        "    print('up', flush=True)\n"
        "    time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "up"
        assert leftovers(tag)
        child.send_signal(signum)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
    assert child.returncode != 0
    assert leftovers(tag) == []


# ---------------------------------------------------------------- the CLI
@live
def test_cli_up_then_down_by_the_state_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                            ) -> None:
    tag = prefix()
    topology = tmp_path / "pair.yaml"
    topology.write_text(yaml.safe_dump(TWO_HOSTS))
    state = tmp_path / "state"
    try:
        assert main(["lab", "up", str(topology), "--prefix", tag, "--state-dir", str(state)]) == 0
        record = state / f"{tag}pair.json"
        assert record.exists() and f"{tag}left" in record.read_text()
        assert f"{tag}left" in leftovers(tag)
        # A second `up` of the same lab is refused while the first is on record.
        assert main(["lab", "up", str(topology), "--prefix", tag, "--state-dir",
                     str(state)]) == 1
        assert "already up" in capsys.readouterr().err
        assert main(["lab", "down", str(topology), "--prefix", tag, "--state-dir",
                     str(state)]) == 0
        assert not record.exists()
        assert leftovers(tag) == []
    finally:
        Lab(TWO_HOSTS, prefix=tag).down()


@live
def test_cli_down_without_a_topology_removes_every_lab_on_record(tmp_path: Path) -> None:
    tags = [prefix(), prefix()]
    topology = tmp_path / "pair.yaml"
    topology.write_text(yaml.safe_dump(TWO_HOSTS))
    state = tmp_path / "state"
    try:
        for tag in tags:
            assert main(["lab", "up", str(topology), "--prefix", tag, "--state-dir",
                         str(state)]) == 0
        assert main(["lab", "down", "--state-dir", str(state)]) == 0
        assert list(state.glob("*.json")) == []
        assert [leftovers(tag) for tag in tags] == [[], []]
    finally:
        for tag in tags:
            Lab(TWO_HOSTS, prefix=tag).down()


@live
def test_cli_down_after_the_state_file_was_lost_removes_by_the_topology(tmp_path: Path
                                                                         ) -> None:
    tag = prefix()
    topology = tmp_path / "pair.yaml"
    topology.write_text(yaml.safe_dump(TWO_HOSTS))
    state = tmp_path / "state"
    try:
        assert main(["lab", "up", str(topology), "--prefix", tag, "--state-dir",
                     str(state)]) == 0
        for record in state.glob("*.json"):
            record.unlink()  # as if /run had been wiped
        assert main(["lab", "down", str(topology), "--prefix", tag, "--state-dir",
                     str(state)]) == 0
        assert leftovers(tag) == []
    finally:
        Lab(TWO_HOSTS, prefix=tag).down()


@live
def test_cli_up_that_fails_leaves_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    tag = prefix()
    broken = yaml.safe_load(yaml.safe_dump(TWO_HOSTS))
    broken["routes"].append({"namespace": "left", "to": "10.99.0.0/24", "via": "192.0.2.99"})
    topology = tmp_path / "broken.yaml"
    topology.write_text(yaml.safe_dump(broken))
    state = tmp_path / "state"
    assert main(["lab", "up", str(topology), "--prefix", tag, "--state-dir", str(state)]) == 1
    assert "removed what was made" in capsys.readouterr().err
    assert leftovers(tag) == []
    assert list(state.glob("*.json")) == []


def test_cli_refuses_a_bad_topology_with_usage_status(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"links": [{"name": "x"}]}))
    assert main(["lab", "show", str(bad)]) == 2
    assert "links[0]: a link needs a 'peer' end" in capsys.readouterr().err


def test_cli_show_prints_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "show", str(EXAMPLE), "--prefix", "pt0", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"pt0tenant-a"' in out and '"pt0lab-up"' in out
