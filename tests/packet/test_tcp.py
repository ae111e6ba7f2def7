"""TCP and its options (MSS, window scale, SACK-permitted, timestamps) against Scapy and tshark."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP
from scapy.layers.inet import TCP as ScapyTCP
from scapy.layers.inet6 import IPv6 as ScapyIPv6
from scapy.layers.l2 import Ether

from portico.packet.build import build
from portico.packet.decode import decode
from portico.packet.errors import PacketError
from portico.packet.ethernet import Ethernet
from portico.packet.ipv4 import IPv4
from portico.packet.ipv6 import IPv6
from portico.packet.tcp import ACK, PSH, SYN, TCP, decode_options, encode_options

SYN_OPTIONS = [
    ("mss", 1460), ("nop", None), ("wscale", 7), ("sackok", None),
    ("timestamp", (123456, 0)),
]  # fmt: skip


def syn_v4() -> bytes:
    return build(
        Ethernet(),
        IPv4(src="10.0.0.1", dst="10.0.0.2"),
        TCP(sport=40000, dport=40080, seq=1000, flags=SYN, window=64240, options=SYN_OPTIONS),
    )


def data_v6() -> bytes:
    return build(
        Ethernet(),
        IPv6(src="2001:db8::1", dst="2001:db8::2"),
        TCP(sport=40000, dport=40080, seq=5, ack=9, flags=PSH | ACK,
            options=[("nop", None), ("nop", None), ("timestamp", (7, 8))]),
        payload=b"payload!",
    )  # fmt: skip


def test_options_round_trip() -> None:
    wire = encode_options(SYN_OPTIONS)
    assert decode_options(wire) == SYN_OPTIONS
    sack = [("sack", [(1, 2), (3, 4)])]
    assert decode_options(encode_options(sack)) == sack
    assert decode_options(b"\x03\x03\x07\x00") == [("wscale", 7), ("eol", None)]


@pytest.mark.parametrize(
    "wire", [b"\x02", b"\x02\x01", b"\x02\x09\x00\x00", b"\x03\x04\x01\x02", b"\x05\x03\x00"]
)
def test_malformed_options_named(wire: bytes) -> None:
    with pytest.raises(PacketError, match="^tcp: "):
        decode_options(wire)


def test_scapy_to_portico() -> None:
    frame = (
        Ether()
        / IP(src="1.1.1.1", dst="2.2.2.2")
        / ScapyTCP(sport=1, dport=2, seq=3, ack=4, flags="SA", window=5, urgptr=6,
                   options=[("MSS", 1400), ("SAckOK", b""), ("Timestamp", (10, 20)),
                            ("NOP", None), ("WScale", 3)])
        / b"data"
    )  # fmt: skip
    raw = bytes(frame)
    tcp = decode(raw)[TCP]
    theirs = Ether(raw)[ScapyTCP]
    assert tcp.fields() == {
        "sport": 1, "dport": 2, "seq": 3, "ack": 4, "data_offset": theirs.dataofs,
        "reserved": 0, "flags": SYN | ACK, "window": 5, "checksum": theirs.chksum, "urgent": 6,
    }  # fmt: skip
    assert tcp.option_list[:5] == [
        ("mss", 1400), ("sackok", None), ("timestamp", (10, 20)), ("nop", None), ("wscale", 3),
    ]  # fmt: skip
    assert decode(raw).payload == b"data"


@pytest.mark.parametrize("make", [syn_v4, data_v6])
def test_portico_to_scapy(make, scapy_rebuilds_same) -> None:
    tcp = scapy_rebuilds_same(make())[ScapyTCP]
    assert (tcp.sport, tcp.dport) == (40000, 40080)


def test_portico_to_scapy_options(scapy_rebuilds_same) -> None:
    tcp = scapy_rebuilds_same(syn_v4())[ScapyTCP]
    assert tcp.options == [
        ("MSS", 1460), ("NOP", None), ("WScale", 7), ("SAckOK", b""), ("Timestamp", (123456, 0)),
    ]  # fmt: skip
    assert (tcp.seq, tcp.window, tcp.flags, tcp.dataofs) == (1000, 64240, "S", 10)
    six = scapy_rebuilds_same(data_v6())
    assert six[ScapyIPv6].nh == 6 and six[ScapyTCP].load == b"payload!"


def test_bad_data_offset_named() -> None:
    raw = bytearray(syn_v4())
    raw[46] = 0x40
    assert decode(bytes(raw)).error == "tcp: data_offset 4 is below the minimum of 5"


@pytest.fixture(scope="module")
def tshark_trees(tmp_path_factory: pytest.TempPathFactory, tshark_decode) -> list:
    return tshark_decode([syn_v4(), data_v6()], tmp_path_factory.mktemp("tcp") / "tcp.pcap")


def test_tshark(tshark_trees: list) -> None:
    syn, data = tshark_trees
    assert syn.values("tcp.options.mss_val") == ["1460"]
    assert syn.values("tcp.options.wscale.shift") == ["7"]
    assert syn.values("tcp.options.timestamp.tsval") == ["123456"]
    assert syn.values("tcp.options.sack_perm") != []
    assert syn.values("tcp.hdr_len") == ["40"]
    syn.assert_clean(checked=("ip", "tcp"))
    assert data.values("tcp.options.timestamp.tsecr") == ["8"]
    assert data.values("tcp.len") == ["8"]
    data.assert_clean(checked=("tcp",))
