"""Keep freed image buffers in the C heap for the next image, instead of handing them back to the kernel.

glibc's malloc gives a block above its mmap threshold a mapping of its own and unmaps it when it is
freed; its threshold adapts upwards, but it trims the heap top again past twice that. A decoded photo
(PIL's pixels, numpy's copy, a resized frame) is a few such MB-sized blocks, so every image had its
buffers faulted in again page by page, and the kernel zeroed each page first. `keep_freed_buffers()`
fixes both thresholds (glasses/config.py); the figures are in docs/service.md. Blocks above the mmap
threshold, such as a 30 MB upload, still get their own mapping and go back to the kernel when freed.
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
