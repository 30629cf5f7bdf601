"""Large batches written once into an in-memory file, so the kernel sends them to every viewer from the same
pages (``sendfile``) instead of copying them in again for each viewer.

At thousands of viewers the copy into each socket is the largest single cost of the fan-out (a quarter of
the node's CPU at 6,000 viewers, most of it key frames): with ``sendfile`` the socket takes references to
the file's pages. Those pages must never change while a socket still holds them, so the file is
append-only: once it passes ``rotate_bytes`` a new one starts and the old one is closed (the kernel frees
its pages when the last segment that references them has been sent and read).
"""

from __future__ import annotations

import os
from typing import Final

ROTATE_BYTES: Final = 4 * 1024 * 1024


class Spool:
    def __init__(self, rotate_bytes: int = ROTATE_BYTES) -> None:
        self.rotate_bytes = rotate_bytes
        self.fd = -1
        self.offset = 0
        self.files = 0  # files opened so far

    def put(self, data: bytes) -> int:
        """Append ``data``; returns its offset in ``self.fd``."""
        if self.fd < 0 or self.offset + len(data) > self.rotate_bytes:
            self._rotate()
        offset = self.offset
        view = memoryview(data)
        while view:  # a memfd write is complete unless memory runs out; loop rather than assume
            written = os.pwrite(self.fd, view, self.offset)
            self.offset += written
            view = view[written:]
        return offset

    def _rotate(self) -> None:
        self.close()
        self.fd = os.memfd_create("livecdn-spool", os.MFD_CLOEXEC)
        self.offset = 0
        self.files += 1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
