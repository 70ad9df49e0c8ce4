"""Keep freed activation memory mapped between forward passes (glibc malloc settings).

glibc serves every allocation above its mmap threshold (32 MB at most, by default) with freshly
mapped pages and unmaps them again on ``free``. A released-size pass allocates hundreds of activation
tensors of 30-400 MB, so each pass faults all of them in anew, 4 KB at a time: 0.8 M minor page faults
and ~2 s of kernel time per Swin-B pass at 1024² on 2 cores (Zen 4). Raising the mmap and trim
thresholds serves them from the heap instead, whose freed pages stay mapped and are reused: once the
heap has grown to a pass's peak (within the first passes) most passes fault nothing in (measured on
the second Swin-B pass: 0 vs 0.86 M faults, kernel time 0.2 s vs 2.2 s); now and then a small
allocation takes a freed buffer's place and that one buffer is mapped anew.

The cost: after a question the process keeps up to its peak activation memory mapped for the next one
(the peak itself does not grow). Transparent huge pages for torch's allocations
(``THP_MEM_ALLOC_ENABLE=1``) cut the faults too but not the kernel time (zeroing 2 MB pages): slower.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Allocations below this come from the heap (an activation is far smaller; a weight may be larger).
MMAP_THRESHOLD = 1 << 30
#: Free memory at the top of the heap is given back to the system only beyond this.
TRIM_THRESHOLD = 1 << 30


@cache
def keep_freed_memory() -> bool:
    """Set the thresholds once per process; False where the C library is not glibc (nothing changed)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only: other libcs have other allocators and knobs
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
