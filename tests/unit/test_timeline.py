"""One clock for viewers across source changes (a publisher reconnecting, an edge re-pulling): timestamps go
on forward per kind, whatever the new source sends, and the 32-bit wrap is not mistaken for going back."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from common.hub.packet import AUDIO, VIDEO, HubLimits
from common.hub.stream import Hub, Stream
from common.keys import StreamKey

AVC_HEADER = b"\x17\x00\x00\x00\x00\x01\x64"
KEY = b"\x17\x01\x00\x00\x00key"
INTER = b"\x27\x01\x00\x00\x00inter"
AAC = b"\xaf\x01audio"


class Source:
    def stop(self, reason: str) -> None:
        raise AssertionError(reason)


def watched_stream() -> tuple[Stream, list[tuple[int, int]]]:
    stream = Hub(HubLimits(merge_window=0), lambda delay, callback: None).get_or_create(StreamKey("live", "x"))
    seen: list[tuple[int, int]] = []
    push = stream.fanout.push
    stream.fanout.push = lambda packet: (seen.append((packet.kind, packet.timestamp)), push(packet))[1]  # type: ignore[method-assign]
    stream.attach(Source())
    return stream, seen


def send(stream: Stream, messages: list[tuple[int, int, bytes]]) -> None:
    for kind, timestamp, payload in messages:
        stream.feed(kind, timestamp, payload)


def per_kind_monotonic(out: list[tuple[int, int]]) -> bool:
    for kind in (AUDIO, VIDEO):
        stamps = [t for k, t in out if k == kind]
        if not all(b >= a for a, b in itertools.pairwise(stamps)):
            return False
    return True


def test_a_new_source_starting_with_audio_ahead_of_video_keeps_video_forward() -> None:
    stream, seen = watched_stream()
    send(stream, [(VIDEO, 0, AVC_HEADER), (VIDEO, 0, KEY), (AUDIO, 10, AAC), (VIDEO, 40, INTER), (AUDIO, 30, AAC)])
    stream.attach(Source())  # a re-pull from another origin, or the publisher reconnecting
    # The new source has no GOP yet: live audio arrives first, video a little behind it.
    send(stream, [(VIDEO, 0, AVC_HEADER), (AUDIO, 90_000, AAC), (VIDEO, 89_950, KEY), (VIDEO, 89_990, INTER)])
    assert per_kind_monotonic(seen), seen
    first_video_after = next(t for k, t in seen[6:] if k == VIDEO)
    assert first_video_after > 40  # after the last video viewers saw


def test_an_encoder_restarting_at_zero_goes_on_from_where_viewers_were() -> None:
    stream, seen = watched_stream()
    send(stream, [(VIDEO, 5_000 + 40 * i, KEY if i == 0 else INTER) for i in range(25)])
    last = seen[-1][1]
    stream.source_left()  # the encoder went away; viewers wait
    stream.attach(Source())  # and came back, its clock at 0
    send(stream, [(VIDEO, 0, AVC_HEADER), (VIDEO, 0, KEY), (VIDEO, 40, INTER)])
    after = [t for _, t in seen[25:]]
    assert all(t >= last for t in after) and after[-1] - after[-2] == 40, (last, after)


def test_clock_wrap_is_not_mistaken_for_going_backwards() -> None:
    stream, seen = watched_stream()
    near_wrap = 0xFFFFFFFF - 100
    send(
        stream,
        [(VIDEO, near_wrap, KEY), (VIDEO, near_wrap + 40, INTER), (VIDEO, (near_wrap + 140) & 0xFFFFFFFF, INTER)],
    )
    assert [t for _, t in seen] == [near_wrap, near_wrap + 40, 39]  # wrapped, passed through unchanged


@given(
    st.lists(
        st.lists(
            st.tuples(st.sampled_from([AUDIO, VIDEO]), st.integers(0, 0xFFFFFFFF), st.sampled_from([KEY, INTER, AAC])),
            min_size=1,
            max_size=20,
        ),
        min_size=1,
        max_size=5,
    )
)
def test_across_any_source_changes_each_kind_never_goes_back_by_less_than_a_wrap(
    sessions: list[list[tuple[int, int, bytes]]],
) -> None:
    stream, seen = watched_stream()
    for session in sessions:
        stream.attach(Source())
        # Within one session a source sends its timestamps increasing per kind (that is RTMP's contract).
        ordered = sorted(session, key=lambda m: (m[0], m[1]))
        send(stream, [(k, t, AAC if k == AUDIO else p if p != AAC else INTER) for k, t, p in ordered])
    for kind in (AUDIO, VIDEO):
        stamps = [t for k, t in seen if k == kind]
        for a, b in itertools.pairwise(stamps):
            assert (b - a) & 0xFFFFFFFF < 0x80000000, (a, b)  # never behind on the wrapping clock
