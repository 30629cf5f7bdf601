"""Upstream pulls: one per stream per edge process, shared by all its viewers.

The first play of a stream starts a Puller; concurrent plays wait on the same one. The puller plays
the upstream as an RTMP client and feeds the local hub. If the upstream breaks while viewers watch, it
re-resolves and re-pulls with jittered backoff, and rebases timestamps so viewers see them continue.
When the last viewer leaves it lingers for the idle grace period, then stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from common.backoff import Backoff
from common.hub.packet import AUDIO, VIDEO
from common.hub.stream import Hub, Stream
from common.keys import StreamKey
from common.media.flv import is_audio_sequence_header, is_video_sequence_header
from common.registry import RegistryError
from common.rtmp.events import MediaReceived
from common.rtmp.session import SessionLimits
from common.serving.client import RtmpClient, RtmpClientError
from edge.upstream import Resolver

log = logging.getLogger(__name__)

# After a re-pull the new upstream's clock is unrelated to the old one. Its first frame is placed this far
# after the last timestamp viewers saw: far enough that frames of the other kind which the new upstream
# sends a little out of order (audio/video interleave) still land after it.
_REBASE_GAP_MS = 500


@dataclass(frozen=True, slots=True)
class PullSettings:
    limits: SessionLimits  # bounds on the upstream session, as for any peer
    idle_grace: float  # seconds a pull outlives its last viewer
    pull_timeout: float  # seconds for a first viewer to wait for the pull to start
    reconnect_window: float  # seconds a broken upstream is retried with no source before viewers are told


class Puller:
    def __init__(
        self,
        hub: Hub,
        stream: Stream,
        resolver: Resolver,
        settings: PullSettings,
        on_stopped: Callable[[Puller], None],
    ) -> None:
        self.hub = hub
        self.stream = stream
        self.resolver = resolver
        self.settings = settings
        self.on_stopped = on_stopped
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.url: str | None = None
        self.connects = 0
        self.client: RtmpClient | None = None
        self.wake = asyncio.Event()  # set by registry events: retry at once instead of after the backoff
        self._idle_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        # Timestamp rebasing across upstream sessions.
        self._offset = 0
        self._last_ts = 0
        self._last_by_kind = {AUDIO: 0, VIDEO: 0}
        self._had_output = False
        self._rebase_pending = False

    @property
    def key(self) -> StreamKey:
        return self.stream.key

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._run(), name=f"pull {self.key}")
        return self._task

    def stop(self, reason: str) -> None:
        """As the stream's Source: end the pull (viewers are told the stream ended)."""
        if self._task is not None and not self._task.done():
            log.info("%s: stopping the pull from %s: %s", self.key, self.url, reason)
            self._task.cancel()

    async def close(self) -> None:
        """Stop the pull and wait until it has let go of its upstream and its stream."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- viewers coming and going ------------------------------------------------------------------

    def viewer_joined(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def viewers_changed(self) -> None:
        if self.stream.viewers == 0 and self._idle_timer is None and self.ready.done():
            log.info(
                "%s: last viewer left; stopping the pull in %gs unless one returns", self.key, self.settings.idle_grace
            )
            self._idle_timer = asyncio.get_running_loop().call_later(self.settings.idle_grace, self._idle_expired)

    def _idle_expired(self) -> None:
        self._idle_timer = None
        if self.stream.viewers == 0 and self._task is not None:
            log.info("%s: idle for %gs, stopping the pull from %s", self.key, self.settings.idle_grace, self.url)
            self._task.cancel()

    # -- the pull loop -------------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff(initial=0.2, maximum=3.0)
        trouble_since: float | None = None
        publisher_left = False
        try:
            while True:
                outcome = await self._pull_once()
                if outcome in ("ended", "broken"):
                    backoff.reset()
                    trouble_since = None
                    publisher_left = outcome == "ended"
                elif not self.ready.done():
                    self.ready.set_result(False)  # nothing to play at first: viewers get StreamNotFound
                    return
                elif outcome == "missing" and publisher_left:
                    log.info("%s: the publisher left and nobody publishes it now; ending it for viewers", self.key)
                    return
                now = time.monotonic()
                trouble_since = trouble_since or now
                if now - trouble_since > self.settings.reconnect_window:
                    log.info("%s: no upstream for %gs; ending it for viewers", self.key, self.settings.reconnect_window)
                    return
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff.next_delay()):
                        await self.wake.wait()
        finally:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            if not self.ready.done():
                self.ready.set_result(False)
            if self.client is not None:
                self.client.close()
            if self.stream.source is self:
                self.stream.end_of_source()
            self.hub.discard_if_idle(self.stream)
            self.on_stopped(self)

    async def _pull_once(self) -> str:
        """One upstream session: 'ended' (the upstream said the stream stopped), 'broken' (it went away
        mid-stream), 'missing' (nobody publishes it) or 'unreachable' (registry or upstream not answering)."""
        try:
            url = await self.resolver.resolve(self.key)
        except RegistryError as exc:
            log.warning("%s: registry lookup failed: %s", self.key, exc)
            return "unreachable"
        if url is None:
            return "missing"
        try:
            client = await RtmpClient.connect(url, limits=self.settings.limits)
        except (OSError, TimeoutError, RtmpClientError) as exc:
            log.warning("%s: cannot connect to upstream %s: %s", self.key, url, exc)
            return "unreachable"
        self.client = client
        try:
            await client.play(self._on_media)
        except (RtmpClientError, TimeoutError) as exc:
            log.info("%s: upstream %s refused the play: %s", self.key, url, exc)
            client.close()
            self.client = None
            code = exc.code if isinstance(exc, RtmpClientError) else ""
            return "missing" if code == "NetStream.Play.StreamNotFound" else "unreachable"
        self.url = url
        self.connects += 1
        self._rebase_pending = self._had_output
        self.stream.source = self
        log.info(
            "%s: pulling from %s (%s)%s",
            self.key,
            url,
            self.resolver.description,
            "" if self.connects == 1 else f", reconnect #{self.connects - 1}",
        )
        if not self.ready.done():
            self.ready.set_result(True)
            self.viewers_changed()  # the viewer that asked may already have gone
        reason = await client.closed
        self.client = None
        ended = reason in ("NetStream.Play.Stop", "NetStream.Play.UnpublishNotify")
        log.info("%s: upstream %s %s (%s)", self.key, url, "ended" if ended else "broke", reason)
        return "ended" if ended else "broken"

    def _on_media(self, event: MediaReceived) -> None:
        timestamp = event.timestamp
        kind = event.type_id
        if self._rebase_pending:
            if kind in (AUDIO, VIDEO) and not _is_header(kind, event.payload):
                self._offset = self._last_ts + _REBASE_GAP_MS - timestamp
                self._rebase_pending = False
            else:
                timestamp = self._last_ts - self._offset  # headers before the first frame: keep the clock still
        out = (timestamp + self._offset) & 0xFFFFFFFF
        if kind in (AUDIO, VIDEO):
            if self._had_output and _behind(out, self._last_by_kind[kind]):
                # Never backwards within a kind, whatever the upstream does across a re-pull.
                out = self._last_by_kind[kind]
            self._last_by_kind[kind] = out
            if not self._had_output or not _behind(out, self._last_ts):
                self._last_ts = out
            self._had_output = True
        self.stream.feed(kind, out, event.payload)


def _behind(timestamp: int, reference: int) -> bool:
    """Is ``timestamp`` earlier than ``reference`` on the 32-bit RTMP clock (which wraps after ~49.7 days)?"""
    return (timestamp - reference) & 0xFFFFFFFF >= 0x80000000


def _is_header(type_id: int, payload: bytes) -> bool:
    return is_video_sequence_header(payload) if type_id == VIDEO else is_audio_sequence_header(payload)


class PullManager:
    """At most one Puller per stream; concurrent first viewers all wait on it."""

    def __init__(self, hub: Hub, resolver: Resolver, settings: PullSettings) -> None:
        self.hub = hub
        self.resolver = resolver
        self.settings = settings
        self.pullers: dict[StreamKey, Puller] = {}
        self.pulls_started = 0

    async def acquire(self, key: StreamKey) -> Stream | None:
        puller = self.pullers.get(key)
        if puller is None:
            stream = self.hub.get_or_create(key)
            puller = Puller(self.hub, stream, self.resolver, self.settings, self._stopped)
            self.pullers[key] = puller
            self.pulls_started += 1
            puller.start()
        try:
            async with asyncio.timeout(self.settings.pull_timeout):
                ok = await asyncio.shield(puller.ready)
        except TimeoutError:
            log.warning("%s: upstream pull did not start within %gs", key, self.settings.pull_timeout)
            return None
        return puller.stream if ok else None

    def _stopped(self, puller: Puller) -> None:
        if self.pullers.get(puller.key) is puller:
            del self.pullers[puller.key]

    def puller_of(self, stream: Stream) -> Puller | None:
        """The pull feeding ``stream`` now, if any."""
        puller = self.pullers.get(stream.key)
        return puller if puller is not None and stream.source is puller else None

    def wake(self, key: StreamKey) -> None:
        puller = self.pullers.get(key)
        if puller is not None:
            puller.wake.set()

    async def stop_all(self) -> None:
        await asyncio.gather(*(p.close() for p in list(self.pullers.values())))
