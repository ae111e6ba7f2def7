"""naas-nat: every contender runs on a tiny size, checks itself, and reports its shape.

No timing assertions: what is held is that the workload runs end to end (the
port-range NAT with and without policing, issue 4's NAT over the same frames,
the kernel back-end in namespaces when this machine allows), that its check
fails a run whose translation is wrong, and that the harness knows it.
"""

from __future__ import annotations

import pytest

from bench import harness, naas_nat
from bench.workloads import MismatchError
from portico.services.naas.nftables import unavailable

TINY = naas_nat.NaasNatSettings(pods=8, flows=64, packets=512, repeats=1, kernel_seconds=0.1)


def test_every_contender_runs_checked() -> None:
    entries = naas_nat.run_naas_nat(TINY)
    by_name = {e["contender"]: e for e in entries}
    assert list(by_name) == ["portnat", "portnat + policing", "nat (#4)", "nftables",
                             "kernel routing"]
    for name in ("portnat", "portnat + policing", "nat (#4)"):
        assert by_name[name]["pps"] > 0 and by_name[name]["batch"] == 256
    counted = by_name["portnat"]["counters"]
    assert counted["translated-in"] + counted["translated-out"] == 2 * 512  # two passes
    if unavailable() is None:
        for name in ("nftables", "kernel routing"):
            assert by_name[name]["delivered"] > 0
            assert by_name[name]["delivered"] <= by_name[name]["sent"]
    lines = naas_nat.format_naas_nat(entries)
    assert lines[1].startswith("naas-nat: port-range NAT")
    assert sum(line.startswith(tuple(by_name)) for line in lines) == len(entries)


def test_a_wrong_translation_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    real = naas_nat.make_table

    def shifted(traffic: naas_nat.Traffic, settings: naas_nat.NaasNatSettings, *,
                policed: bool = False) -> object:
        table = real(traffic, settings, policed=policed)
        first = table.pods()[0]
        table.remove_pod(first.address)  # its ports now belong to no one
        return table

    monkeypatch.setattr(naas_nat, "make_table", shifted)
    with pytest.raises(MismatchError, match="naas-nat \\(portnat\\)"):
        naas_nat.run_naas_nat(naas_nat.NaasNatSettings(pods=8, flows=64, packets=512,
                                                       repeats=1, kernel=False))


def test_the_harness_knows_the_workload() -> None:
    assert "naas-nat" in harness.ALL_WORKLOADS
    assert harness.QUICK.naas_nat == naas_nat.QUICK_NAAS_NAT
