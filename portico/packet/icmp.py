"""ICMPv4 (RFC 792): echo and the errors that carry the offending packet.

An error message's body is the IP header and first bytes of the packet that
caused it. It is the ICMP header's payload: build it by stacking the carried
headers after the ICMP header (``build(IPv4(), ICMP(type=3), IPv4(), UDP())``)
or pass its bytes as ``payload``; ``decode`` keeps those bytes as the payload
and decodes them, leniently since they are usually cut short, as
``Decoded.carried``.
"""

from __future__ import annotations

from portico.packet.header import Field, Header

ECHO_REPLY = 0
DEST_UNREACHABLE = 3
REDIRECT = 5
ECHO_REQUEST = 8
TIME_EXCEEDED = 11
PARAMETER_PROBLEM = 12
ERROR_TYPES = (DEST_UNREACHABLE, REDIRECT, TIME_EXCEEDED, PARAMETER_PROBLEM)
CODE_FRAG_NEEDED = 4  # with DEST_UNREACHABLE; the next-hop MTU is in ``seq``


class ICMP(Header):
    """The second word is (ident, seq) for echo; for errors it is unused or (0, MTU)."""

    NAME = "icmp"
    FIELDS = (
        Field("type", 8, ECHO_REQUEST),
        Field("code", 8),
        Field("checksum", 16, kind="flags"),
        Field("ident", 16),
        Field("seq", 16),
    )

    def is_error(self) -> bool:
        """True when the body is the offending packet."""
        return self.type in ERROR_TYPES
