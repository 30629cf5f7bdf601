"""The LL-HLS media playlist (RFC 8216bis) of a Segmenter's window, as text.

Every full segment is listed with ``EXTINF`` (so a player that ignores the low-latency tags plays it as
ordinary HLS); parts are listed for segments within three target durations of the live edge, then the
open segment's parts and a preload hint for the part being built. The playlist is ``/APP/NAME.m3u8`` and
its media live under ``/APP/NAME/``, so URIs are ``base`` (``NAME/``) plus a file name, and carry
``query`` (a play token, a session id) so every request is authorized alike.
"""

from __future__ import annotations

from common.media.segmenter import Segmenter

VERSION = 9


def segment_uri(msn: int) -> str:
    return f"seg{msn}.m4s"


def part_uri(msn: int, part: int) -> str:
    return f"seg{msn}.{part}.m4s"


def render(segmenter: Segmenter, part_target: float, query: str = "", base: str = "") -> str:
    suffix = f"?{query}" if query else ""
    current = segmenter.current
    target = segmenter.target_duration
    lines = [
        "#EXTM3U",
        f"#EXT-X-VERSION:{VERSION}",
        f"#EXT-X-TARGETDURATION:{target}",
        f"#EXT-X-MEDIA-SEQUENCE:{segmenter.segments[0].msn if segmenter.segments else 0}",
        # PART-HOLD-BACK: three part targets (the spec's floor is two).
        f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={3 * part_target:.3f}",
        f"#EXT-X-PART-INF:PART-TARGET={part_target:.3f}",
        f'#EXT-X-MAP:URI="{base}init.mp4{suffix}"',
    ]
    if current is None:
        return "\n".join(lines) + "\n"
    parts_from = current.start_ms - 3 * target * 1000
    for segment in segmenter.segments:
        if segment.start_ms >= parts_from:
            for part in segment.parts:
                independent = ",INDEPENDENT=YES" if part.independent else ""
                lines.append(
                    f'#EXT-X-PART:DURATION={part.duration:.3f},URI="{base}{part_uri(segment.msn, part.index)}{suffix}"'
                    f"{independent}"
                )
        if segment.complete:
            lines.append(f"#EXTINF:{segment.duration:.3f},")
            lines.append(base + segment_uri(segment.msn) + suffix)
    lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{base}{part_uri(current.msn, len(current.parts))}{suffix}"')
    return "\n".join(lines) + "\n"
