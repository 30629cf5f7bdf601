"""The LL-HLS load tool follows a playlist like a player: join at the newest part, fetch each new part once,
block on the hinted part."""

from __future__ import annotations

from loadtest.hls_playlist import parse_playlist

PLAYLIST = """#EXTM3U
#EXT-X-VERSION:9
#EXT-X-TARGETDURATION:2
#EXT-X-MEDIA-SEQUENCE:3
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.500
#EXT-X-PART-INF:PART-TARGET=0.500
#EXT-X-MAP:URI="x/init.mp4?sid=a"
#EXT-X-PART:DURATION=0.500,URI="x/seg4.0.m4s?sid=a",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.500,URI="x/seg4.1.m4s?sid=a"
#EXTINF:1.000,
x/seg4.m4s?sid=a
#EXT-X-PART:DURATION=0.500,URI="x/seg5.0.m4s?sid=a",INDEPENDENT=YES
#EXT-X-PRELOAD-HINT:TYPE=PART,URI="x/seg5.1.m4s?sid=a"
"""


def test_parts_and_hint() -> None:
    playlist = parse_playlist(PLAYLIST)
    assert [(m, i) for m, i, _ in playlist.parts] == [(4, 0), (4, 1), (5, 0)]
    assert playlist.parts[0][2] == "x/seg4.0.m4s?sid=a"
    assert playlist.hint == (5, 1)
    assert playlist.next_reload() == (5, 1)


def test_new_parts_join_at_newest_then_each_once() -> None:
    playlist = parse_playlist(PLAYLIST)
    assert [(m, i) for m, i, _ in playlist.new_parts(None)] == [(5, 0)]
    assert [(m, i) for m, i, _ in playlist.new_parts((4, 0))] == [(4, 1), (5, 0)]
    assert playlist.new_parts((5, 0)) == []


def test_no_hint_reloads_after_last_part_and_empty_playlist() -> None:
    without_hint = parse_playlist("\n".join(line for line in PLAYLIST.splitlines() if "PRELOAD" not in line))
    assert without_hint.next_reload() == (5, 1)
    assert parse_playlist("#EXTM3U\n").next_reload() is None
