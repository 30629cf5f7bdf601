"""One continuous clock for a stream's viewers, whatever its sources do.

A stream's source can change under its viewers: a publisher reconnects (its encoder restarts at 0), an
edge re-pulls from another origin (whose clock is unrelated). Viewers must see timestamps go on
forward, per kind, or players stall or drop frames. The first frame of a new source session is placed a
little after the last timestamp viewers saw, and every later one keeps the same offset.
"""

from __future__ import annotations

from typing import Final

from common.hub.packet import AUDIO, VIDEO
from common.media.flv import is_audio_sequence_header, is_video_sequence_header

# Where a new session's first frame goes, after the last timestamp viewers saw: far enough that frames of
# the other kind that the new source sends a little out of order (audio/video interleave) still land after.
REBASE_GAP_MS: Final = 500
_WRAP: Final = 0xFFFFFFFF


def behind(timestamp: int, reference: int) -> bool:
    """Is ``timestamp`` earlier than ``reference`` on the 32-bit RTMP clock (which wraps after ~49.7 days)?"""
    return (timestamp - reference) & _WRAP >= 0x80000000


def _is_header(kind: int, payload: bytes) -> bool:
    return is_video_sequence_header(payload) if kind == VIDEO else is_audio_sequence_header(payload)


class Timeline:
    __slots__ = ("_had_output", "_last_by_kind", "_last_ts", "_offset", "_rebase_pending")

    def __init__(self) -> None:
        self._offset = 0
        self._last_ts = 0
        self._last_by_kind = {AUDIO: 0, VIDEO: 0}
        self._had_output = False
        self._rebase_pending = False

    def new_session(self) -> None:
        """A new source session starts: its first frame is rebased after what viewers have seen."""
        self._rebase_pending = self._had_output

    def place(self, kind: int, timestamp: int, payload: bytes) -> int:
        """The timestamp viewers see for this message of the current session."""
        if self._rebase_pending:
            if kind in (AUDIO, VIDEO) and not _is_header(kind, payload):
                self._offset = self._last_ts + REBASE_GAP_MS - timestamp
                self._rebase_pending = False
            else:
                timestamp = self._last_ts - self._offset  # headers before the first frame: keep the clock still
        out = (timestamp + self._offset) & _WRAP
        if kind in (AUDIO, VIDEO):
            if self._had_output and behind(out, self._last_by_kind[kind]):
                # Never backwards within a kind, whatever a new source sends across a change.
                out = self._last_by_kind[kind]
            self._last_by_kind[kind] = out
            if not self._had_output or not behind(out, self._last_ts):
                self._last_ts = out
            self._had_output = True
        return out
