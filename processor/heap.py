"""The C allocator's settings for a long-running processor: glibc only, elsewhere nothing.

glibc starts with a 128 KiB mmap threshold and raises it to the size of every larger block
it frees (up to 32 MiB). After a few long audio bodies, every body and numpy temporary below
that size is carved out of the heap, where the space freed between live blocks stays resident
and the heap's top can seldom shrink: the backlog's peak RSS grew by tens of MiB that way.
:func:`tune` fixes the threshold (``mallopt(M_MMAP_THRESHOLD)``, which also stops the raising)
at 264 KiB: a block above it (a long chunk's audio) gets a mapping of its own, returned to the
system when freed, while the quality gate's temporaries, kept below it
(``processor.quality_signal.BLOCK_SAMPLES``), are reused from the heap. Not lower: asyncio
reads a socket into a 256 KiB buffer, and a mapping made and dropped for every read cost
about 25 us a read (measured: 5 -> 29 us a 16 KiB read at 128 KiB). The trim threshold, fixed
with it, is twice the mmap threshold, glibc's own rule (at its fixed 128 KiB default the top of
the heap was given back and taken again on every read). An operator's own ``MALLOC_*``
variables or ``glibc.malloc.*`` tunables (``GLIBC_TUNABLES``) win: nothing is set then. The
threads other than the event loop's share one arena (:data:`ARENAS`).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping
from typing import Protocol

#: ``mallopt`` parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
#: Above asyncio's 256 KiB socket read buffer (``selector_events``' ``max_size``).
MMAP_THRESHOLD = 264 * 1024
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
#: The main thread's heap and one arena for every other thread (obstore's Rust runtime,
#: asyncio's executor); glibc's default, 8 per core, gave each of those threads an arena of its
#: own whose freed space stays resident (about 3 MiB of the backlog's peak).
ARENAS = 2

_tuned: list[bool] = []


class Libc(Protocol):
    def mallopt(self, param: int, value: int) -> int: ...


def glibc() -> Libc | None:
    """The process's C library if it is glibc (``gnu_get_libc_version`` is glibc's own)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    found: Libc = libc
    return found


def tune(environ: Mapping[str, str] | None = None, libc: Libc | None = None) -> bool:
    """Fix the mmap and trim thresholds and the arenas, once per process; False where nothing
    was set (not glibc, the operator's own allocator settings, or glibc refused)."""
    if _tuned:
        return _tuned[0]
    env = os.environ if environ is None else environ
    lib = libc if libc is not None else glibc()
    done = False
    own = any(name.startswith("MALLOC_") for name in env)
    own = own or "glibc.malloc." in env.get("GLIBC_TUNABLES", "")
    if lib is not None and not own:
        done = lib.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        done = done and lib.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        done = done and lib.mallopt(M_ARENA_MAX, ARENAS) == 1
    _tuned.append(done)
    return done
