"""Software prefetch for Numba kernels: ask for a cache line before it is needed.

Role. Batch kernels that chase pointers through tables bigger than the cache
(LPM tables, rule lists, flow-cache buckets) stall on each load in turn. The
processor overlaps independent loads on its own only as far as its
out-of-order window reaches, a packet or two. ``prefetch(array, index)``
emits LLVM's ``llvm.prefetch`` for the element's address, so a kernel can ask
for packet ``k + D``'s lines while it works on packet ``k`` (the group
prefetching DPDK's bulk hash lookups use). A prefetch never faults and never
changes a result; at worst it wastes a little bandwidth.
"""

from __future__ import annotations

from typing import Any

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def prefetch(typingctx: Any, array: Any, index: Any) -> Any:  # pragma: no cover - compiled
    """Prefetch ``array[index]`` (a 1-D array, or the first element of a row of a 2-D one)."""
    if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
        return None
    sig = types.void(array, index)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        array_type = signature.args[0]
        made = context.make_array(array_type)(context, builder, args[0])
        indices = [args[1]] + [context.get_constant(types.intp, 0)] * (array_type.ndim - 1)
        pointer = cgutils.get_item_pointer(context, builder, array_type, made, indices,
                                           wraparound=False)
        byte_pointer = ir.IntType(8).as_pointer()
        fn_type = ir.FunctionType(ir.VoidType(), [byte_pointer] + [ir.IntType(32)] * 3)
        fn = cgutils.get_or_insert_function(builder.module, fn_type, "llvm.prefetch.p0")
        # read (0), high temporal locality (3), data cache (1)
        builder.call(fn, [builder.bitcast(pointer, byte_pointer), ir.IntType(32)(0),
                          ir.IntType(32)(3), ir.IntType(32)(1)])
        return context.get_dummy_value()

    return sig, codegen


__all__ = ["prefetch"]
