"""Ports: where Batches come from and go to.

Capture files (``capture``: pcap and pcapng, by ``pcap`` and ``pcapng``), Linux
interfaces through AF_PACKET rings (``afpacket.AfPacketPort``) and TAP devices
(``tap.TapPort``); in-memory queues join here later. The live ports are
imported from their modules (they compile Numba kernels and need Linux), not
from here.
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
