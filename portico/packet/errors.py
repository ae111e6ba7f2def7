"""Errors of the scalar codec. The batch parser never raises; it records drop reasons."""

from __future__ import annotations


class PacketError(ValueError):
    """A header could not be built or decoded; the message names the header and field."""


class TruncatedError(PacketError):
    def __init__(self, header: str, *, need: int, have: int) -> None:
        super().__init__(f"{header}: truncated: needs {need} bytes, {have} left")
        self.header = header
        self.need = need
        self.have = have
