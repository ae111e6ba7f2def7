"""Ports: where Batches come from and go to.

Capture files now (``capture``: pcap and pcapng, by ``pcap`` and ``pcapng``);
AF_PACKET rings, TAP devices and in-memory queues join here later.
"""

from portico.io.capture import (
    CaptureError,
    CaptureReader,
    CaptureWriter,
    Format,
    open_capture,
)
from portico.io.pcap import Interface

__all__ = ["CaptureError", "CaptureReader", "CaptureWriter", "Format", "Interface", "open_capture"]
