"""The gateway's replies, built in place from requests Scapy made, judged by Scapy.

Each case builds a request (untagged and 802.1Q-tagged), asks for a reply, and
decodes what the slot then holds: addresses, types and codes, the MTU field,
the quoted bytes against the original, the size limits, the VLAN tag, the
egress port, and every checksum against Scapy's own recomputation. Refused
rows must carry their named drop reason with their bytes untouched.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, UDP, IPerror
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6PacketTooBig,
    ICMPv6TimeExceeded,
    IPv6,
    IPv6ExtHdrDestOpt,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from portico import drops
from portico.batch import Batch
from portico.datapath.replies import (
    REPLY_DTYPE,
    ReplyDrop,
    ReplyKind,
    build,
    write_arp_request,
    write_neighbour_solicit,
)
from portico.datapath.stages.parse import parse

PORT = 3
ROUTER_MAC = "02:00:00:00:00:01"
HOST_MAC = "02:00:00:00:00:aa"
ROUTER4, HOST4, FAR4 = "192.0.2.1", "192.0.2.50", "198.51.100.9"
ROUTER6, HOST6, FAR6 = "2001:db8::1", "2001:db8::50", "2001:db8:9::9"
LINK_LOCAL = "fe80::1"


def mac(text: str) -> int:
    return int(text.replace(":", ""), 16)


def v6(text: str) -> int:
    return int(ipaddress.IPv6Address(text))


def l2(tagged: bool, *, dst: str = ROUTER_MAC) -> Packet:
    frame = Ether(src=HOST_MAC, dst=dst)
    return frame / Dot1Q(vlan=42, prio=5) if tagged else frame


def record(kind: ReplyKind, *, type: int = 0, code: int = 0, mtu: int = 0,
           ip6: str = ROUTER6, **extra: Any) -> dict[str, Any]:
    hi, lo = divmod(v6(ip6), 1 << 64)
    fields = {"kind": int(kind), "type": type, "code": code, "mtu": mtu,
              "eth_src": mac(ROUTER_MAC), "ip4_src": int(ipaddress.IPv4Address(ROUTER4)),
              "ip6_src_hi": hi, "ip6_src_lo": lo}
    fields.update(extra)
    return fields


def run(cases: list[tuple[Packet, dict[str, Any]]], *, slot_size: int = 2048,
        headroom: int = 128, fragments: str = "drop") -> Batch:
    """Parse the requests, ask for ``cases[k][1]`` on row k, build the replies."""
    batch = Batch.from_packets([bytes(p) for p, _ in cases], port=PORT, slot_size=slot_size,
                               headroom=headroom)
    parse(batch, non_first_fragments=fragments)
    records = np.zeros(batch.count, dtype=REPLY_DTYPE)
    for row, (_, fields) in enumerate(cases):
        for name, value in fields.items():
            records[name][row] = value
    build(batch, np.arange(batch.count), records)
    return batch


def reply(batch: Batch, row: int = 0) -> Packet:
    """Row ``row``'s reply as Scapy decodes it, after the checks every reply passes."""
    assert batch.meta["drop"][row] == 0, drops.name(batch.meta["drop"][row])
    assert batch.meta["out_port"][row] == PORT  # back out where it came in
    assert batch.meta["wire_length"][row] == batch.meta["length"][row]
    raw = batch.packet(row)
    assert_checksums_valid(raw)
    return Ether(raw)


def assert_checksums_valid(raw: bytes) -> None:
    """The frame's own checksums (not the quoted packet's) are what Scapy computes."""
    rebuilt = Ether(raw)
    if IP in rebuilt:
        del rebuilt[IP].chksum
        del rebuilt[ICMP].chksum
    elif IPv6 in rebuilt:
        del rebuilt[IPv6].payload.cksum
    assert bytes(rebuilt) == raw


def quoted(batch: Batch, row: int, headers: int) -> bytes:
    """What follows the error's own headers (``headers`` bytes after the Ethernet header
    and tags): taken from the slot, since Scapy reads RFC 4884 extensions into a long quote."""
    l2_length = int(batch.meta["l3"][row] - batch.meta["start"][row])
    return batch.packet(row)[l2_length + headers :]


def assert_tag_kept(pkt: Packet, tagged: bool) -> None:
    assert (Dot1Q in pkt) == tagged
    if tagged:
        assert (pkt[Dot1Q].vlan, pkt[Dot1Q].prio) == (42, 5)


def ip_bytes(pkt: Packet) -> bytes:
    return bytes(pkt[IP] if IP in pkt else pkt[IPv6])


# ---------------------------------------------------------------- ARP
@pytest.mark.parametrize("tagged", [False, True])
def test_arp_reply_answers_the_requester_from_the_router(tagged: bool) -> None:
    request = l2(tagged, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=HOST_MAC, psrc=HOST4, pdst=ROUTER4)
    batch = run([(request, record(ReplyKind.ARP_REPLY))])
    pkt = reply(batch)
    assert (pkt.dst, pkt.src) == (HOST_MAC, ROUTER_MAC)
    assert_tag_kept(pkt, tagged)
    answer = pkt[ARP]
    assert answer.op == 2
    assert (answer.hwsrc, answer.psrc) == (ROUTER_MAC, ROUTER4)
    assert (answer.hwdst, answer.pdst) == (HOST_MAC, HOST4)
    assert len(pkt) == 42 + 4 * tagged


# ---------------------------------------------------------------- echo
@pytest.mark.parametrize("tagged", [False, True])
def test_echo_reply_v4_swaps_addresses_keeps_id_seq_data_and_drops_options(tagged: bool) -> None:
    plain = l2(tagged) / IP(src=HOST4, dst=ROUTER4, ttl=3, id=777) / ICMP(id=9, seq=4) / b"ping!"
    with_options = l2(tagged) / IP(src=HOST4, dst=ROUTER4, options=b"\x07\x07\x04" + b"\0" * 5) \
        / ICMP(id=9, seq=5) / b"ping!"  # a record-route option: 8 bytes
    batch = run([(plain, record(ReplyKind.ECHO_REPLY)),
                 (with_options, record(ReplyKind.ECHO_REPLY))])
    for row, seq in ((0, 4), (1, 5)):
        pkt = reply(batch, row)
        assert (pkt.dst, pkt.src) == (HOST_MAC, ROUTER_MAC)
        assert_tag_kept(pkt, tagged)
        assert (pkt[IP].src, pkt[IP].dst, pkt[IP].ttl, pkt[IP].ihl) == (ROUTER4, HOST4, 64, 5)
        assert (pkt[ICMP].type, pkt[ICMP].code, pkt[ICMP].id, pkt[ICMP].seq) == (0, 0, 9, seq)
        assert bytes(pkt[ICMP].payload) == b"ping!"
        assert pkt[IP].len == 20 + 8 + 5
        assert len(batch.packet(row)) == 14 + 4 * tagged + 20 + 8 + 5

@pytest.mark.parametrize("tagged", [False, True])
def test_echo_reply_v6_without_the_requests_extension_headers(tagged: bool) -> None:
    requests = [
        l2(tagged) / IPv6(src=HOST6, dst=ROUTER6) / ICMPv6EchoRequest(id=7, seq=1, data=b"abc"),
        l2(tagged) / IPv6(src=HOST6, dst=ROUTER6) / IPv6ExtHdrDestOpt()
        / ICMPv6EchoRequest(id=7, seq=2, data=b"abc"),
    ]
    batch = run([(p, record(ReplyKind.ECHO_REPLY)) for p in requests])
    for row in range(2):
        pkt = reply(batch, row)
        assert (pkt.dst, pkt.src) == (HOST_MAC, ROUTER_MAC)
        assert_tag_kept(pkt, tagged)
        assert (pkt[IPv6].src, pkt[IPv6].dst, pkt[IPv6].hlim, pkt[IPv6].nh) == (
            ROUTER6, HOST6, 64, 58)
        echo = pkt[IPv6].payload
        assert (echo.type, echo.id, echo.seq, echo.data) == (129, 7, row + 1, b"abc")
        assert pkt[IPv6].plen == 8 + 3

def test_echo_to_a_group_address_is_answered_from_the_router_address() -> None:
    to_broadcast = l2(False, dst="ff:ff:ff:ff:ff:ff") / IP(src=HOST4, dst="255.255.255.255") \
        / ICMP(id=1)
    to_all_nodes = l2(False, dst="33:33:00:00:00:01") / IPv6(src=HOST6, dst="ff02::1") \
        / ICMPv6EchoRequest(id=2)
    batch = run([(to_broadcast, record(ReplyKind.ECHO_REPLY)),
                 (to_all_nodes, record(ReplyKind.ECHO_REPLY))])
    assert reply(batch, 0)[IP].src == ROUTER4
    assert reply(batch, 1)[IPv6].src == ROUTER6


# ---------------------------------------------------------------- ICMPv4 errors
@pytest.mark.parametrize("tagged", [False, True])
def test_time_exceeded_v4_quotes_the_whole_small_packet(tagged: bool) -> None:
    offending = l2(tagged) / IP(src=HOST4, dst=FAR4, ttl=1, flags="DF") / UDP(sport=33434,
                                                                            dport=33435) / b"tr"
    batch = run([(offending, record(ReplyKind.ICMP_ERROR, type=11, code=0))])
    assert batch.meta["start"][0] == 128 - 28  # the new headers went into the headroom
    pkt = reply(batch)
    assert (pkt.dst, pkt.src) == (HOST_MAC, ROUTER_MAC)
    assert_tag_kept(pkt, tagged)
    outer = pkt[IP]
    assert (outer.src, outer.dst, outer.ttl, outer.proto) == (ROUTER4, HOST4, 64, 1)
    assert outer.flags == 0 and outer.frag == 0 and outer.tos == 0xC0
    assert (pkt[ICMP].type, pkt[ICMP].code) == (11, 0)
    assert quoted(batch, 0, 28) == ip_bytes(offending)
    assert pkt[IPerror].ttl == 1 and pkt[IPerror].dst == FAR4


def test_frag_needed_carries_the_mtu_and_stays_within_576_bytes() -> None:
    offending = l2(False) / IP(src=HOST4, dst=FAR4, flags="DF") / UDP() / (b"x" * 1400)
    batch = run([(offending, record(ReplyKind.ICMP_ERROR, type=3, code=4, mtu=1280))])
    pkt = reply(batch)
    assert pkt[IP].len == 576
    assert (pkt[ICMP].type, pkt[ICMP].code, pkt[ICMP].nexthopmtu) == (3, 4, 1280)
    assert quoted(batch, 0, 28) == ip_bytes(offending)[: 576 - 28]
    assert len(pkt) == 14 + 576


def test_parameter_problem_v4_carries_the_pointer() -> None:
    offending = l2(False) / IP(src=HOST4, dst=FAR4) / UDP() / b"x"
    batch = run([(offending, record(ReplyKind.ICMP_ERROR, type=12, code=0, mtu=9))])
    pkt = reply(batch)
    assert (pkt[ICMP].type, pkt[ICMP].ptr) == (12, 9)


# ---------------------------------------------------------------- ICMPv6 errors
@pytest.mark.parametrize("tagged", [False, True])
def test_packet_too_big_v6_within_1280_bytes(tagged: bool) -> None:
    offending = l2(tagged) / IPv6(src=HOST6, dst=FAR6) / UDP() / (b"y" * 1452)
    batch = run([(offending, record(ReplyKind.ICMP_ERROR, type=2, code=0, mtu=1400))],
                slot_size=4096)
    assert batch.meta["start"][0] == 128 - 48
    pkt = reply(batch)
    assert (pkt.dst, pkt.src) == (HOST_MAC, ROUTER_MAC)
    assert_tag_kept(pkt, tagged)
    outer = pkt[IPv6]
    assert (outer.src, outer.dst, outer.hlim, outer.nh) == (ROUTER6, HOST6, 64, 58)
    assert 40 + outer.plen == 1280
    assert (pkt[ICMPv6PacketTooBig].type, pkt[ICMPv6PacketTooBig].mtu) == (2, 1400)
    assert quoted(batch, 0, 48) == ip_bytes(offending)[: 1280 - 48]
    assert len(pkt) == 14 + 4 * tagged + 1280


def test_time_exceeded_v6_quotes_the_whole_small_packet_behind_both_qinq_tags() -> None:
    qinq = Ether(src=HOST_MAC, dst=ROUTER_MAC) / Dot1AD(vlan=100) / Dot1Q(vlan=42)
    offending = qinq / IPv6(src=HOST6, dst=FAR6, hlim=1) / UDP() / b"hop"
    batch = run([(offending, record(ReplyKind.ICMP_ERROR, type=3, code=0))])
    pkt = reply(batch)
    assert (pkt[Dot1AD].vlan, pkt[Dot1Q].vlan, pkt[IPv6].dst) == (100, 42, HOST6)
    assert (pkt[ICMPv6TimeExceeded].type, pkt[ICMPv6TimeExceeded].code) == (3, 0)
    assert quoted(batch, 0, 48) == ip_bytes(offending)


def test_packet_too_big_may_answer_a_multicast_packet() -> None:
    """RFC 4443 2.4 (e.3): the exception that lets path MTU discovery work for multicast."""
    offending = l2(False) / IPv6(src=HOST6, dst="ff0e::101") / UDP() / b"m"
    batch = run([(offending, record(ReplyKind.ICMP_ERROR, type=2, mtu=1280))])
    assert reply(batch)[ICMPv6PacketTooBig].mtu == 1280


# ---------------------------------------------------------------- neighbour discovery
@pytest.mark.parametrize("tagged", [False, True])
def test_neighbour_advert_answers_a_solicitation(tagged: bool) -> None:
    solicit = l2(tagged, dst="33:33:ff:00:00:01") / IPv6(
        src="fe80::50", dst="ff02::1:ff00:1", hlim=255) / ICMPv6ND_NS(tgt=LINK_LOCAL) \
        / ICMPv6NDOptSrcLLAddr(lladdr=HOST_MAC)
    batch = run([(solicit, record(ReplyKind.NEIGHBOUR_ADVERT, ip6=LINK_LOCAL))])
    pkt = reply(batch)
    assert (pkt.dst, pkt.src) == (HOST_MAC, ROUTER_MAC)
    assert_tag_kept(pkt, tagged)
    assert (pkt[IPv6].src, pkt[IPv6].dst, pkt[IPv6].hlim) == (LINK_LOCAL, "fe80::50", 255)
    advert = pkt[ICMPv6ND_NA]
    assert (advert.R, advert.S, advert.O, advert.tgt) == (1, 1, 1, LINK_LOCAL)
    assert pkt[ICMPv6NDOptDstLLAddr].lladdr == ROUTER_MAC  # option type 2: target lladdr
    assert pkt[IPv6].plen == 32


def test_neighbour_advert_to_duplicate_address_detection_goes_to_all_nodes() -> None:
    probe = l2(False, dst="33:33:ff:00:00:01") / IPv6(src="::", dst="ff02::1:ff00:1", hlim=255) \
        / ICMPv6ND_NS(tgt=LINK_LOCAL)
    batch = run([(probe, record(ReplyKind.NEIGHBOUR_ADVERT, ip6=LINK_LOCAL))])
    pkt = reply(batch)
    assert pkt.dst == "33:33:00:00:00:01" and pkt[IPv6].dst == "ff02::1"
    assert (pkt[ICMPv6ND_NA].S, pkt[ICMPv6ND_NA].O) == (0, 1)


# ---------------------------------------------------------------- metadata
def test_metadata_describe_the_replies_as_a_fresh_parse_would() -> None:
    cases = [
        (l2(True, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=HOST_MAC, psrc=HOST4, pdst=ROUTER4),
         record(ReplyKind.ARP_REPLY)),
        (l2(False) / IP(src=HOST4, dst=ROUTER4, options=b"\x01" * 4) / ICMP(id=3) / b"d",
         record(ReplyKind.ECHO_REPLY)),
        (l2(True) / IPv6(src=HOST6, dst=ROUTER6) / IPv6ExtHdrDestOpt() / ICMPv6EchoRequest(id=4),
         record(ReplyKind.ECHO_REPLY)),
        (l2(True) / IP(src=HOST4, dst=FAR4, ttl=1) / UDP(dport=4789) / (b"v" * 600),
         record(ReplyKind.ICMP_ERROR, type=11)),
        (l2(False) / IPv6(src=HOST6, dst=FAR6) / UDP() / b"w", record(ReplyKind.ICMP_ERROR,
                                                                    type=1, code=3)),
        (l2(False) / IPv6(src="fe80::50", dst="ff02::1:ff00:1", hlim=255)
         / ICMPv6ND_NS(tgt=LINK_LOCAL), record(ReplyKind.NEIGHBOUR_ADVERT, ip6=LINK_LOCAL)),
    ]
    batch = run(cases)
    assert not batch.meta["drop"][: batch.count].any()
    kept = batch.meta[: batch.count].copy()
    parse(batch)  # idempotent over what it owns: it must find exactly what build left
    for column in kept.dtype.names or ():
        assert list(batch.meta[column][: batch.count]) == list(kept[column]), column
    assert list(kept["out_port"]) == [PORT] * len(cases)


# ---------------------------------------------------------------- refusals
REFUSED = [
    pytest.param(l2(False) / IP(src=HOST4, dst=ROUTER4) / UDP(),
                 record(ReplyKind.ARP_REPLY), ReplyDrop.NOT_ANSWERABLE, id="arp-for-udp"),
    pytest.param(l2(False) / ARP(op=2, hwsrc=HOST_MAC, psrc=HOST4, pdst=ROUTER4),
                 record(ReplyKind.ARP_REPLY), ReplyDrop.NOT_ANSWERABLE, id="arp-for-arp-reply"),
    pytest.param(l2(False) / IP(src=HOST4, dst=ROUTER4) / ICMP(type=0),
                 record(ReplyKind.ECHO_REPLY), ReplyDrop.NOT_ANSWERABLE, id="echo-for-echo-reply"),
    pytest.param(l2(False) / IPv6(src="fe80::50", dst="ff02::1:ff00:1", hlim=64)
                 / ICMPv6ND_NS(tgt=LINK_LOCAL), record(ReplyKind.NEIGHBOUR_ADVERT),
                 ReplyDrop.NOT_ANSWERABLE, id="advert-for-off-link-solicit"),
    pytest.param(l2(False) / IP(src=HOST4, dst=FAR4, ttl=1) / ICMP(type=3, code=1)
                 / IP(src=FAR4, dst=HOST4) / UDP(), record(ReplyKind.ICMP_ERROR, type=11),
                 ReplyDrop.ERROR_ABOUT_ERROR, id="v4-error-about-error"),
    pytest.param(l2(False) / IPv6(src=HOST6, dst=FAR6, hlim=1) / ICMPv6TimeExceeded()
                 / IPv6(src=FAR6, dst=HOST6) / UDP(), record(ReplyKind.ICMP_ERROR, type=3),
                 ReplyDrop.ERROR_ABOUT_ERROR, id="v6-error-about-error"),
    pytest.param(l2(False) / IP(src=HOST4, dst=FAR4, frag=100, proto=17) / (b"z" * 40),
                 record(ReplyKind.ICMP_ERROR, type=11), ReplyDrop.ERROR_ABOUT_FRAGMENT,
                 id="v4-error-about-non-first-fragment"),
    pytest.param(l2(False, dst="ff:ff:ff:ff:ff:ff") / IP(src=HOST4, dst="255.255.255.255")
                 / UDP(), record(ReplyKind.ICMP_ERROR, type=3, code=3),
                 ReplyDrop.ERROR_ABOUT_MULTICAST, id="v4-error-about-broadcast"),
    pytest.param(l2(False, dst="ff:ff:ff:ff:ff:ff") / IP(src=HOST4, dst=FAR4) / UDP(),
                 record(ReplyKind.ICMP_ERROR, type=3, code=3), ReplyDrop.ERROR_ABOUT_MULTICAST,
                 id="v4-error-about-link-broadcast"),
    pytest.param(l2(False) / IPv6(src=HOST6, dst="ff0e::101", hlim=1) / UDP(),
                 record(ReplyKind.ICMP_ERROR, type=3), ReplyDrop.ERROR_ABOUT_MULTICAST,
                 id="v6-time-exceeded-about-multicast"),
    pytest.param(l2(False) / IP(src="0.0.0.0", dst=FAR4, ttl=1) / UDP(),
                 record(ReplyKind.ICMP_ERROR, type=11), ReplyDrop.SOURCE_NOT_UNICAST,
                 id="v4-error-to-0.0.0.0"),
    pytest.param(l2(False) / IP(src="127.0.0.1", dst=ROUTER4) / ICMP(),
                 record(ReplyKind.ECHO_REPLY), ReplyDrop.SOURCE_NOT_UNICAST, id="echo-to-loopback"),
    pytest.param(l2(False) / IPv6(src="::", dst=ROUTER6) / ICMPv6EchoRequest(),
                 record(ReplyKind.ECHO_REPLY), ReplyDrop.SOURCE_NOT_UNICAST, id="echo-to-::"),
    pytest.param(l2(False) / IP(src=HOST4, dst=FAR4, ttl=1) / UDP(),
                 record(ReplyKind.ICMP_ERROR, type=11, eth_src=0), ReplyDrop.BAD_REPLY_RECORD,
                 id="no-router-mac"),
    pytest.param(l2(False) / IP(src=HOST4, dst=FAR4, ttl=1) / UDP(),
                 record(ReplyKind.ICMP_ERROR, type=8), ReplyDrop.BAD_REPLY_RECORD,
                 id="error-type-that-is-no-error"),
    pytest.param(l2(False) / IPv6(src=HOST6, dst=FAR6, hlim=1) / UDP(),
                 record(ReplyKind.ICMP_ERROR, type=3, ip6="::"), ReplyDrop.BAD_REPLY_RECORD,
                 id="no-router-address"),
    pytest.param(l2(False) / IP(src=HOST4, dst=ROUTER4) / ICMP(),
                 {**record(ReplyKind.ECHO_REPLY), "kind": 9}, ReplyDrop.BAD_REPLY_RECORD,
                 id="unknown-kind"),
]


@pytest.mark.parametrize(("request_packet", "fields", "reason"), REFUSED)
def test_refused_rows_get_the_named_reason_and_keep_their_bytes(
    request_packet: Packet, fields: dict[str, Any], reason: ReplyDrop
) -> None:
    batch = run([(request_packet, fields)], fragments="keep")
    assert drops.name(batch.meta["drop"][0]) == drops.name(reason)
    assert drops.stage_of(reason) == "replies"
    assert batch.packet(0) == bytes(request_packet)
    assert batch.meta["start"][0] == 128 and batch.meta["out_port"][0] == -1


def test_an_error_without_headroom_is_refused() -> None:
    offending = l2(False) / IP(src=HOST4, dst=FAR4, ttl=1) / UDP()
    too_big = l2(False) / IPv6(src=HOST6, dst=FAR6) / UDP() / b"big"
    batch = run([(offending, record(ReplyKind.ICMP_ERROR, type=11)),
                 (too_big, record(ReplyKind.ICMP_ERROR, type=2, mtu=1280))], headroom=20)
    assert [drops.name(d) for d in batch.meta["drop"][:2]] == ["reply-no-room"] * 2
    assert batch.packets() == [bytes(offending), bytes(too_big)]


def test_rows_already_dropped_or_without_a_reply_are_left_alone() -> None:
    ping = l2(False) / IP(src=HOST4, dst=ROUTER4) / ICMP()
    truncated = bytes(ping)[:20]
    batch = run([(ping, record(ReplyKind.NONE)), (Raw(truncated), record(ReplyKind.ECHO_REPLY))])
    assert batch.meta["drop"][0] == 0 and batch.packet(0) == bytes(ping)
    assert drops.name(batch.meta["drop"][1]) == "truncated-ipv4"
    assert batch.packet(1) == truncated


def test_build_refuses_rows_outside_the_batch_and_foreign_records() -> None:
    batch = Batch.from_packets([bytes(l2(False) / IP() / ICMP())])
    parse(batch)
    with pytest.raises(ValueError, match="rows"):
        build(batch, np.array([1]), np.zeros(4, dtype=REPLY_DTYPE))
    with pytest.raises(TypeError, match="REPLY_DTYPE"):
        build(batch, np.array([0]), np.zeros(1, dtype=np.uint8))


# ---------------------------------------------------------------- new packets
@pytest.mark.parametrize("vlan_tci", [None, (5 << 13) | 42])
def test_arp_request_for_a_next_hop(vlan_tci: int | None) -> None:
    batch = Batch(4)
    batch.reset(4)
    write_arp_request(batch, 2, eth_src=mac(ROUTER_MAC), ip_src=int(ipaddress.IPv4Address(
        ROUTER4)), ip_target=int(ipaddress.IPv4Address(HOST4)), vlan_tci=vlan_tci, port=6)
    pkt = Ether(batch.packet(2))
    assert (pkt.dst, pkt.src) == ("ff:ff:ff:ff:ff:ff", ROUTER_MAC)
    assert_tag_kept(pkt, vlan_tci is not None)
    assert pkt[ARP].op == 1
    assert (pkt[ARP].hwsrc, pkt[ARP].psrc, pkt[ARP].pdst) == (ROUTER_MAC, ROUTER4, HOST4)
    m = batch.meta[2]
    assert (m["port"], m["out_port"], m["drop"], m["ethertype"]) == (6, 6, 0, 0x0806)
    assert m["length"] == m["wire_length"] == len(pkt)
    assert m["vlan_outer"] == (42 if vlan_tci is not None else 0)


@pytest.mark.parametrize("vlan_tci", [None, (5 << 13) | 42])
def test_neighbour_solicit_goes_to_the_solicited_node_group(vlan_tci: int | None) -> None:
    batch = Batch(2)
    batch.reset(2)
    target = "2001:db8::12:3456"
    write_neighbour_solicit(batch, 1, eth_src=mac(ROUTER_MAC), ip6_src=v6(ROUTER6),
                            target=v6(target), vlan_tci=vlan_tci, port=2)
    pkt = Ether(batch.packet(1))
    assert_checksums_valid(batch.packet(1))
    assert (pkt.dst, pkt.src) == ("33:33:ff:12:34:56", ROUTER_MAC)
    assert_tag_kept(pkt, vlan_tci is not None)
    assert (pkt[IPv6].src, pkt[IPv6].dst, pkt[IPv6].hlim) == (ROUTER6, "ff02::1:ff12:3456", 255)
    assert pkt[ICMPv6ND_NS].tgt == target
    assert pkt[ICMPv6NDOptSrcLLAddr].lladdr == ROUTER_MAC
    m = batch.meta[1]
    assert (m["port"], m["out_port"], m["drop"], m["icmp_type"]) == (2, 2, 0, 135)


def test_neighbour_solicit_for_duplicate_address_detection_has_no_source_option() -> None:
    batch = Batch(1)
    batch.reset(1)
    write_neighbour_solicit(batch, 0, eth_src=mac(ROUTER_MAC), ip6_src=0, target=v6(LINK_LOCAL),
                            port=0)
    pkt = Ether(batch.packet(0))
    assert pkt[IPv6].src == "::" and ICMPv6NDOptSrcLLAddr not in pkt
    assert_checksums_valid(batch.packet(0))
