"""TAP ports: a virtual Ethernet interface whose other side is this process.

A ``TapPort`` creates a TAP device (``/dev/net/tun``, ``IFF_TAP | IFF_NO_PI``:
plain Ethernet frames, no packet-information header), sets its MTU (and MAC),
brings it up, and removes it when closed: the device lives exactly as long as
the port's file descriptor. Frames the port writes enter the kernel as if
received on that interface (so the host's stack answers ARP and ping for an
address on it: in-band management, capability 9); frames the kernel sends out
of the interface are what the port reads.

Cost model: a TAP file descriptor moves one frame per ``read`` or ``write``;
there is no batched system call for it (``readv``/``writev`` gather one frame's
pieces, not several frames). So the port pays one system call a frame, but no
Python: one Numba kernel a batch loops over the slots calling libc's ``read``
(or ``write``) straight into (or from) each slot, through the libc intrinsics
of ``portico.io.afpacket``, until the device has nothing more (``EAGAIN``) or
the batch is full. Per frame that is a system call and a copy, ~1-2 µs, with
no Python object made; per batch, one kernel call. The kernel gives no
receive time through ``read``: every frame of a batch gets the time the batch
was read.

``receive(batch, timeout)`` and ``send(batch, rows)`` behave as
``AfPacketPort``'s; ``counters`` are the same ``PortCounters`` (``rx_truncated``
counts frames that filled a slot exactly, which the device may have cut).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import time
from types import TracebackType

import numpy as np
from numba import njit

from portico.batch import Batch
from portico.io.afpacket import (
    ETH_HEADER,
    IFF_UP,
    POLLFD,
    POLLIN,
    VLAN_TAG,
    PortCounters,
    TxDrop,
    interface_flags,
    interface_mtu,
    libc_errno,
    libc_read,
    libc_write,
    ppoll,
    set_interface_flags,
    set_interface_mtu,
)

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
SIOCSIFHWADDR = 0x8924
ARPHRD_ETHER = 1

# Codes the write kernel records for a frame it did not write (besides errno values).
_SKIP_RUNT = -1
_SKIP_OVERSIZED = -2


@njit(cache=True, inline="always")
def _copy(source: np.ndarray, target: np.ndarray) -> None:
    for i in range(source.shape[0]):
        target[i] = source[i]


@njit(cache=True)
def _read_frames(
    fd: int, data: np.ndarray, meta: np.ndarray, fresh: np.ndarray, headroom: int, port: int,
    now: int, outcome: np.ndarray,
) -> int:
    """read() frames into slots until the device is empty or the batch full.

    ``outcome`` gets (errno that stopped it or 0, frames that filled a slot, bytes).
    """
    room = data.shape[1] - headroom
    base = data.ctypes.data
    stride = data.strides[0]
    rows = 0
    while rows < data.shape[0]:
        got = libc_read(np.int64(fd), np.int64(base + rows * stride + headroom), np.int64(room))
        if got <= 0:
            outcome[0] = libc_errno() if got < 0 else 0
            break
        meta[rows] = fresh[0]
        meta[rows]["length"] = got
        meta[rows]["wire_length"] = got
        meta[rows]["timestamp"] = now
        meta[rows]["port"] = port
        if got == room:
            outcome[1] += 1
        outcome[2] += got
        rows += 1
    return rows


@njit(cache=True)
def _write_frames(
    fd: int, data: np.ndarray, meta: np.ndarray, rows: np.ndarray, max_frame: int,
    failed: np.ndarray, outcome: np.ndarray,
) -> int:
    """write() each row's frame; ``failed[i]`` = errno (or a _SKIP code) of row i, else 0.

    ``outcome`` gets the bytes written. Returns the frames written.
    """
    base = data.ctypes.data
    stride = data.strides[0]
    sent = 0
    for i in range(rows.shape[0]):
        row = rows[i]
        start = meta[row]["start"]
        length = meta[row]["length"]
        failed[i] = 0
        if length < ETH_HEADER:
            failed[i] = _SKIP_RUNT
            continue
        limit = max_frame
        kind = (np.int64(data[row, start + 12]) << 8) | data[row, start + 13]
        if kind == 0x8100 or kind == 0x88A8:
            limit += VLAN_TAG
        if length > limit:
            failed[i] = _SKIP_OVERSIZED
            continue
        wrote = libc_write(np.int64(fd), np.int64(base + row * stride + start), np.int64(length))
        if wrote < 0:
            failed[i] = libc_errno()
            continue
        sent += 1
        outcome[0] += length
    return sent


def _reason(code: int) -> TxDrop:
    if code == _SKIP_RUNT:
        return TxDrop.RUNT
    if code in (_SKIP_OVERSIZED, errno.EMSGSIZE):
        return TxDrop.OVERSIZED
    if code in (errno.EIO, errno.ENETDOWN):
        return TxDrop.LINK_DOWN
    if code in (errno.EBADFD, errno.ENODEV, errno.ENXIO):
        return TxDrop.NO_DEVICE
    if code in (errno.EAGAIN, errno.ENOBUFS, errno.ENOMEM):
        return TxDrop.NO_BUFFERS
    return TxDrop.REFUSED


class TapPort:
    """A TAP device made (and removed) by this port.

    ``name``: the device's name ("" lets the kernel pick ``tapN``; read it back
    from ``.name``). ``mtu`` is set when given (else the kernel's 1500 stays);
    ``mac`` too. The device is brought up unless ``up=False``. It is made in
    the calling thread's network namespace.
    """

    def __init__(self, name: str = "", *, port: int = 0, mtu: int | None = None,
                 mac: str | None = None, up: bool = True) -> None:
        if len(name.encode()) > 15:
            raise ValueError(f"interface name {name!r} is longer than 15 bytes")
        self.port = port
        self.counters = PortCounters()
        self._fd = -1
        self._control: socket.socket | None = None
        self._fds = np.zeros(1, POLLFD)
        self._fresh: dict[tuple[int, int], np.ndarray] = {}
        self._outcome = np.zeros(3, np.int64)
        self._failed = np.zeros(0, np.int64)
        try:
            self._fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            answer = fcntl.ioctl(self._fd, TUNSETIFF,
                                 struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI))
            self.name = answer[:16].rstrip(b"\0").decode()
            # An ioctl socket for the device's settings, in the namespace it was made in.
            self._control = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            if mtu is not None:
                set_interface_mtu(self._control, self.name, mtu)
            if mac is not None:
                address = bytes(int(part, 16) for part in mac.split(":"))
                fcntl.ioctl(self._control, SIOCSIFHWADDR,
                            struct.pack("16sH6s16x", self.name.encode(), ARPHRD_ETHER, address))
            if up:
                flags = interface_flags(self._control, self.name)
                set_interface_flags(self._control, self.name, flags | IFF_UP)
            self.mtu = interface_mtu(self._control, self.name)
        except BaseException:
            self.close()
            raise
        self._fds[0] = (self._fd, POLLIN, 0)

    def fileno(self) -> int:
        return self._fd

    @property
    def link_up(self) -> bool:
        if self._control is None:
            return False
        return bool(interface_flags(self._control, self.name) & IFF_UP)

    def close(self) -> None:
        """Close the device's descriptor, which removes the device."""
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> TapPort:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def statistics(self) -> PortCounters:
        return self.counters

    # -- receiving ----------------------------------------------------------------------

    def _fresh_record(self, batch: Batch) -> np.ndarray:
        key = (batch.slot_size, batch.headroom)
        fresh = self._fresh.get(key)
        if fresh is None:
            template = Batch(1, slot_size=batch.slot_size, headroom=batch.headroom)
            template.reset(1)
            fresh = template.meta[:1].copy()
            self._fresh[key] = fresh
        return fresh

    def _take(self, batch: Batch) -> int:
        self._outcome[:] = 0
        rows = _read_frames(self._fd, batch.data, batch.meta, self._fresh_record(batch),
                            batch.headroom, self.port, time.time_ns(), self._outcome)
        batch.count = rows
        code = int(self._outcome[0])
        if code not in (0, errno.EAGAIN, errno.EINTR):
            raise OSError(code, f"{self.name}: read: {os.strerror(code)}")
        self.counters.rx_packets += rows
        self.counters.rx_truncated += int(self._outcome[1])
        self.counters.rx_bytes += int(self._outcome[2])
        return rows

    def receive(self, batch: Batch, timeout: float | None = 0.0) -> int:
        """Fill rows [0, n) of ``batch``; wait up to ``timeout`` s (None: forever) for a first."""
        if self._fd < 0:
            raise ValueError("the TAP port is closed")
        rows = self._take(batch)
        if rows or timeout == 0:
            return rows
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return 0
            ppoll(self._fds, remaining)
            rows = self._take(batch)
            if rows:
                return rows

    # -- sending ------------------------------------------------------------------------

    def send(self, batch: Batch, rows: np.ndarray | None = None) -> int:
        """Write ``rows`` of ``batch`` (all by default; indices or a mask) into the kernel."""
        if self._fd < 0:
            raise ValueError("the TAP port is closed")
        if rows is None:
            selected = np.arange(batch.count, dtype=np.int64)
        else:
            selected = np.asarray(rows)
            if selected.dtype == np.bool_:
                selected = np.flatnonzero(selected[: batch.count])
            selected = selected.astype(np.int64, copy=False)
            if selected.size and (selected.min() < 0 or selected.max() >= batch.count):
                raise ValueError(f"rows must be within the batch's {batch.count} rows")
        if self._failed.shape[0] < selected.size:
            self._failed = np.zeros(max(selected.size, 64), np.int64)
        self._outcome[:] = 0
        sent = _write_frames(self._fd, batch.data, batch.meta, selected, self.mtu + ETH_HEADER,
                             self._failed, self._outcome)
        self.counters.tx_packets += sent
        self.counters.tx_bytes += int(self._outcome[0])
        if sent < selected.size:
            codes, counts = np.unique(self._failed[: selected.size], return_counts=True)
            for code, count in zip(codes.tolist(), counts.tolist(), strict=True):
                if code:
                    self.counters.drop(_reason(code), count)
        return sent

    def __repr__(self) -> str:
        return f"TapPort({getattr(self, 'name', '?')!r}, port={self.port})"


__all__ = ["TapPort"]
