"""trace: what the running gateway would do with one packet, stage by stage (``portico trace``).

Role. ``POST /api/v1/trace`` takes a ``TraceRequest`` (an ingress port, and
the packet as hex or as a few fields), and answers with what ``trace`` finds:
every stage the packet went through with its decision, in order, then the
verdict (out of which port, or dropped for which reason by which stage, or
held for a neighbour), the frame as it would leave and what the gateway would
send of its own accord because of it, as ``ovs-appctl ofproto/trace`` does.
``format_trace`` makes that a table for ``portico trace``.

Theory of operation.

* *The packet.* ``hex`` is the frame exactly as a port would receive it.
  Otherwise the frame is built (``portico.packet.build``) from ``src``,
  ``dst``, ``protocol``, ``sport``, ``dport`` and friends, and the Ethernet
  layer comes from the port: the VLAN of the port's one attachment (or
  untagged; a port that carries several VLANs needs ``vlan``), the router's MAC
  on that segment as the destination (a segment without a router interface
  needs ``eth_dst``), ``TRACE_MAC`` as the source.
* *The tracer.* The one ``portico run --trace`` uses: the row's ``trace``
  flag is set, and the pipeline logs a line per stage it runs for that row
  (``Pipeline.trace``: the stage, and the next stage, ``done`` or the drop).
* *No side effects.* The packet runs through ``Gateway.sandbox()``: the
  running gateway's compiled tables, a copy of everything packets change
  (MACs, neighbours, connections, NAT bindings, counters) and no flow cache,
  so every stage runs (the slow path) and whatever the packet would learn,
  open or allocate happens to the copy only. Tracing the same SYN twice gives
  the same answer, and the running gateway's counters do not move. The price
  is the copy, made under the gateway's lock (traffic waits meanwhile): about
  10 ms, plus the size of the connection and NAT tables.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from portico.classify.rules import PROTOCOL_NAMES
from portico.control.model import Address, ConfigError, L4Port, Name, Problem, Vlan, mac_text

TRACE_MAC = 0x02_00_00_00_7E_01  # the source MAC of a frame built from fields
MAX_FRAME = 9216  # bytes: a jumbo frame
DEFAULT_PORTS = {"sport": 40000, "dport": 80}
TCP_FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40,
                 "C": 0x80}
_MAC_TEXT = r"^[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}$|^[0-9a-fA-F]{2}(?:-[0-9a-fA-F]{2}){5}$"
Byte = Annotated[int, Field(strict=True, ge=0, le=255)]


def _refuse(message: str) -> PydanticCustomError:
    # The message goes in as context, not as the template: user text may hold braces.
    return PydanticCustomError("trace", "{reason}", {"reason": message})


def _mac(value: object) -> int:
    """Any MAC, unicast or not (a trace may well be for a broadcast frame)."""
    if not isinstance(value, str) or not re.fullmatch(_MAC_TEXT, value.strip()):
        raise _refuse("not a MAC address (six hex octets, e.g. 02:00:00:00:0a:05)")
    return int(re.sub("[:-]", "", value.strip()), 16)


def _protocol_value(value: object) -> int:
    if isinstance(value, str) and value.lower() in PROTOCOL_NAMES:
        return PROTOCOL_NAMES[value.lower()]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255:
        return value
    raise _refuse(f"{value!r} is not a protocol: a name ({', '.join(PROTOCOL_NAMES)}) or "
                  "a number 0..255")


Mac = Annotated[int, PlainValidator(_mac), PlainSerializer(mac_text),
                WithJsonSchema({"type": "string", "pattern": _MAC_TEXT})]
Protocol = Annotated[int, PlainValidator(_protocol_value),
                     WithJsonSchema({"anyOf": [
                         {"type": "string", "enum": sorted(PROTOCOL_NAMES)},
                         {"type": "integer", "minimum": 0, "maximum": 255}]})]


class TraceRequest(BaseModel):
    """A packet to trace: the ingress port, and the frame as ``hex`` or as fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    port: Name = Field(description="the ingress port, by name (the config's ``ports``)")
    hex: str | None = Field(None, max_length=4 * MAX_FRAME,
                            description="the whole frame as hex digits (spaces and colons are "
                                        "ignored), exactly as it arrives; no other field then")
    vlan: Vlan | None = Field(None, description="the 802.1Q tag (default: the port's one "
                                                "VLAN, or untagged)")
    eth_src: Mac | None = Field(None, description="default 02:00:00:00:7e:01")
    eth_dst: Mac | None = Field(None, description="default: the router's MAC on the segment")
    src: Address | None = None
    dst: Address | None = None
    protocol: Protocol = Field(6, description="a name (tcp, udp, icmp, icmpv6, gre, ...) "
                                              "or a number 0..255 (default tcp)")
    sport: L4Port | None = Field(None, description="TCP/UDP source port (default 40000), "
                                                   "the ICMP echo identifier")
    dport: L4Port | None = Field(None, description="TCP/UDP destination port (default 80)")
    tcp_flags: str = Field("S", max_length=8, pattern=r"^[FSRPAUECfsrpauec.]*$",
                           description="letters of F S R P A U E C ('.' for none)")
    ttl: Annotated[int, Field(strict=True, ge=1, le=255)] = 64
    icmp_type: Byte | None = Field(None, description="default: echo request")
    icmp_code: Byte = 0


def _port_names(config: Any) -> str:
    return ", ".join(sorted(config.ports)) or "none"


def frame_of(request: TraceRequest, config: Any, topology: Any) -> tuple[bytes, int]:
    """The frame ``request`` describes and the id of its ingress port; ``ConfigError``
    names every field that is wrong or missing."""
    port = config.ports.get(request.port)
    if port is None:
        raise ConfigError([("port", f"no port named {request.port!r} "
                                    f"(ports: {_port_names(config)})")])
    if request.hex is not None:
        others = sorted(request.model_fields_set - {"port", "hex"})
        if others:
            raise ConfigError([("hex", "give the frame as hex or as fields, not both "
                                       f"(fields given too: {', '.join(others)})")])
        try:
            frame = bytes.fromhex(re.sub(r"[\s:]", "", request.hex))
        except ValueError:
            raise ConfigError([("hex", "not hex: an even number of digits 0-9 a-f (spaces "
                                       "and colons allowed)")]) from None
        if not 0 < len(frame) <= MAX_FRAME:
            raise ConfigError([("hex", f"{len(frame)} bytes: a frame has 1..{MAX_FRAME}")])
        return frame, port.id
    problems: list[Problem] = []
    for name in ("src", "dst"):
        if getattr(request, name) is None:
            problems.append((name, "missing: give src and dst, or the frame as hex"))
    src, dst = request.src, request.dst
    if src is not None and dst is not None and src.version != dst.version:
        problems.append(("dst", f"IPv{dst.version}, but src is IPv{src.version}"))
    vlan, eth_dst = _ethernet(request, request.port, port.id, topology, problems)
    protocol = _protocol(request, src.version if src is not None else 4, problems)
    if problems:
        raise ConfigError(problems)
    assert src is not None and dst is not None
    return _build(request, src, dst, vlan, eth_dst, protocol), port.id


def _ethernet(request: TraceRequest, name: str, port: int, topology: Any,
              problems: list[Problem]) -> tuple[int | None, int]:
    """The VLAN (None: untagged) and the destination MAC, from the request or the port."""
    places = [a for a in topology.attachments if a.port == port]
    vlan = request.vlan
    tagged = sorted((a.vlan, topology.segments[a.segment].name) for a in places
                    if a.vlan is not None)
    if vlan is None and len(tagged) == len(places) == 1:
        vlan = tagged[0][0]  # the port's one place is a VLAN: frames come tagged
    elif vlan is None and len(tagged) == len(places) > 1:
        listed = ", ".join(f"{v} ({segment})" for v, segment in tagged)
        problems.append(("vlan", f"port {name} carries VLANs {listed}: say which"))
    if request.eth_dst is not None:
        return vlan, request.eth_dst
    place = next((a for a in places if a.vlan == vlan), None)
    router_mac = topology.segments[place.segment].router_mac if place is not None else 0
    if not router_mac and not any(p == "vlan" for p, _ in problems):
        where = f"port {name}" + (f" VLAN {vlan}" if vlan is not None else " untagged")
        why = ("belongs to no switch" if place is None else
               f"is switch {topology.segments[place.segment].name}, which has no router "
               "interface")
        problems.append(("eth_dst", f"{where} {why}: say which MAC the frame is for"))
    return vlan, int(router_mac)


def _protocol(request: TraceRequest, version: int, problems: list[Problem]) -> int:
    number = request.protocol
    if number == 1 and version == 6:
        return 58  # what "icmp" means between IPv6 addresses
    if number == 58 and version == 4:
        problems.append(("protocol", "icmpv6 needs IPv6 addresses"))
    return number


def _build(request: TraceRequest, src: Any, dst: Any, vlan: int | None, eth_dst: int,
           protocol: int) -> bytes:
    from portico.packet.build import build
    from portico.packet.ethernet import Ethernet
    from portico.packet.header import Header
    from portico.packet.icmp import ICMP
    from portico.packet.icmpv6 import ICMPv6
    from portico.packet.ipv4 import IPv4
    from portico.packet.ipv6 import IPv6
    from portico.packet.tcp import TCP
    from portico.packet.udp import UDP
    from portico.packet.vlan import Dot1Q

    eth_src = request.eth_src if request.eth_src is not None else TRACE_MAC
    headers: list[Header] = [Ethernet(dst=eth_dst, src=eth_src)]
    if vlan is not None:
        headers.append(Dot1Q(vid=vlan))
    if src.version == 4:
        headers.append(IPv4(src=int(src), dst=int(dst), ttl=request.ttl, protocol=protocol))
    else:
        headers.append(IPv6(src=int(src), dst=int(dst), hop_limit=request.ttl,
                            next_header=protocol))
    sport = request.sport or DEFAULT_PORTS["sport"]
    dport = request.dport or DEFAULT_PORTS["dport"]
    if protocol == 6:
        flags = sum(TCP_FLAG_BITS.get(letter, 0) for letter in set(request.tcp_flags.upper()))
        headers.append(TCP(sport=sport, dport=dport, flags=flags))
    elif protocol == 17:
        headers.append(UDP(sport=sport, dport=dport))
    elif protocol in (1, 58):
        kind = ICMP if protocol == 1 else ICMPv6
        echo = 8 if protocol == 1 else 128
        headers.append(kind(type=echo if request.icmp_type is None else request.icmp_type,
                            code=request.icmp_code, ident=sport, seq=1))
    return build(*headers)


# ---------------------------------------------------------------------- the run
def trace(gateway: Any, request: TraceRequest) -> dict[str, Any]:
    """Run the packet of ``request`` through a sandbox of ``gateway`` (hold the lock
    that orders its batches); the report ``POST /api/v1/trace`` answers."""
    frame, port = frame_of(request, gateway.config, gateway.topology)
    return trace_frame(gateway, frame, port)


def trace_frame(gateway: Any, frame: bytes, port: int) -> dict[str, Any]:
    """``frame``, received on port id ``port`` at the gateway's current time, through
    every stage of a sandbox of ``gateway``: each stage's decision and the verdict."""
    from portico import drops
    from portico.batch import Batch

    names = {p.id: name for name, p in gateway.config.ports.items()}
    # The slot size of the gateway's own batches: a held packet goes to its queue.
    batch = Batch.from_packets([frame], port=port, slot_size=gateway.pending.slot_size)
    if len(frame) > batch.max_packet:
        raise ConfigError([("hex", f"{len(frame)} bytes: this gateway's packet slots hold "
                                   f"{batch.max_packet}")])
    sandbox = gateway.sandbox()
    sandbox.pipeline.trace.clear()
    before = {name: dict(c.drops) for name, c in sandbox.pipeline.counters.items()}
    now = gateway.now
    batch.meta["timestamp"][0] = now
    batch.meta["trace"][0] = 1
    sent = sandbox.process(batch, now)
    stages = [{"stage": line.stage, "decision": line.outcome}
              for line in sandbox.pipeline.trace if line.row == 0]
    m = batch.meta[0]
    verdict: dict[str, Any]
    if m["drop"]:
        reason = drops.name(int(m["drop"]))
        counted = [name for name, c in sandbox.pipeline.counters.items()
                   if c.drops.get(reason, 0) > before.get(name, {}).get(reason, 0)]
        verdict = {"action": "drop", "reason": reason,
                   "stage": counted[0] if counted else drops.stage_of(int(m["drop"]))}
    elif m["out_port"] >= 0:
        out = int(m["out_port"])
        verdict = {"action": "output", "port": names.get(out, f"port{out}"), "port_id": out}
    else:
        verdict = {"action": "held", "reason": "waiting for the next hop's MAC (ARP or "
                                               "neighbour discovery)"}
    leaving = batch.packet(0) if verdict["action"] == "output" else None
    also = []
    for extra in sent:
        for row in range(extra.count):
            out = int(extra.meta["out_port"][row])
            if out >= 0 and not extra.meta["drop"][row]:
                packet = extra.packet(row)
                also.append({"port": names.get(out, f"port{out}"), "port_id": out,
                             "summary": frame_text(packet), "hex": packet.hex()})
    return {
        "side_effects": "none: the packet ran through a copy of the gateway's learned "
                        "state, with no flow cache; the running gateway is unchanged",
        "port": {"name": names.get(port, f"port{port}"), "id": port},
        "time_ns": now,
        "packet": {"summary": frame_text(frame), "hex": frame.hex()},
        "stages": stages,
        "verdict": verdict,
        "output": (None if leaving is None else
                   {"summary": frame_text(leaving), "hex": leaving.hex()}),
        "sent": also,
    }


def frame_text(frame: bytes) -> str:
    """A frame on one line: ``02:..:01 > 02:..:05 vlan 10 TCP 10.0.0.5:80 > ... ttl 64``."""
    from portico.run import describe

    if len(frame) < 14:
        return f"{len(frame)} bytes, shorter than an Ethernet header"
    macs = f"{mac_text(int.from_bytes(frame[6:12], 'big'))} > " \
           f"{mac_text(int.from_bytes(frame[:6], 'big'))}"
    return f"{macs} {describe(frame)}"


# ---------------------------------------------------------------------- the table
def format_trace(report: dict[str, Any]) -> str:
    """The report as ``portico trace`` prints it: the packet, a row per stage, the verdict."""
    lines = [f"packet   {report['packet']['summary']}",
             f"port     {report['port']['name']} (id {report['port']['id']})", "",
             f"{'#':>3}  {'stage':<16}decision"]
    for number, step in enumerate(report["stages"], 1):
        decision = step["decision"]
        shown = decision if decision.startswith("drop") or decision == "done" else f"-> {decision}"
        lines.append(f"{number:>3}  {step['stage']:<16}{shown}")
    if not report["stages"]:
        lines.append("     (no stage ran)")
    v = report["verdict"]
    lines.append("")
    if v["action"] == "output":
        lines.append(f"verdict  output to port {v['port']} (id {v['port_id']})")
        lines.append(f"leaving  {report['output']['summary']}")
    elif v["action"] == "drop":
        lines.append(f"verdict  drop: {v['reason']} (by {v['stage']})")
    else:
        lines.append(f"verdict  held: {v['reason']}")
    for extra in report["sent"]:
        lines.append(f"sends    {extra['summary']} (port {extra['port']})")
    lines.append(f"note     {report['side_effects']}")
    return "\n".join(lines)

