"""Large blocks stay in the server's heap instead of going back to the system at every free.

grpc.aio receives a request message on the event loop's thread and copies it
there two or three times (slices into a ``bytearray``, then into ``bytes``);
a response handed over as ``bytes`` is copied once more when sent. With
glibc's defaults every block above 32 MiB is a fresh ``mmap``, returned to
the system when freed, so each copy of a 48 MB message first takes a page
fault per 4 KiB page: measured (under load), that about doubled the CPU time
such a message kept the loop busy. ``keep_large_blocks`` sets the
process's malloc to serve blocks up to twice the largest message from its
heap and to keep that much free memory at the heap's top, so the pages are
mapped once and reused.

The cost: a server keeps up to ``2 x largest`` bytes of freed memory mapped
after a burst of large messages. Where the C library is not glibc, nothing
changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_large_blocks(largest: int) -> bool:
    """Serve blocks up to ``2 * largest`` bytes from the heap and keep as much free there.

    Returns whether the C library took both settings (False off glibc, or where
    it refuses a threshold that high).
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    size = ctypes.c_int(min(2 * largest, 2**31 - 1))
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, size)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, size))
