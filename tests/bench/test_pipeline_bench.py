"""pipeline-hit: the workload runs, reports its shape, and refuses a datapath that is wrong."""

from __future__ import annotations

import pytest

from bench import pipeline
from bench.workloads import MismatchError

TINY = pipeline.PipelineSettings(packets=512, flows=64, batches=(64,), repeats=1,
                                 samples=(("struct", 512), ("dpkt", 64), ("scapy", 16)))


def test_tiny_run_reports_every_field() -> None:
    (entry,) = pipeline.run_pipeline(TINY)
    assert entry["name"] == "pipeline-hit" and entry["batch"] == 64
    assert entry["hit_rate"] == 1.0 and entry["pps"] > 0
    assert set(entry["peers"]) == set(entry["ratios"]) == {"struct", "dpkt", "scapy"}
    assert any("pipeline-hit" in line for line in pipeline.format_pipeline([entry]))


def test_a_wrong_packet_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    real = pipeline.nat_ports
    monkeypatch.setattr(pipeline, "nat_ports", lambda *args: real(*args) + 1)
    with pytest.raises(MismatchError, match="portico packet"):
        pipeline.run_pipeline(TINY)
