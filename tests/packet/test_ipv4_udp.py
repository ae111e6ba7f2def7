"""IPv4 (options, fragments) and UDP against Scapy and tshark."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, IPOption_Router_Alert, IPOption_RR
from scapy.layers.inet import UDP as ScapyUDP
from scapy.layers.l2 import Ether

from portico.packet.build import build
from portico.packet.decode import decode
from portico.packet.ethernet import Ethernet
from portico.packet.ipv4 import FLAG_DF, FLAG_MF, IPv4
from portico.packet.udp import UDP

ROUTER_ALERT = bytes((0x94, 4, 0, 0))


def udp_frame() -> bytes:
    return build(
        Ethernet(),
        IPv4(src="192.0.2.1", dst="198.51.100.2", tos=0x2E, ident=4242, flags=FLAG_DF, ttl=7),
        UDP(sport=40000, dport=40001),
        payload=b"query",
    )


def options_frame() -> bytes:
    return build(
        Ethernet(),
        IPv4(src="10.0.0.1", dst="10.0.0.2", options=ROUTER_ALERT + bytes((1,))),
        UDP(sport=1, dport=2),
        payload=b"x" * 9,
    )


def fragment_frames() -> list[bytes]:
    first = build(
        Ethernet(),
        IPv4(src="10.0.0.1", dst="10.0.0.2", ident=99, flags=FLAG_MF, protocol=17),
        payload=bytes(UDP(sport=1, dport=2, length=24).pack()) + b"a" * 8,
    )
    last = build(
        Ethernet(),
        IPv4(src="10.0.0.1", dst="10.0.0.2", ident=99, frag_offset=2, protocol=17),
        payload=b"b" * 8,
    )
    return [first, last]


def zero_checksum_frame() -> bytes:
    """A payload chosen so the UDP checksum computes to 0: it must go out as 0xFFFF."""
    base = build(IPv4(src="10.0.0.1", dst="10.0.0.2"), UDP(sport=1, dport=2), payload=b"\0\0")
    csum = int.from_bytes(base[26:28], "big")
    # Adding ``csum`` to the summed data cancels it: the new sum is 0xFFFF, checksum 0.
    fix = csum.to_bytes(2, "big")
    return build(
        Ethernet(), IPv4(src="10.0.0.1", dst="10.0.0.2"), UDP(sport=1, dport=2), payload=fix
    )


def test_scapy_to_portico() -> None:
    frame = (
        Ether()
        / IP(src="1.2.3.4", dst="5.6.7.8", tos=3, id=77, flags="DF", ttl=9,
             options=[IPOption_Router_Alert(), IPOption_RR(routers=["9.9.9.9"])])
        / ScapyUDP(sport=11, dport=22)
        / b"hello"
    )  # fmt: skip
    raw = bytes(frame)
    d = decode(raw)
    assert d.error is None and d.names == ["ethernet", "ipv4", "udp"]
    ip, udp = d[IPv4], d[UDP]
    scapy_ip = Ether(raw)[IP]
    assert ip.fields() == {
        "version": 4, "ihl": scapy_ip.ihl, "tos": 3, "total_length": scapy_ip.len, "ident": 77,
        "flags": FLAG_DF, "frag_offset": 0, "ttl": 9, "protocol": 17,
        "checksum": scapy_ip.chksum, "src": 0x01020304, "dst": 0x05060708,
    }  # fmt: skip
    assert ip.options == raw[34 : 14 + scapy_ip.ihl * 4]
    assert (udp.sport, udp.dport, udp.length, udp.checksum) == (
        11, 22, 13, Ether(raw)[ScapyUDP].chksum,
    )  # fmt: skip
    assert d.payload == b"hello"


def test_scapy_fragment_to_portico() -> None:
    raw = bytes(Ether() / IP(flags="MF", frag=3, proto=6) / (b"z" * 16))
    d = decode(raw)
    assert d.names == ["ethernet", "ipv4"] and d.payload == b"z" * 16 and d.error is None
    assert d[IPv4].flags == FLAG_MF and d[IPv4].frag_offset == 3


def test_ethernet_padding_is_trailer() -> None:
    raw = bytes(Ether() / IP() / ScapyUDP() / b"ab")
    padded = raw + b"\0" * (60 - len(raw))
    d = decode(padded)
    assert d.payload == b"ab" and d.trailer == b"\0" * (60 - len(raw))


@pytest.mark.parametrize("make", [udp_frame, options_frame, zero_checksum_frame])
def test_portico_to_scapy(make, scapy_rebuilds_same) -> None:
    packet = scapy_rebuilds_same(make())
    assert packet[IP].src in ("192.0.2.1", "10.0.0.1")


def test_portico_to_scapy_fields(scapy_rebuilds_same) -> None:
    ip = scapy_rebuilds_same(udp_frame())[IP]
    assert (ip.tos, ip.id, int(ip.flags), ip.ttl, ip.proto, ip.dst) == (
        0x2E, 4242, FLAG_DF, 7, 17, "198.51.100.2",
    )  # fmt: skip
    assert ip[ScapyUDP].load == b"query"
    ip = scapy_rebuilds_same(options_frame())[IP]
    assert ip.ihl == 7 and ip.options[0].option == 20  # router alert


def test_zero_udp_checksum_is_sent_as_ffff() -> None:
    raw = zero_checksum_frame()
    assert decode(raw)[UDP].checksum == 0xFFFF


def test_portico_fragments_to_scapy() -> None:
    first, last = (Ether(raw) for raw in fragment_frames())
    assert first[IP].flags == FLAG_MF and first[IP].id == 99
    assert last[IP].frag == 2 and last[IP].load == b"b" * 8
    for raw in fragment_frames():
        # Only the IP header: the first fragment's UDP length covers the whole datagram.
        packet = Ether(raw)
        del packet[IP].chksum
        assert bytes(packet) == raw


def test_bad_ihl_and_total_length_named() -> None:
    raw = bytearray(udp_frame())
    raw[14] = 0x43
    assert decode(bytes(raw)).error == "ipv4: ihl 3 is below the minimum of 5"
    raw = bytearray(udp_frame())
    raw[16:18] = (500).to_bytes(2, "big")
    error = decode(bytes(raw)).error
    assert error is not None and error.startswith("ipv4: total_length 500 runs past")


@pytest.fixture(scope="module")
def tshark_trees(tmp_path_factory: pytest.TempPathFactory, tshark_decode) -> list:
    frames = [udp_frame(), options_frame(), zero_checksum_frame(), *fragment_frames()]
    return tshark_decode(frames, tmp_path_factory.mktemp("ipv4") / "ipv4.pcap")


def test_tshark(tshark_trees: list) -> None:
    plain, options, zero, first, last = tshark_trees
    assert plain.values("ip.dsfield") == ["0x2e"]
    assert plain.values("ip.id") == ["0x1092"]
    assert plain.values("ip.ttl") == ["7"]
    assert plain.values("udp.dstport") == ["40001"]
    assert options.values("ip.hdr_len") == ["28"]
    assert options.values("ip.opt.type") == ["148", "1", "0"]  # then EOL padding
    assert zero.values("udp.checksum") == ["0xffff"]
    for tree in (plain, options, zero):
        tree.assert_clean(checked=("ip", "udp"))
    for tree in (first, last):
        tree.assert_clean(checked=("ip",))
    assert last.values("ip.frag_offset") == ["2"]  # tshark shows 8-byte units
