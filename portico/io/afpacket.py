"""AF_PACKET ports: Linux interfaces read through a TPACKET_V3 ring, written with sendmmsg.

An ``AfPacketPort`` owns one packet socket bound to one interface. Receiving,
the kernel copies frames into a memory-mapped ring of blocks (``PACKET_RX_RING``,
``TPACKET_V3``); ``receive(batch)`` hands the ring to one Numba kernel that walks
the frames of every ready block straight into the Batch's slots and fills
``start``/``length``/``wire_length``/``timestamp``/``port``, so no Python object
is made per packet. Sending, ``send(batch, rows)`` has a kernel fill an array of
``mmsghdr``/``iovec`` records that point into the Batch's slots, and passes the
lot to the kernel in one ``sendmmsg`` call: one copy, one system call a batch.

Theory of operation: latency without giving up blocks
------------------------------------------------------

With TPACKET_V3 the kernel fills a block with many frames and hands it over
(sets ``TP_STATUS_USER`` and wakes the reader) only when the block is full or
its retire timer fires (``tp_retire_blk_tov``, whole milliseconds, 1 at least).
Under load blocks fill in microseconds and that is what makes V3 cheap; on a
lightly loaded link a frame waits for the timer, which is the ~1.1 ms round
trip the first prototype measured. libpcap's answer is to give up V3 in
"immediate mode" and use TPACKET_V2, one wake-up per frame. We keep V3 and take
the frames out of the block the kernel is still filling:

* **Reading the open block.** ``tpacket_rcv`` reserves a frame (counting it
  in the block's ``num_pkts`` and resetting its ``tp_status``), copies the
  frame, and only then ORs ``TP_STATUS_USER`` into the frame's own
  ``tp_status`` and writes ``tp_snaplen``, ``tp_mac``, ``tp_sec``, ... So a
  frame of the open block is complete once its status, length, offset and time
  are all non-zero, provided the memory held zeros before the kernel wrote
  there: stale bytes from the block's previous lap could look like a header.
  Hence every block is zeroed over the extent the kernel used (``blk_len``)
  before it is handed back, and handed back (its status stored) only at the
  next ``receive``, so the zeroing is complete before the kernel can see the
  block as free. The memset costs ~10 ns a 64-byte frame. The kernel writes
  the header after the frame data and x86 keeps stores in order, so the data
  is visible first; elsewhere (``_PEEK_SAFE``) only retired blocks are read.
* **Waking on the first frame.** V3 calls ``sk_data_ready`` only on retire, so
  a reader asleep in ``poll`` would still wait for the timer. The port keeps a
  second, tiny packet socket on the same interface (the *waker*): a classic
  BPF filter cuts every frame to 1 byte and its receive buffer holds only a
  few. ``receive`` sleeps in ``ppoll`` on both sockets; the waker's readiness
  means "the ring has a frame", which is then taken from the open block. The
  waker is bound before the ring socket so the ring is first in the device's
  tap list: when the waker has a frame, the ring has it too. Before sleeping,
  ``receive`` drains the waker and looks at the ring once more, so a wake-up is
  never lost.
* **Adapting to load.** A wake-up per frame is right for a quiet link and
  wasteful for a busy one (a clone per frame in the kernel, a wake-up and a
  lap of the caller's loop per handful of frames). When one ``receive`` takes
  ``busy_batch`` frames or more, the port swaps the waker's filter for one that
  drops everything (a one-instruction BPF run per frame, nothing else) and
  sleeps in naps of ``hot_slice`` (50 µs), taking what the open block has
  gathered after each; once ``hot_window`` (5 ms) passes without a frame the
  waker is armed again. Without a waker at all (the default with ``fanout``,
  where every worker's waker would see every frame of the interface) the port
  naps the same way while traffic is recent and otherwise waits for a retire,
  so latency after a quiet spell is bounded by ``retire_ms``.
* **Ring geometry.** The retire timer also closes a block that holds a single
  frame, so at moderate rates a block is retired mostly empty: the ring holds
  as many *blocks* of traffic as it has blocks, whatever their size. Hence many
  small blocks (64 of 64 KiB by default) rather than a few large ones.

System calls made from kernels (``sendmmsg``; ``read``/``write`` for TAP ports)
go through Numba intrinsics that name the libc function (``libc_sendmmsg``...):
the kernels stay cacheable and dispatch fast. (Passing a ctypes function as an
argument instead makes Numba type every argument the slow way, ~0.5 ms a call
with a Batch's structured ``meta``.)

Measured with ``python -m bench.live`` on this project's 2-core VM while other
work shared it, veth pairs, a one-thread forwarder of two such ports in its
own namespace, ICMP echo from a client namespace to a server namespace
through it (p50 of 500 round trips, 10 ms apart; two forwarder passes each):

::

    receive strategy                   RTT p50         forwarder rate
    kernel bridge (reference)          0.13-0.16 ms    (as fast as the sender)
    Python recv/send per frame (ref.)  0.20-0.29 ms    0.04-0.13 Mpps, falls behind
    waker + open block (the default)   0.28-0.40 ms    0.41-0.56 Mpps
    naps, no waker (fanout default)    0.89-0.92 ms    0.34-0.59 Mpps
    retired blocks only (plain V3)     0.91-1.9 ms     0.33-0.64 Mpps

The ports' rates are what the forwarder moved out of a full ring with nobody
else sending (the live sender, sharing the two cores, is slower than the
forwarder); all figures swing with the machine's other load. Receiving costs
~50 ns a frame (256-frame batches); sending ~2.3 µs a frame, nearly all of it
the kernel's (``sendmmsg`` runs veth's transmit and the peer's receive path).

Link state: the kernel keeps a bound packet socket across its interface going
down and up (it re-registers the tap on ``NETDEV_UP``), so the port only
notices (``link_up``, ``counters.link_downs``) and counts what it cannot send.
When the interface is deleted and re-created under the same name (a new
ifindex), the old socket is dead: the port finds out through ``POLLERR``, a
send error (``ENXIO``, ``ENODEV``) or its periodic check, and reopens itself
in the network namespace it was created in (``counters.reopens``). MTU is read
at open and on ``EMSGSIZE``; frames longer than MTU + Ethernet header (+4 for
a VLAN tag) are not sent and are counted as ``oversized``.

Counters: ``rx_packets``, ``rx_bytes``, ``rx_truncated`` (frame longer than a
slot, cut), ``rx_early`` (taken from the open block, before its retire),
``rx_kernel_drops`` (the ring was full: ``tp_drops`` of
``PACKET_STATISTICS``), ``tx_packets``, ``tx_bytes``, ``tx_drops`` by reason
(``TxDrop``), ``reopens``, ``link_downs``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import math
import mmap
import os
import platform
import select
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from types import TracebackType
from typing import Any, cast

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from portico.batch import META_DTYPE, Batch

# <linux/if_packet.h>, <linux/if_ether.h>, <asm-generic/socket.h>
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_FANOUT = 18
PACKET_QDISC_BYPASS = 20
PACKET_IGNORE_OUTGOING = 23
PACKET_MR_PROMISC = 1
TPACKET_V3 = 2
ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_BLK_TMO = 0x20
TP_STATUS_VLAN_TPID_VALID = 0x40

FANOUT_MODES = {"hash": 0, "lb": 1, "cpu": 2, "rollover": 3, "random": 4, "qm": 5}

# <linux/sockios.h>, <net/if.h>
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGIFMTU = 0x8921
SIOCSIFMTU = 0x8922
SIOCGIFINDEX = 0x8933
SIOCETHTOOL = 0x8946
ETHTOOL_GLINK = 0x0000000A
IFF_UP = 0x1
IFF_RUNNING = 0x40
CLONE_NEWNET = 0x40000000

ETH_HEADER = 14
VLAN_TAG = 4

# The layouts the kernel shares with us (byte offsets).
BLOCK_STATUS, BLOCK_NUM_PKTS, BLOCK_FIRST, BLOCK_LEN = 8, 12, 16, 20
PKT_NEXT, PKT_SEC, PKT_NSEC, PKT_SNAPLEN, PKT_LEN, PKT_STATUS = 0, 4, 8, 12, 16, 20
PKT_MAC, PKT_VLAN_TCI, PKT_VLAN_TPID = 24, 32, 36

# x86 keeps stores in order, which reading the open block relies on (see above).
_PEEK_SAFE = platform.machine() in ("x86_64", "AMD64", "i686", "i386")

DEFAULT_BLOCK_SIZE = 1 << 16
DEFAULT_BLOCK_COUNT = 64
DEFAULT_RETIRE_MS = 1
DEFAULT_HOT_WINDOW = 0.005
DEFAULT_HOT_SLICE = 0.00005
DEFAULT_BUSY_BATCH = 16
DEFAULT_LINK_CHECK = 0.5
WAKER_RCVBUF = 4096  # the kernel's floor is ~4.6 KB: a handful of 1-byte clones
WAKER_DRAIN_LIMIT = 64


class TxDrop(IntEnum):
    """Why a frame handed to ``send`` did not leave (counted in ``counters.tx_drops``)."""

    OVERSIZED = 1  # longer than MTU + Ethernet header (+ a VLAN tag)
    RUNT = 2  # shorter than an Ethernet header
    LINK_DOWN = 3  # the interface is down or has no carrier
    NO_DEVICE = 4  # the interface is gone and has not come back
    NO_BUFFERS = 5  # the device queue refused the frame (ENOBUFS, EAGAIN)
    REFUSED = 6  # any other error the kernel gave for this frame


def drop_name(reason: int) -> str:
    return TxDrop(reason).name.lower().replace("_", "-")


@dataclass
class PortCounters:
    """What a port has done since it was opened; ``as_dict`` for metrics and logs."""

    rx_packets: int = 0
    rx_bytes: int = 0
    rx_truncated: int = 0
    rx_early: int = 0
    rx_kernel_drops: int = 0
    rx_freezes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    tx_drops: dict[str, int] = field(default_factory=dict)
    reopens: int = 0
    link_downs: int = 0

    @property
    def tx_errors(self) -> int:
        return sum(self.tx_drops.values())

    def drop(self, reason: TxDrop, count: int = 1) -> None:
        if count:
            name = drop_name(reason)
            self.tx_drops[name] = self.tx_drops.get(name, 0) + count

    def as_dict(self) -> dict[str, Any]:
        return {
            "rx_packets": self.rx_packets, "rx_bytes": self.rx_bytes,
            "rx_truncated": self.rx_truncated, "rx_early": self.rx_early,
            "rx_kernel_drops": self.rx_kernel_drops,
            "rx_freezes": self.rx_freezes, "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes, "tx_errors": self.tx_errors,
            "tx_drops": dict(self.tx_drops), "reopens": self.reopens,
            "link_downs": self.link_downs,
        }


# ---------------------------------------------------------------- libc, through ctypes
_libc = ctypes.CDLL(None, use_errno=True)
_ppoll = _libc.ppoll
_ppoll.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_void_p]
_ppoll.restype = ctypes.c_int
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int
_recv = _libc.recv
_recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_recv.restype = ctypes.c_ssize_t
MSG_DONTWAIT = socket.MSG_DONTWAIT
_setns = _libc.setns
_setns.argtypes = [ctypes.c_int, ctypes.c_int]
_setns.restype = ctypes.c_int

POLLFD = np.dtype([("fd", "<i4"), ("events", "<i2"), ("revents", "<i2")])
POLLIN, POLLERR, POLLHUP, POLLNVAL = (select.POLLIN, select.POLLERR, select.POLLHUP,
                                      select.POLLNVAL)
MMSGHDR_WORDS = 8  # struct mmsghdr: msghdr (56 bytes) + msg_len + padding = 64 bytes
IOVEC_WORDS = 2


def ppoll(fds: np.ndarray, timeout: float | None) -> int:
    """``ppoll`` over a ``POLLFD`` array with a nanosecond timeout (None: forever).

    Python's ``select.poll`` counts milliseconds, too coarse for a port that
    sleeps in 50 µs slices. A signal (Ctrl-C) ends the wait early: the handler
    runs when this returns to the interpreter.
    """
    fds["revents"] = 0
    if timeout is None:
        spec = None
    else:
        nanoseconds = max(0, int(timeout * 1e9))
        spec = (ctypes.c_long * 2)(nanoseconds // 1_000_000_000, nanoseconds % 1_000_000_000)
    ready = _ppoll(fds.ctypes.data, fds.shape[0], spec, None)
    if ready < 0:
        code = ctypes.get_errno()
        if code != errno.EINTR:
            raise OSError(code, os.strerror(code))
        return 0
    return ready


# Calls into libc from Numba kernels. An @intrinsic declares the C function by
# name and the JIT links it to the process's libc, so the calling kernel stays
# cacheable and its dispatch fast (a ctypes function passed as an argument makes
# Numba type every argument the slow way: ~0.5 ms a call with a Batch's meta).
_I32, _I64, _BYTES = ir.IntType(32), ir.IntType(64), ir.IntType(8).as_pointer()


@intrinsic
def _libc_sendmmsg(typingctx: Any, fd: Any, messages: Any, count: Any) -> Any:
    """``sendmmsg(fd, messages, count, 0)`` (all int64 in, int64 out; -1 and errno on error)."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        kind = ir.FunctionType(_I32, [_I32, _BYTES, _I32, _I32])
        function = cgutils.get_or_insert_function(builder.module, kind, "sendmmsg")
        fd_, messages_, count_ = args
        result = builder.call(function, [builder.trunc(fd_, _I32),
                                         builder.inttoptr(messages_, _BYTES),
                                         builder.trunc(count_, _I32), ir.Constant(_I32, 0)])
        return builder.sext(result, _I64)
    return types.int64(types.int64, types.int64, types.int64), codegen


def _fd_bytes_call(name: str) -> Any:
    """An intrinsic ``name(fd, address, size)`` returning its ``ssize_t``: libc's ``read``
    and ``write`` share one shape."""
    def call(typingctx: Any, fd: Any, address: Any, size: Any) -> Any:
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            kind = ir.FunctionType(_I64, [_I32, _BYTES, _I64])
            function = cgutils.get_or_insert_function(builder.module, kind, name)
            fd_, address_, size_ = args
            return builder.call(function, [builder.trunc(fd_, _I32),
                                           builder.inttoptr(address_, _BYTES), size_])
        return types.int64(types.int64, types.int64, types.int64), codegen

    call.__name__ = call.__qualname__ = f"_libc_{name}"
    call.__doc__ = f"``{name}(fd, address, size)``."
    return intrinsic(call)


_libc_read = _fd_bytes_call("read")
_libc_write = _fd_bytes_call("write")


@intrinsic
def _libc_errno(typingctx: Any) -> Any:
    """The calling thread's ``errno``."""
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        kind = ir.FunctionType(_I32.as_pointer(), [])
        function = cgutils.get_or_insert_function(builder.module, kind, "__errno_location")
        return builder.sext(builder.load(builder.call(function, [])), _I64)
    return types.int64(), codegen


# Typed names for the kernels (and mypy, which sees an intrinsic's typing function).
libc_sendmmsg = cast(Callable[..., int], _libc_sendmmsg)
libc_read = cast(Callable[..., int], _libc_read)
libc_write = cast(Callable[..., int], _libc_write)
libc_errno = cast(Callable[..., int], _libc_errno)


class Netns:
    """The network namespace a port was opened in, to reopen it there from any thread.

    Namespaces belong to threads: a test (or the lab) may open a port while its
    thread has entered a namespace and use it from elsewhere. Sockets keep
    their namespace; a socket made later, to recover from a re-created
    interface, must be made back in it.
    """

    def __init__(self) -> None:
        self.fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.inode = os.fstat(self.fd).st_ino

    def enter(self) -> int | None:
        """Enter this namespace if the calling thread is elsewhere; the fd to go back to."""
        if os.stat("/proc/thread-self/ns/net").st_ino == self.inode:
            return None
        back = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        if _setns(self.fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            os.close(back)
            raise OSError(code, f"setns: {os.strerror(code)}")
        return back

    @staticmethod
    def leave(back: int | None) -> None:
        if back is not None:
            try:
                if _setns(back, CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"setns back: {os.strerror(code)}")
            finally:
                os.close(back)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# ---------------------------------------------------------------- interface ioctls
def _ifreq(name: str, value: bytes = b"") -> bytes:
    encoded = name.encode()
    if not 0 < len(encoded) < 16:
        raise ValueError(f"interface name {name!r} must be 1 to 15 bytes")
    return struct.pack("16s", encoded) + value.ljust(24, b"\0")


def interface_index(sock: socket.socket, name: str) -> int:
    """The ifindex of ``name`` in the socket's namespace (OSError ENODEV if none)."""
    return int(struct.unpack_from("i", fcntl.ioctl(sock, SIOCGIFINDEX, _ifreq(name)), 16)[0])


def interface_flags(sock: socket.socket, name: str) -> int:
    return int(struct.unpack_from("H", fcntl.ioctl(sock, SIOCGIFFLAGS, _ifreq(name)), 16)[0])


def set_interface_flags(sock: socket.socket, name: str, flags: int) -> None:
    fcntl.ioctl(sock, SIOCSIFFLAGS, _ifreq(name, struct.pack("H", flags)))


def interface_mtu(sock: socket.socket, name: str) -> int:
    return int(struct.unpack_from("i", fcntl.ioctl(sock, SIOCGIFMTU, _ifreq(name)), 16)[0])


def interface_carrier(sock: socket.socket, name: str) -> bool | None:
    """Whether the interface has a carrier now (ETHTOOL_GLINK); None if it cannot say.

    ``IFF_RUNNING`` says so too, but only once the kernel's link watcher has run,
    up to a second after the carrier came back.
    """
    value = ctypes.create_string_buffer(struct.pack("II", ETHTOOL_GLINK, 0), 8)
    request = struct.pack("16sQ16x", name.encode(), ctypes.addressof(value))
    try:
        fcntl.ioctl(sock, SIOCETHTOOL, request)
    except OSError as error:
        if error.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            return None
        raise
    return bool(struct.unpack_from("I", value.raw, 4)[0])


def link_is_up(sock: socket.socket, name: str) -> bool:
    """Administratively up and with a carrier (a veth whose peer is down has none)."""
    flags = interface_flags(sock, name)
    if not flags & IFF_UP:
        return False
    carrier = interface_carrier(sock, name)
    return bool(flags & IFF_RUNNING) if carrier is None else carrier


def set_interface_mtu(sock: socket.socket, name: str, mtu: int) -> None:
    fcntl.ioctl(sock, SIOCSIFMTU, _ifreq(name, struct.pack("i", mtu)))


# ---------------------------------------------------------------- the kernels
@njit(cache=True, inline="always")
def _copy(source: np.ndarray, target: np.ndarray) -> None:
    for i in range(source.shape[0]):
        target[i] = source[i]


# The walk's state, one int64 array (a kernel pays per array argument at call time).
S_BLOCK, S_TAKEN, S_OFFSET = 0, 1, 2  # where the walk is: block, frames taken, next offset
S_BYTES, S_TRUNCATED, S_EARLY = 3, 4, 5  # tallies since the caller last read them
S_RELEASE_COUNT = 6  # blocks emptied and zeroed, to hand back at the next call
S_RELEASE = 8  # ... and their numbers, from here


@njit(cache=True)
def _walk_ring(
    ring: np.ndarray, ring32: np.ndarray, block_size: int, state: np.ndarray,
    read_open_block: bool, data: np.ndarray, meta: np.ndarray, fresh: np.ndarray,
    headroom: int, port: int,
) -> int:
    """Copy ready frames from the ring into batch rows [0, capacity); the rows filled.

    First hands back the blocks the previous call emptied: their status is
    stored only now, in a later call than their zeroing, so the kernel can
    never see a block as free before its memory is clean. Then walks from the
    state's position: a retired block frame by frame; the open block too when
    ``read_open_block``, up to its first frame still being copied. An emptied
    retired block is zeroed over the bytes the kernel used (when reading open
    blocks, which needs clean memory) and listed for release.
    """
    blocks = ring32.shape[0] * 4 // block_size
    for i in range(state[S_RELEASE_COUNT]):
        ring32[(state[S_RELEASE + i] * block_size + BLOCK_STATUS) >> 2] = TP_STATUS_KERNEL
    state[S_RELEASE_COUNT] = 0
    capacity = data.shape[0]
    room = data.shape[1] - headroom
    block, taken, offset = state[S_BLOCK], state[S_TAKEN], state[S_OFFSET]
    row = 0
    released = 0
    while row < capacity and released < blocks:
        base = block * block_size
        status = int(ring32[(base + BLOCK_STATUS) >> 2])
        retired = (status & TP_STATUS_USER) != 0
        if not retired and not read_open_block:
            break
        count = int(ring32[(base + BLOCK_NUM_PKTS) >> 2])
        if offset == 0:
            offset = int(ring32[(base + BLOCK_FIRST) >> 2])
            if offset == 0:  # a block the kernel has not opened yet
                break
        while row < capacity and taken < count:
            pos = base + offset
            # 32-bit loads: the kernel stores each field whole, so none reads half-written.
            frame_status = int(ring32[(pos + PKT_STATUS) >> 2])
            snaplen = int(ring32[(pos + PKT_SNAPLEN) >> 2])
            mac = int(ring32[(pos + PKT_MAC) >> 2]) & 0xFFFF
            step = int(ring32[(pos + PKT_NEXT) >> 2])
            seconds = int(ring32[(pos + PKT_SEC) >> 2])
            nanoseconds = int(ring32[(pos + PKT_NSEC) >> 2])
            if not retired and (
                (frame_status & TP_STATUS_USER) == 0 or snaplen == 0 or mac == 0
                or step == 0 or seconds == 0 or nanoseconds == 0
            ):
                break  # still being copied: taken at the next look, or once retired
            wire = int(ring32[(pos + PKT_LEN) >> 2])
            source = pos + mac
            target = data[row]
            if frame_status & TP_STATUS_VLAN_VALID:
                # The kernel moved the tag into metadata; the datapath wants it in the frame.
                tpid = 0x8100
                if frame_status & TP_STATUS_VLAN_TPID_VALID:
                    tpid = int(ring32[(pos + PKT_VLAN_TPID) >> 2]) & 0xFFFF
                tci = int(ring32[(pos + PKT_VLAN_TCI) >> 2]) & 0xFFFF
                _copy(ring[source : source + 12], target[headroom : headroom + 12])
                target[headroom + 12] = (tpid >> 8) & 0xFF
                target[headroom + 13] = tpid & 0xFF
                target[headroom + 14] = (tci >> 8) & 0xFF
                target[headroom + 15] = tci & 0xFF
                n = min(snaplen + VLAN_TAG, room)
                rest = max(0, n - 16)
                _copy(ring[source + 12 : source + 12 + rest],
                      target[headroom + 16 : headroom + 16 + rest])
                wire += VLAN_TAG
                snaplen += VLAN_TAG
            else:
                n = min(snaplen, room)
                _copy(ring[source : source + n], target[headroom : headroom + n])
            if n < snaplen:
                state[S_TRUNCATED] += 1
            meta[row] = fresh[0]
            meta[row]["length"] = n
            meta[row]["wire_length"] = max(wire, n)
            meta[row]["timestamp"] = seconds * 1_000_000_000 + nanoseconds
            meta[row]["port"] = port
            state[S_BYTES] += wire
            if not retired:
                state[S_EARLY] += 1
            row += 1
            taken += 1
            offset += step
        if taken < count or not retired:
            break
        if read_open_block:
            used = int(ring32[(base + BLOCK_LEN) >> 2])
            first = int(ring32[(base + BLOCK_FIRST) >> 2])
            ring[base + first : base + used] = 0
        state[S_RELEASE + released] = block
        released += 1
        block = (block + 1) % blocks
        taken = 0
        offset = 0
    state[S_RELEASE_COUNT] = released
    state[S_BLOCK], state[S_TAKEN], state[S_OFFSET] = block, taken, offset
    return row


# What _send_rows reports besides the frames sent (one int64 array).
T_OVERSIZED, T_RUNTS, T_BYTES, T_PREPARED, T_ERRNO = 0, 1, 2, 3, 4


@njit(cache=True)
def _send_rows(
    fd: int, data: np.ndarray, meta: np.ndarray,
    rows: np.ndarray, count: int, max_frame: int, iov: np.ndarray, msgs: np.ndarray,
    tally: np.ndarray,
) -> int:
    """Point one mmsghdr/iovec per sendable row at its bytes, then sendmmsg them.

    Rows too short for an Ethernet header or longer than ``max_frame`` (+4 with
    a VLAN tag) are counted, not sent. libc's ``sendmmsg`` is called from here,
    so a batch costs one kernel call and one system call. Returns the messages
    the first ``sendmmsg`` took; ``tally`` gets the messages prepared and, if
    that was not all, the errno (the caller decides what to do about it).
    """
    base = data.ctypes.data
    stride = data.strides[0]
    iov_base = iov.ctypes.data
    k = 0
    for i in range(count):
        row = rows[i]
        start = meta[row]["start"]
        length = meta[row]["length"]
        if length < ETH_HEADER:
            tally[T_RUNTS] += 1
            continue
        limit = max_frame
        kind = (np.int64(data[row, start + 12]) << 8) | data[row, start + 13]
        if kind == 0x8100 or kind == 0x88A8:
            limit += VLAN_TAG
        if length > limit:
            tally[T_OVERSIZED] += 1
            continue
        iov[k, 0] = base + row * stride + start
        iov[k, 1] = length
        msgs[k, 0] = 0  # msg_name: the socket is bound to its interface
        msgs[k, 1] = 0
        msgs[k, 2] = iov_base + k * IOVEC_WORDS * 8
        msgs[k, 3] = 1
        msgs[k, 4] = 0
        msgs[k, 5] = 0
        msgs[k, 6] = 0
        msgs[k, 7] = 0
        tally[T_BYTES] += length
        k += 1
    tally[T_PREPARED] = k
    if k == 0:
        return 0
    sent = libc_sendmmsg(np.int64(fd), np.int64(msgs.ctypes.data), np.int64(k))
    if sent < 0:
        tally[T_ERRNO] = libc_errno()
        return 0
    return sent


# ---------------------------------------------------------------- the port
class AfPacketPort:
    """One Linux interface as a port: TPACKET_V3 ring in, sendmmsg out.

    ``interface`` is a name in the calling thread's network namespace; ``port``
    is what ``meta["port"]`` says for its frames. ``fanout`` joins a
    ``PACKET_FANOUT`` group of that id (``fanout_mode``: hash, lb, cpu, rollover,
    random, qm) so worker processes share the interface's flows. ``waker``
    (default: on without fanout) keeps the wake-up socket described above;
    ``read_open_block=False`` takes frames only from retired blocks (the plain
    V3 behaviour, for comparison). ``retire_ms`` is the kernel's block timer.

    A port is driven by one thread at a time (``receive``, ``send`` and
    ``check_link`` share its state).
    """

    def __init__(
        self,
        interface: str,
        *,
        port: int = 0,
        promiscuous: bool = True,
        fanout: int | None = None,
        fanout_mode: str = "hash",
        block_size: int = DEFAULT_BLOCK_SIZE,
        block_count: int = DEFAULT_BLOCK_COUNT,
        retire_ms: int = DEFAULT_RETIRE_MS,
        waker: bool | None = None,
        hot_window: float = DEFAULT_HOT_WINDOW,
        hot_slice: float = DEFAULT_HOT_SLICE,
        busy_batch: int = DEFAULT_BUSY_BATCH,
        link_check: float = DEFAULT_LINK_CHECK,
        qdisc_bypass: bool = False,
        read_open_block: bool = True,
    ) -> None:
        if block_size < mmap.PAGESIZE or block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of two of at least a page, "
                             f"got {block_size}")
        if block_count < 2:
            raise ValueError(f"block_count must be at least 2, got {block_count}")
        if not 1 <= retire_ms <= 60_000:
            raise ValueError(f"retire_ms must be 1..60000 (the kernel counts ms), got {retire_ms}")
        if fanout is not None and not 0 <= fanout <= 0xFFFF:
            raise ValueError(f"fanout group id must be 0..65535, got {fanout}")
        if fanout_mode not in FANOUT_MODES:
            raise ValueError(f"fanout_mode must be one of {', '.join(FANOUT_MODES)}, "
                             f"got {fanout_mode!r}")
        _ifreq(interface)  # validates the name
        self.name = interface
        self.port = port
        self.promiscuous = promiscuous
        self.fanout = fanout
        self.fanout_mode = fanout_mode
        self.block_size = block_size
        self.block_count = block_count
        self.retire_ms = retire_ms
        self.read_open_block = read_open_block and _PEEK_SAFE
        # A wake-up is worth nothing if the frame cannot be taken before its retire.
        self.use_waker = ((fanout is None) if waker is None else waker) and self.read_open_block
        self.busy_batch = busy_batch
        self.hot_window = hot_window
        self.hot_slice = hot_slice
        self.link_check = link_check
        self.qdisc_bypass = qdisc_bypass
        self.counters = PortCounters()
        self.ifindex = 0
        self.mtu = 0
        self.link_up = False
        self.gone = False  # the interface vanished and has not come back yet
        self._netns = Netns()
        self._sock: socket.socket | None = None
        self._waker: socket.socket | None = None
        self._map: mmap.mmap | None = None
        self._ring = np.zeros(0, np.uint8)
        self._ring32 = np.zeros(0, np.uint32)
        self._state = np.zeros(S_RELEASE + block_count, np.int64)
        self._fds = np.zeros(2, POLLFD)
        self._fd_pair = (-1, -1)
        self._fresh = np.zeros(1, META_DTYPE)
        self._fresh_headroom = -1
        self._drain_buffer = ctypes.create_string_buffer(16)
        self._waker_armed = False
        self._iov = np.zeros((0, IOVEC_WORDS), np.uint64)
        self._msgs = np.zeros((0, MMSGHDR_WORDS), np.uint64)
        self._all_rows = np.zeros(0, np.int64)
        self._send_tally = np.zeros(5, np.int64)
        self._last_rx = 0.0
        self._last_check = 0.0
        self._skipped: list[int] = []
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # -- opening and closing ------------------------------------------------------------

    def _open(self) -> None:
        back = self._netns.enter()
        try:
            # Protocol 0 until bound: a socket made with ETH_P_ALL taps every interface.
            probe = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            try:
                try:
                    self.ifindex = interface_index(probe, self.name)
                except OSError as error:
                    raise OSError(error.errno, f"{self.name}: no such interface") from None
                self.mtu = interface_mtu(probe, self.name)
                self.link_up = link_is_up(probe, self.name)
            finally:
                probe.close()
            if self.use_waker:
                # Bound first, so the ring's tap comes before it in the device's list.
                waker = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
                self._waker = waker
                waker.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, WAKER_RCVBUF)
                self._arm_waker(True)
                waker.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
                waker.setblocking(False)
                waker.bind((self.name, ETH_P_ALL))
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            self._sock = sock
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            # Our own transmissions (and the host's) on this interface are not ingress.
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            if self.qdisc_bypass:
                sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            frame = 2048
            request = struct.pack(
                "7I", self.block_size, self.block_count, frame,
                self.block_size // frame * self.block_count, self.retire_ms, 0, 0)
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, request)
            size = self.block_size * self.block_count
            self._map = mmap.mmap(sock.fileno(), size, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
            self._ring = np.frombuffer(self._map, dtype=np.uint8)
            self._ring32 = self._ring.view(np.uint32)
            self._state[:] = 0  # and a fresh mapping is all zeros
            sock.bind((self.name, ETH_P_ALL))
            if self.promiscuous:
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                                struct.pack("iHH8s", self.ifindex, PACKET_MR_PROMISC, 0, b""))
            if self.fanout is not None:
                sock.setsockopt(SOL_PACKET, PACKET_FANOUT,
                                self.fanout | (FANOUT_MODES[self.fanout_mode] << 16))
        finally:
            Netns.leave(back)
        self._fds[0] = (sock.fileno(), POLLIN, 0)
        self._fds[1] = (self._waker.fileno() if self._waker else -1, POLLIN, 0)
        self._fd_pair = (int(self._fds[0]["fd"]), int(self._fds[1]["fd"]))
        self.gone = False
        self._last_check = time.monotonic()

    def _close_sockets(self) -> None:
        # The NumPy views export the mapping's buffer: drop them before closing it.
        self._ring = np.zeros(0, np.uint8)
        self._ring32 = np.zeros(0, np.uint32)
        if self._map is not None:
            self._map.close()
            self._map = None
        for sock in (self._sock, self._waker):
            if sock is not None:
                sock.close()
        self._sock = self._waker = None
        self._waker_armed = False
        self._fds["fd"] = -1  # ppoll skips negative fds; a closed one could be reused
        self._fd_pair = (-1, -1)

    def close(self) -> None:
        self._collect_statistics()
        self._close_sockets()
        self._netns.close()

    def __enter__(self) -> AfPacketPort:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def fileno(self) -> int:
        """The ring socket: readable when a block is retired (see ``receive`` for more)."""
        return -1 if self._sock is None else self._sock.fileno()

    # -- link state ---------------------------------------------------------------------

    def check_link(self) -> None:
        """Look at the interface now: up/down, MTU, and reopen if it was re-created."""
        self._last_check = time.monotonic()
        if self._sock is None:
            self._try_reopen()
            return
        try:
            index = interface_index(self._sock, self.name)
            up = link_is_up(self._sock, self.name)
            self.mtu = interface_mtu(self._sock, self.name)
        except OSError as error:
            if error.errno in (errno.ENODEV, errno.ENXIO):
                self._went_down()
                self.gone = True
                return
            raise
        if index != self.ifindex:
            self._reopen()
            return
        if not up:
            self._went_down()
        self.link_up = up
        self.gone = False

    def _went_down(self) -> None:
        if self.link_up:
            self.counters.link_downs += 1
        self.link_up = False

    def _reopen(self) -> None:
        self._collect_statistics()
        self._close_sockets()
        self._try_reopen()

    def _try_reopen(self) -> None:
        # EINVAL from PACKET_FANOUT: the group still holds members bound to the old
        # interface (other workers that have not noticed yet); once they have reopened
        # too the old group is gone, so try again later, like a missing interface.
        retry = {errno.ENODEV, errno.ENXIO, errno.ENETDOWN}
        if self.fanout is not None:
            retry.add(errno.EINVAL)
        try:
            self._open()
        except OSError as error:
            if error.errno not in retry:
                raise
            self._close_sockets()
            self.gone = True
            self.link_up = False
            return
        self.counters.reopens += 1
        self.check_link()

    def _collect_statistics(self) -> None:
        if self._sock is None:
            return
        try:  # tpacket_stats_v3, cleared by reading
            packets, drops, freezes = struct.unpack(
                "3I", self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12))
        except OSError:
            return
        self.counters.rx_kernel_drops += drops
        self.counters.rx_freezes += freezes

    def statistics(self) -> PortCounters:
        """The counters, with the kernel's ring drops brought up to date."""
        self._collect_statistics()
        return self.counters

    # -- receiving ----------------------------------------------------------------------

    def _take(self, batch: Batch) -> int:
        if batch.headroom != self._fresh_headroom:
            # What a freshly reset row holds, for this headroom (Batch.reset makes it).
            template = Batch(1, slot_size=batch.slot_size, headroom=batch.headroom)
            template.reset(1)
            self._fresh = template.meta[:1].copy()
            self._fresh_headroom = batch.headroom
        if self._sock is None:
            batch.count = 0
            return 0
        rows = _walk_ring(self._ring, self._ring32, self.block_size, self._state,
                          self.read_open_block, batch.data, batch.meta, self._fresh,
                          batch.headroom, self.port)
        batch.count = rows
        if rows:
            state = self._state
            self.counters.rx_packets += rows
            self.counters.rx_bytes += int(state[S_BYTES])
            self.counters.rx_truncated += int(state[S_TRUNCATED])
            self.counters.rx_early += int(state[S_EARLY])
            state[S_BYTES] = state[S_TRUNCATED] = state[S_EARLY] = 0
            self._last_rx = time.monotonic()
            if rows >= self.busy_batch and self._waker_armed:
                # Frames come faster than wake-ups pay: stop the waker's clone and
                # wake-up per frame and take the ring in naps of hot_slice instead.
                self._arm_waker(False)
        return rows

    def _drain_waker(self) -> int:
        """Empty the waker's queue; how many wake-ups it held.

        libc ``recv`` through ctypes: -1 with EAGAIN ends the loop without the
        exception Python's socket would raise, on a path taken every sleep.
        """
        if self._waker is None:
            return 0
        fd = self._waker.fileno()
        drained = 0
        for _ in range(WAKER_DRAIN_LIMIT):
            if _recv(fd, self._drain_buffer, 1, MSG_DONTWAIT) < 0:
                break  # EAGAIN; or a pending link error, which check_link deals with
            drained += 1
        return drained

    def receive(self, batch: Batch, timeout: float | None = 0.0) -> int:
        """Fill rows [0, n) of ``batch`` with frames that arrived; n, 0 if none in ``timeout``.

        ``timeout`` is seconds to wait for a first frame (0: just look; None:
        until one comes). Returns as soon as there is at least one frame,
        never waiting for the batch to fill.
        """
        rows = self._take(batch)
        if rows or timeout == 0:
            return rows
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return 0
            wait([self], remaining)
            rows = self._take(batch)
            if rows:
                return rows

    # -- waiting (see ``wait``) ---------------------------------------------------------

    def _before_sleep(self, now: float) -> float:
        """Get ready to sleep: 0 if there may be frames now, else the longest nap allowed."""
        if now - self._last_check >= self.link_check or self.gone:
            self.check_link()
        if self.gone or self._sock is None:
            return 0.05  # look for the interface coming back
        hot = self.read_open_block and now - self._last_rx < self.hot_window
        if self._waker is not None:
            if not self._waker_armed:
                if hot:
                    return self.hot_slice  # still busy: nap, then look at the open block
                # Quiet again: wake on the next frame. A frame that came before the
                # filter took effect has no wake-up, so look once more before sleeping.
                self._arm_waker(True)
                return 0.0
            if self._drain_waker():
                return 0.0  # the frames the wake-ups announced are in the ring already
            return self.link_check
        if hot:
            return self.hot_slice  # traffic just now: look at the open block again soon
        return self.link_check

    def _arm_waker(self, armed: bool) -> None:
        """Let the waker see frames (1 byte each) or none (its filter drops them all)."""
        if self._waker is None:
            return
        program = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 1 if armed else 0))
        fprog = struct.pack("HxxxxxxQ", 1, ctypes.addressof(program))
        self._waker.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        self._waker_armed = armed

    def _after_sleep(self, ring_events: int, waker_events: int) -> None:
        if waker_events & POLLIN:
            # Drained now, not before the next sleep: that would cost a lap of the loop.
            self._drain_waker()
        trouble = POLLERR | POLLHUP | POLLNVAL
        if (ring_events | waker_events) & trouble and self._sock is not None:
            # The interface went down or away: clear the errors (a pending one keeps
            # ppoll returning at once), then look at the interface.
            self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if self._waker is not None:
                self._waker.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            self.check_link()

    # -- sending ------------------------------------------------------------------------

    def send(self, batch: Batch, rows: np.ndarray | None = None) -> int:
        """Transmit ``rows`` of ``batch`` (all rows by default; indices or a mask); n sent.

        One ``sendmmsg`` call in the common case. Frames that cannot go are
        counted in ``counters.tx_drops`` by reason, never raised.
        """
        if rows is None:
            count = batch.count
            if self._all_rows.shape[0] < count:
                self._all_rows = np.arange(max(count, 256), dtype=np.int64)
            selected = self._all_rows
        else:
            selected = np.asarray(rows)
            if selected.dtype == np.bool_:
                selected = np.flatnonzero(selected[: batch.count])
            selected = selected.astype(np.int64, copy=False)
            if selected.size and (selected.min() < 0 or selected.max() >= batch.count):
                raise ValueError(f"rows must be within the batch's {batch.count} rows")
            count = selected.size
        if not count:
            return 0
        if self._sock is None or self.gone:
            self.check_link()
            if self._sock is None or self.gone:
                self.counters.drop(TxDrop.NO_DEVICE, count)
                return 0
        if self._iov.shape[0] < count:
            size = max(count, 2 * self._iov.shape[0], 256)
            self._iov = np.zeros((size, IOVEC_WORDS), np.uint64)
            self._msgs = np.zeros((size, MMSGHDR_WORDS), np.uint64)
        tally = self._send_tally
        tally[:] = 0
        sent = _send_rows(self._fd_pair[0], batch.data, batch.meta,
                          selected, count, self.mtu + ETH_HEADER, self._iov, self._msgs, tally)
        prepared = int(tally[T_PREPARED])
        octets = int(tally[T_BYTES])
        if tally[T_OVERSIZED] or tally[T_RUNTS]:
            self.counters.drop(TxDrop.OVERSIZED, int(tally[T_OVERSIZED]))
            self.counters.drop(TxDrop.RUNT, int(tally[T_RUNTS]))
        if sent < prepared:  # the slow path: the kernel refused something
            sent = self._transmit(prepared, sent, int(tally[T_ERRNO]))
            octets = int(self._iov[:prepared, 1][self._sent_mask(prepared)].sum())
        self.counters.tx_packets += sent
        self.counters.tx_bytes += octets
        return sent

    def _transmit(self, count: int, done: int, code: int) -> int:
        """Carry on after ``sendmmsg`` took ``done`` of ``count`` messages and said ``code``.

        Each round sends or skips (and counts, by reason) at least one message.
        """
        self._skipped = []
        sent = done
        for _ in range(count + 4):
            if done >= count:
                break
            if code == 0 and self._sock is not None:
                address = self._msgs.ctypes.data + done * MMSGHDR_WORDS * 8
                result = _sendmmsg(self._sock.fileno(), address, count - done, 0)
                if result > 0:
                    done += result
                    sent += result
                    continue
                code = ctypes.get_errno() if result < 0 else errno.EAGAIN
            if code == errno.EINTR:
                pass
            elif code == errno.EMSGSIZE:
                self.check_link()  # the MTU may have shrunk since it was read
                self._skip(done, 1, TxDrop.OVERSIZED)
                done += 1
            elif code in (errno.ENOBUFS, errno.EAGAIN, errno.ENETDOWN):
                self.check_link()
                if not self.link_up:
                    self._skip(done, count - done, TxDrop.LINK_DOWN)
                    done = count
                else:
                    self._skip(done, 1, TxDrop.NO_BUFFERS)
                    done += 1
            elif code in (errno.ENXIO, errno.ENODEV):
                self.check_link()  # reopens if the interface came back
                if self._sock is None or self.gone:
                    self._skip(done, count - done, TxDrop.NO_DEVICE)
                    done = count
            else:
                self._skip(done, 1, TxDrop.REFUSED)
                done += 1
            code = 0
        if done < count:  # cannot happen: every round makes progress
            self._skip(done, count - done, TxDrop.REFUSED)
        return sent

    def _skip(self, first: int, count: int, reason: TxDrop) -> None:
        self.counters.drop(reason, count)
        self._skipped.extend(range(first, first + count))

    def _sent_mask(self, count: int) -> np.ndarray:
        mask = np.ones(count, dtype=np.bool_)
        mask[self._skipped] = False
        return mask

    def __repr__(self) -> str:
        state = "gone" if self.gone else ("up" if self.link_up else "down")
        return f"AfPacketPort({self.name!r}, port={self.port}, ifindex={self.ifindex}, {state})"


_wait_fds: dict[tuple[tuple[int, int], ...], np.ndarray] = {}  # pollfd arrays by fds


def wait(ports: Sequence[AfPacketPort], timeout: float | None) -> None:
    """Sleep until any of ``ports`` may have frames, or ``timeout`` seconds (None: no limit).

    For a loop over several ports: ``wait(ports, t)`` then ``receive(batch)``
    (timeout 0) on each. A port with a waker wakes this on its first frame; a
    port without one shortens the sleep to ``hot_slice`` while its traffic is
    recent; every port is also checked for its link every ``link_check``
    seconds. It may return with nothing to read: a retired-empty wake-up, a
    slice's end, a signal.
    """
    now = time.monotonic()
    nap = math.inf if timeout is None else max(0.0, timeout)
    for port in ports:
        nap = min(nap, port._before_sleep(now))
    if nap <= 0:
        return
    key = tuple(port._fd_pair for port in ports)
    fds = _wait_fds.get(key)
    if fds is None:
        if len(_wait_fds) > 64:
            _wait_fds.clear()
        fds = _wait_fds[key] = np.concatenate([port._fds for port in ports])
    ppoll(fds, None if math.isinf(nap) else nap)
    for i, port in enumerate(ports):
        port._after_sleep(int(fds[2 * i]["revents"]), int(fds[2 * i + 1]["revents"]))


__all__ = [
    "AfPacketPort",
    "Netns",
    "PortCounters",
    "TxDrop",
    "interface_flags",
    "interface_carrier",
    "interface_index",
    "interface_mtu",
    "libc_errno",
    "libc_read",
    "libc_sendmmsg",
    "libc_write",
    "link_is_up",
    "ppoll",
    "set_interface_flags",
    "set_interface_mtu",
    "wait",
]
