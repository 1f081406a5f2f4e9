"""Keep freed image buffers in the C heap for the next photo, instead of handing them back to the kernel.

glibc's malloc gives a block above its mmap threshold a mapping of its own and unmaps it when it is
freed; the threshold adapts, and the heap top is trimmed past a second threshold. Framing a 1024²
photo (its decoded pixels, the padded face crop, numpy's copy) makes MB-sized blocks whose sizes vary
with the face box, and with glibc's defaults a served worker faulted ~3,000 fresh, kernel-zeroed pages
in for every such request. `keep_freed_buffers()` fixes both thresholds (glasses/config.py); the
figures are in docs/loadtests.md. A block above the mmap threshold, such as a 30 MB upload or a 12 MP
photo's pixels, still gets its own mapping and goes back to the kernel when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from glasses.config import MALLOC_MMAP_THRESHOLD_BYTES, MALLOC_TRIM_THRESHOLD_BYTES

# mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def keep_freed_buffers() -> bool:
    """Set this process's glibc mmap and trim thresholds; False (nothing changed) where libc is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS: no mallopt
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD_BYTES))
