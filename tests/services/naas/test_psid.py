"""RFC 7597 port sets: the RFC's worked example, and the properties that make sharing safe.

The example is RFC 7597 section 5.1's: PSID offset a = 6, PSID length k = 8,
PSID 0x34 (so m = 2) holds 1232-1235, 2256-2259, ..., 63696-63699,
64720-64723. The properties are what the allocator relies on: the 2^k sets of
an address are disjoint, together they hold every port from 2^(16-a) up, and
``psid_of`` finds the set a port is in.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portico.services.naas.psid import PsidLayout, port_set, psid_of


def test_the_rfc_7597_example_psid_0x34_with_offset_6_and_length_8() -> None:
    runs = port_set(0x34, psid_length=8, offset=6)
    assert runs[:2] == ((1232, 1235), (2256, 2259))
    assert runs[-2:] == ((63696, 63699), (64720, 64723))
    assert len(runs) == 63 and all(last - first == 3 for first, last in runs)
    # Each run starts at A * 2^(16-a) + PSID * 2^m, A = 1..63.
    assert [first for first, _ in runs] == [a * 1024 + 0x34 * 4 for a in range(1, 64)]
    assert psid_of(1232, 8, 6) == psid_of(64723, 8, 6) == 0x34
    assert psid_of(1236, 8, 6) == 0x35
    assert psid_of(1023, 8, 6) is None  # A = 0: the system ports are in no set


def test_offset_zero_gives_one_contiguous_run_per_psid() -> None:
    assert port_set(0, psid_length=4, offset=0) == ((0, 4095),)
    assert port_set(15, psid_length=4, offset=0) == ((61440, 65535),)
    assert psid_of(0, 4, 0) == 0 and psid_of(65535, 4, 0) == 15


def test_the_layout_counts_blocks_and_ports() -> None:
    layout = PsidLayout(psid_length=6)  # a = 6: 64 sets of 63 runs of 16 ports
    assert layout.blocks == 64 and layout.ports_per_block == 63 * 16
    assert layout.describe(5) == {"kind": "psid", "psid": 5, "psid_length": 6,
                                  "psid_offset": 6}
    assert layout.spec() == {"kind": "psid", "psid_length": 6, "psid_offset": 6}


@pytest.mark.parametrize(("psid", "k", "a", "field"), [
    (0, 11, 6, "psid_length"), (0, -1, 6, "psid_length"), (0, 4, 16, "psid_offset"),
    (16, 4, 6, "psid"), (-1, 4, 6, "psid"), (True, 4, 6, "psid")])
def test_bad_parameters_name_the_field(psid: int, k: int, a: int, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        port_set(psid, k, a)


@given(a=st.integers(0, 8), k=st.integers(0, 8))
def test_the_sets_of_an_address_are_disjoint_and_cover_the_ports_above_the_offset(
        a: int, k: int) -> None:
    if a + k > 16:
        return
    owner = [-1] * 65536
    for psid in range(1 << k):
        for first, last in port_set(psid, k, a):
            for port in range(first, last + 1):
                assert owner[port] == -1, f"port {port} in PSIDs {owner[port]} and {psid}"
                owner[port] = psid
    low = 1 << (16 - a) if a else 0
    assert all(owner[port] == -1 for port in range(low))
    assert all(owner[port] >= 0 for port in range(low, 65536))
    layout = PsidLayout(k, a)
    assert sum(1 for port in range(65536) if owner[port] == 0) == layout.ports_per_block
    for port in (low, low + 1, 40000, 65535):
        assert psid_of(port, k, a) == owner[port]
