"""What an LL-HLS player reads from a media playlist: the parts listed and the preload hint."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

PART_URI: Final = re.compile(r'URI="([^"]*?seg(\d+)\.(\d+)\.m4s[^"]*)"')


@dataclass(frozen=True, slots=True)
class Playlist:
    parts: list[tuple[int, int, str]]  # (msn, part index, URI) in playlist order
    hint: tuple[int, int] | None  # the part the EXT-X-PRELOAD-HINT names (being built)

    def new_parts(self, after: tuple[int, int] | None) -> list[tuple[int, int, str]]:
        """Parts after ``after`` (msn, part); with None only the newest one (where a player joins)."""
        if after is None:
            return self.parts[-1:]
        return [p for p in self.parts if (p[0], p[1]) > after]

    def next_reload(self) -> tuple[int, int] | None:
        """``_HLS_msn``/``_HLS_part`` for the blocking reload: the hinted part, else the one after the last."""
        if self.hint is not None:
            return self.hint
        if self.parts:
            msn, index, _ = self.parts[-1]
            return msn, index + 1
        return None


def parse_playlist(text: str) -> Playlist:
    parts: list[tuple[int, int, str]] = []
    hint: tuple[int, int] | None = None
    for line in text.splitlines():
        if line.startswith(("#EXT-X-PART:", "#EXT-X-PRELOAD-HINT:")):
            match = PART_URI.search(line)
            if match is None:
                continue
            msn, index = int(match.group(2)), int(match.group(3))
            if line.startswith("#EXT-X-PART:"):
                parts.append((msn, index, match.group(1)))
            else:
                hint = (msn, index)
    return Playlist(parts, hint)
