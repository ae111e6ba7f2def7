"""GRE (checksum/key/sequence), VXLAN, Geneve (TLV options) and GTP-U (extension headers)."""

from __future__ import annotations

import pytest
from scapy.contrib.geneve import GENEVE, GeneveOptions
from scapy.contrib.gtp import GTP_U_Header, GTPPDUSessionContainer
from scapy.layers.inet import IP
from scapy.layers.inet import UDP as ScapyUDP
from scapy.layers.inet6 import IPv6 as ScapyIPv6
from scapy.layers.l2 import GRE as ScapyGRE
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN as ScapyVXLAN

from portico.packet.build import build
from portico.packet.decode import decode
from portico.packet.errors import PacketError
from portico.packet.ethernet import Ethernet
from portico.packet.geneve import Geneve, GeneveOption
from portico.packet.gre import GRE
from portico.packet.gtpu import GTPU, pdu_session_container
from portico.packet.ipv4 import IPv4
from portico.packet.ipv6 import IPv6
from portico.packet.tcp import TCP
from portico.packet.udp import UDP
from portico.packet.vxlan import VXLAN

OUTER = ("192.0.2.1", "192.0.2.2")
INNER_MAC = "02:00:00:00:00:99"


def inner_ipv4() -> list:
    return [IPv4(src="10.1.0.1", dst="10.1.0.2"), UDP(sport=40000, dport=40001)]


def gre_plain() -> bytes:
    return build(Ethernet(), IPv4(src=OUTER[0], dst=OUTER[1]), GRE(), *inner_ipv4(), payload=b"g")


def gre_all_words() -> bytes:
    return build(
        Ethernet(), IPv4(src=OUTER[0], dst=OUTER[1]),
        GRE(checksum_present=1, key=0xCAFE, seq=42),
        Ethernet(src=INNER_MAC), *inner_ipv4(), payload=b"gre with words",
    )  # fmt: skip


def vxlan() -> bytes:
    return build(
        Ethernet(), IPv4(src=OUTER[0], dst=OUTER[1]), UDP(sport=49152), VXLAN(vni=0x123456),
        Ethernet(src=INNER_MAC), *inner_ipv4(), payload=b"vx",
    )  # fmt: skip


def geneve() -> bytes:
    options = [
        GeneveOption(option_class=0x0102, option_type=0x80, options=b"\x01\x02\x03\x04\x05"),
        GeneveOption(option_class=0xFFFF, option_type=3),
    ]
    return build(
        Ethernet(), IPv6(src="2001:db8::1", dst="2001:db8::2"), UDP(sport=49153),
        Geneve(vni=77, critical=1, options=options),
        Ethernet(src=INNER_MAC), *inner_ipv4(), payload=b"gnv",
    )  # fmt: skip


def gtpu() -> bytes:
    return build(
        Ethernet(), IPv4(src=OUTER[0], dst=OUTER[1]), UDP(sport=2152),
        GTPU(teid=0xDEADBEEF, extensions=[pdu_session_container(9)]),
        IPv4(src="10.45.0.2", dst="10.1.0.2"), TCP(sport=40000, dport=40001, flags=0x10),
        payload=b"user plane",
    )  # fmt: skip


def gtpu_seq_v6() -> bytes:
    return build(
        Ethernet(), IPv4(src=OUTER[0], dst=OUTER[1]), UDP(sport=2152),
        GTPU(teid=5, seq=1000, npdu=3),
        IPv6(src="2001:db8::5", dst="2001:db8::6"), UDP(sport=40000, dport=40001),
    )  # fmt: skip


ALL = [gre_plain, gre_all_words, vxlan, geneve, gtpu, gtpu_seq_v6]


# ---------------------------------------------------------------- Scapy builds, Portico decodes
def test_scapy_gre_to_portico() -> None:
    gre = ScapyGRE(chksum_present=1, key_present=1, key=5, seqnum_present=1, sequence_number=6)
    frame = Ether() / IP() / gre / IP(dst="10.0.0.9") / ScapyUDP()
    raw = bytes(frame)
    d = decode(raw)
    assert d.names == ["ethernet", "ipv4", "gre", "ipv4", "udp"] and d.error is None
    gre = d[GRE]
    assert (gre.checksum_present, gre.key_present, gre.seq_present, gre.protocol) == (
        1,
        1,
        1,
        0x800,
    )
    assert (gre.checksum, gre.key, gre.seq) == (Ether(raw)[ScapyGRE].chksum, 5, 6)


def test_scapy_vxlan_geneve_to_portico() -> None:
    frame = (
        Ether()
        / IP()
        / ScapyUDP(dport=4789)
        / ScapyVXLAN(flags=0x08, vni=99)
        / Ether()
        / IP()
        / ScapyUDP()
    )
    d = decode(bytes(frame))
    assert d.names == ["ethernet", "ipv4", "udp", "vxlan", "ethernet", "ipv4", "udp"]
    assert d[VXLAN].vni == 99 and d[VXLAN].flags == 0x08
    options = [GeneveOptions(classid=0x0101, type=0x81, data=b"\xaa" * 8)]
    frame = (
        Ether() / IP() / ScapyUDP(dport=6081) / GENEVE(vni=5, options=options, proto=0x0800)
        / IP(dst="10.2.2.2") / ScapyUDP()
    )  # fmt: skip
    d = decode(bytes(frame))
    assert d.names == ["ethernet", "ipv4", "udp", "geneve", "ipv4", "udp"] and d.error is None
    assert d[Geneve].opt_len == 3 and d[Geneve].vni == 5
    (option,) = d[Geneve].option_list
    assert (option.option_class, option.option_type, option.length) == (0x0101, 0x81, 2)
    assert option.options == b"\xaa" * 8


def test_scapy_gtpu_to_portico() -> None:
    frame = (
        Ether() / IP() / ScapyUDP(sport=2152, dport=2152)
        / GTP_U_Header(teid=7, E=1, next_ex=0x85) / GTPPDUSessionContainer(type=1, QFI=5)
        / IP(dst="10.3.3.3") / ScapyUDP()
    )  # fmt: skip
    d = decode(bytes(frame))
    assert d.names == ["ethernet", "ipv4", "udp", "gtpu", "ipv4", "udp"] and d.error is None
    gtp = d[GTPU]
    assert (gtp.teid, gtp.ext_flag, gtp.qfi) == (7, 1, 5)
    assert gtp.length == len(bytes(frame)) - 14 - 20 - 8 - 8


# ---------------------------------------------------------------- Portico builds, Scapy decodes
def test_portico_gre_to_scapy(scapy_rebuilds_same) -> None:
    packet = scapy_rebuilds_same(gre_all_words())
    gre = packet[ScapyGRE]
    assert (gre.chksum_present, gre.key, gre.sequence_number, gre.proto) == (1, 0xCAFE, 42, 0x6558)
    assert packet[ScapyUDP].load == b"gre with words"
    assert scapy_rebuilds_same(gre_plain())[ScapyGRE].proto == 0x0800


def test_portico_vxlan_geneve_to_scapy(scapy_rebuilds_same) -> None:
    packet = scapy_rebuilds_same(vxlan())
    assert packet[ScapyUDP].dport == 4789 and packet[ScapyVXLAN].vni == 0x123456
    assert packet[ScapyVXLAN].payload[Ether].src == INNER_MAC
    packet = scapy_rebuilds_same(geneve())
    gnv = packet[GENEVE]
    assert (gnv.vni, gnv.critical, gnv.optionlen, gnv.proto) == (77, 1, 4, 0x6558)
    first, second = gnv.options
    assert (first.classid, first.type, first.length, first.data) == (
        0x0102, 0x80, 2, b"\x01\x02\x03\x04\x05\0\0\0",
    )  # fmt: skip
    assert (second.classid, second.length) == (0xFFFF, 0)


def test_portico_gtpu_to_scapy(scapy_rebuilds_same) -> None:
    packet = scapy_rebuilds_same(gtpu())
    header = packet[GTP_U_Header]
    assert (header.teid, header.E, header.next_ex, header.gtp_type) == (0xDEADBEEF, 1, 0x85, 255)
    assert packet[GTPPDUSessionContainer].QFI == 9
    assert packet[GTPPDUSessionContainer].ExtHdrLen == 1
    packet = scapy_rebuilds_same(gtpu_seq_v6())
    header = packet[GTP_U_Header]
    assert (header.S, header.PN, header.seq, header.npdu) == (1, 1, 1000, 3)
    assert packet[ScapyIPv6].dst == "2001:db8::6"


def test_decoded_tunnel_round_trip() -> None:
    for make in ALL:
        d = decode(make())
        assert d.error is None, d.error
        assert build(*d.headers, payload=d.payload) == make()


@pytest.mark.parametrize(
    ("make", "cut", "message"),
    [
        (gtpu, 14 + 20 + 8 + 13, "gtpu: extension header 0x85 runs past"),
        (geneve, 14 + 40 + 8 + 10, "geneve: truncated"),
        (gre_all_words, 14 + 20 + 10, "gre: truncated"),
    ],
)
def test_truncated_tunnels_named(make, cut: int, message: str) -> None:
    raw = make()[:cut]
    # Outer length fields now disagree with the data, so unpack the header itself.
    header_at = {gtpu: 42, geneve: 62, gre_all_words: 34}[make]
    cls = {gtpu: GTPU, geneve: Geneve, gre_all_words: GRE}[make]
    with pytest.raises(PacketError, match=message):
        cls.unpack(raw, header_at)


# ---------------------------------------------------------------- tshark
@pytest.fixture(scope="module")
def tshark_trees(tmp_path_factory: pytest.TempPathFactory, tshark_decode) -> list:
    frames = [make() for make in ALL]
    return tshark_decode(frames, tmp_path_factory.mktemp("tunnels") / "tunnels.pcap")


def test_tshark(tshark_trees: list) -> None:
    plain, words, vx, gnv, gtp, gtp6 = tshark_trees
    assert plain.values("gre.proto") == ["0x0800"]
    assert words.values("gre.key") == ["0x0000cafe"]
    assert words.values("gre.sequence_number") == ["42"]
    assert words.values("gre.checksum.status") == ["1"]
    assert vx.values("vxlan.vni") == [str(0x123456)]
    assert gnv.values("geneve.vni") == ["0x00004d"]
    assert gnv.values("geneve.option.class") == ["0x0102", "0xffff"]
    assert gtp.values("gtp.teid") == ["0xdeadbeef"]
    assert gtp.values("gtp.ext_hdr.pdu_ses_con.qos_flow_id") == ["9"]
    assert gtp6.values("gtp.seq_number") == ["0x03e8"]
    for tree in (plain, words, vx, gtp, gtp6):
        tree.assert_clean(checked=("ip",))
    gnv.assert_clean(checked=("udp",))
    for tree in (plain, words, vx, gnv, gtp6):
        assert set(tree.values("udp.checksum.status")) == {"1"}
    assert gtp.values("tcp.checksum.status") == ["1"]
