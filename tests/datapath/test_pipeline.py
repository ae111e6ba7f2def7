"""The pipeline: graph checks, dispatch through stages, counters, drops and traces."""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from portico import drops
from portico.batch import Batch
from portico.datapath.pipeline import DONE, Decisions, Pipeline, PipelineError
from portico.datapath.stages.parse import parse

MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


class ToyDrop(IntEnum):
    UDP_FORBIDDEN = 250


drops.register("toy", ToyDrop)


class ParseStage:
    NAME: ClassVar[str] = "parse"
    NEXT: ClassVar[tuple[str, ...]] = ("by-protocol",)
    DROPS = None

    def process(self, batch: Batch, rows: np.ndarray, decision: np.ndarray,
                decided: Decisions) -> None:
        parse(batch)
        decision[:] = 0


class ByProtocol:
    NAME: ClassVar[str] = "by-protocol"
    NEXT: ClassVar[tuple[str, ...]] = ("tcp-out", "udp-filter")
    DROPS = None

    def process(self, batch: Batch, rows: np.ndarray, decision: np.ndarray,
                decided: Decisions) -> None:
        proto = batch.meta["protocol"][rows]
        decision[:] = np.where(proto == 6, 0, np.where(proto == 17, 1, DONE))


class TcpOut:
    NAME: ClassVar[str] = "tcp-out"
    NEXT: ClassVar[tuple[str, ...]] = ()
    DROPS = None

    def process(self, batch: Batch, rows: np.ndarray, decision: np.ndarray,
                decided: Decisions) -> None:
        batch.meta["out_port"][rows] = 7
        decision[:] = DONE


class UdpFilter:
    NAME: ClassVar[str] = "udp-filter"
    NEXT: ClassVar[tuple[str, ...]] = ("tcp-out",)  # DNS is let through by the same door
    DROPS = ToyDrop

    def process(self, batch: Batch, rows: np.ndarray, decision: np.ndarray,
                decided: Decisions) -> None:
        dns = batch.meta["dport"][rows] == 53
        batch.meta["drop"][rows[~dns]] = ToyDrop.UDP_FORBIDDEN
        decision[:] = np.where(dns, 0, DONE)


def toy() -> Pipeline:
    return Pipeline([TcpOut(), UdpFilter(), ParseStage(), ByProtocol()], entry="parse")


def traffic() -> Batch:
    packets = [
        Ether(**MACS) / IP() / TCP(dport=80),
        Ether(**MACS) / IP() / UDP(dport=53),
        Ether(**MACS) / IP() / UDP(dport=123),
        Ether(**MACS) / IP() / ICMP(),
        bytes(Ether(**MACS) / IP() / TCP())[:20],  # truncated: parse drops it
    ]
    return Batch.from_packets([bytes(p) for p in packets])


def test_packets_take_their_paths() -> None:
    pipeline = toy()
    batch = traffic()
    pipeline.run(batch)
    meta = batch.meta[: batch.count]
    assert list(meta["out_port"]) == [7, 7, -1, -1, -1]
    assert [drops.name(d) if d else None for d in meta["drop"]] == [
        None, None, "udp-forbidden", None, "truncated-ipv4"]
    counters = pipeline.counters
    assert counters["parse"].packets == 5 and counters["parse"].drops == {"truncated-ipv4": 1}
    assert counters["by-protocol"].packets == 4
    assert counters["udp-filter"].packets == 2
    assert counters["udp-filter"].drops == {"udp-forbidden": 1}
    assert counters["tcp-out"].packets == 2 and counters["tcp-out"].calls == 1  # once per batch
    assert [line.split()[0] for line in pipeline.runtime().splitlines()[1:]] == [
        "parse", "by-protocol", "udp-filter", "tcp-out"]


def test_traced_packets_leave_a_line_per_stage() -> None:
    pipeline = toy()
    batch = traffic()
    batch.meta["trace"][[1, 2]] = 1
    pipeline.run(batch)
    assert [(t.row, t.stage, t.outcome) for t in pipeline.trace] == [
        (1, "parse", "by-protocol"), (2, "parse", "by-protocol"),
        (1, "by-protocol", "udp-filter"), (2, "by-protocol", "udp-filter"),
        (1, "udp-filter", "tcp-out"), (2, "udp-filter", "drop: udp-forbidden"),
        (1, "tcp-out", "done"),
    ]


def test_bad_graphs_are_refused_with_names() -> None:
    class Loop(TcpOut):
        NAME = "loop"
        NEXT = ("udp-filter",)

    class LoopBack(UdpFilter):
        NAME = "udp-filter"
        NEXT = ("loop",)

    with pytest.raises(PipelineError, match="cycle: loop -> udp-filter -> loop"):
        Pipeline([Loop(), LoopBack()], entry="loop")
    with pytest.raises(PipelineError, match=r"stages.by-protocol.next: no stage named 'tcp-out'"):
        Pipeline([ParseStage(), ByProtocol()], entry="parse")
    with pytest.raises(PipelineError, match="two stages are named 'parse'"):
        Pipeline([ParseStage(), ParseStage()], entry="parse")
    with pytest.raises(PipelineError, match="entry: no stage named 'nope'"):
        Pipeline([TcpOut()], entry="nope")
