"""Upstream pulls: one per stream per edge process, shared by all its viewers.

The first play of a stream starts a Puller; concurrent plays wait on the same one. The puller plays the
upstream as an RTMP client and feeds the local hub, which keeps the viewers' clock continuous across
upstream sessions. While viewers watch, a pull that breaks, stalls (no media for ``upstream_timeout``)
or whose stream moved to a newer owner (a registry event with a higher epoch from another origin) is
re-resolved and re-pulled with jittered backoff, for up to ``reconnect_window`` with no source. When
the last viewer leaves it lingers for the idle grace period, then stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from common.backoff import Backoff
from common.hub.stream import Hub, Stream
from common.keys import StreamKey
from common.registry import RegistryError
from common.rtmp.events import MediaReceived
from common.rtmp.session import SessionLimits
from common.serving.client import RtmpClient, RtmpClientError
from common.serving.policy import SourceUnavailable
from common.signing import PULL, sign
from edge.upstream import Resolver, Upstream

log = logging.getLogger(__name__)

PULL_TOKEN_TTL = 60  # seconds: checked once, when the upstream accepts the play
_ENDED_CODES = ("NetStream.Play.Stop", "NetStream.Play.UnpublishNotify")
_MOVED = "the stream moved to a newer owner"


@dataclass(frozen=True, slots=True)
class PullSettings:
    limits: SessionLimits  # bounds on the upstream session, as for any peer
    idle_grace: float  # seconds a pull outlives its last viewer
    pull_timeout: float  # seconds for a first viewer to wait for the pull to start
    reconnect_window: float  # seconds a lost upstream is retried with no source before viewers are told
    upstream_timeout: float = 5.0  # seconds without media after which a pull is abandoned and re-resolved
    publish_grace: float = 10.0  # seconds viewers wait once the stream is unpublished everywhere
    cluster_secret: str | None = None  # proves to the upstream that this is an edge (a signed pull token)


class Outcome(enum.Enum):
    """How one upstream session ended (or why none started)."""

    ENDED = "the upstream said the stream stopped"
    BROKEN = "the upstream went away mid-stream"
    STALLED = "the upstream sent no media"
    MOVED = _MOVED
    MISSING = "nobody publishes it"
    UNREACHABLE = "the upstream does not answer"
    REGISTRY_DOWN = "the registry does not answer"


class Start(enum.Enum):
    """What the first viewers waiting on a pull are told."""

    LIVE = "live"
    NOT_FOUND = "not found"
    UNAVAILABLE = "registry unavailable"


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
        self.ready: asyncio.Future[Start] = asyncio.get_running_loop().create_future()
        self.upstream: Upstream | None = None  # the one pulled now, or last
        self.connects = 0
        self.client: RtmpClient | None = None
        self._session_attached = False  # the current upstream session has been attached to the stream
        self.wake = asyncio.Event()  # set by registry events: retry at once instead of after the backoff
        self._last_media = 0.0
        self._gone_since: float | None = None  # the registry had no claim on the stream from then on
        self._idle_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def key(self) -> StreamKey:
        return self.stream.key

    @property
    def url(self) -> str | None:
        return self.upstream.url if self.upstream is not None else None

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._run(), name=f"pull {self.key}")
        return self._task

    def stop(self, reason: str) -> None:
        """As the stream's Source: end the pull (viewers are told the stream ended)."""
        if self._task is not None and not self._task.done():
            log.info(
                "%s: stopping the pull from %s: %s",
                self.key,
                self.url,
                reason,
                extra={"event": "pull_stop", "stream": str(self.key)},
            )
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
            log.info(
                "%s: idle for %gs, stopping the pull from %s",
                self.key,
                self.settings.idle_grace,
                self.url,
                extra={"event": "pull_stop", "stream": str(self.key)},
            )
            self._task.cancel()

    # -- the registry says the stream was (re)published --------------------------------------------

    def published(self, origin: str, epoch: int) -> None:
        """A claim of this stream with ``epoch`` was taken by ``origin``. A newer owner elsewhere than the one
        pulled now fences that one off: leave it and pull the new owner at once."""
        current = self.upstream
        if current is not None and current.epoch is not None and epoch > current.epoch:
            if current.origin == origin:
                self.upstream = Upstream(current.url, epoch, origin)  # re-published where we pull already
            elif self.client is not None:
                log.info(
                    "%s: epoch %d on %s fences %s (epoch %d): re-pulling",
                    self.key,
                    epoch,
                    origin,
                    current.origin,
                    current.epoch,
                )
                self.client.close(_MOVED)
        self.wake.set()

    def unpublished(self, origin: str, epoch: int) -> None:
        """The claim with ``epoch`` was released: its publisher left. Viewers wait ``publish_grace`` for a
        publish anywhere, as the origin's own viewers do, counted from now."""
        current = self.upstream
        if current is not None and current.epoch == epoch and self._gone_since is None:
            self._gone_since = time.monotonic()

    # -- the pull loop -------------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff(initial=0.2, maximum=3.0)
        trouble_since: float | None = None
        publisher_left = False
        try:
            while True:
                outcome = await self._pull_once()
                if outcome in (Outcome.ENDED, Outcome.BROKEN, Outcome.STALLED, Outcome.MOVED):
                    backoff.reset()
                    trouble_since = None
                    publisher_left = outcome is Outcome.ENDED
                    if outcome is Outcome.MOVED:
                        continue
                elif not self.ready.done():
                    # Nothing to play at first: viewers are told at once (StreamNotFound, or unavailable).
                    self.ready.set_result(Start.UNAVAILABLE if outcome is Outcome.REGISTRY_DOWN else Start.NOT_FOUND)
                    return
                elif outcome is Outcome.MISSING and publisher_left:
                    log.info("%s: the publisher left and nobody publishes it now; ending it for viewers", self.key)
                    return
                now = time.monotonic()
                if outcome is Outcome.MISSING:
                    self._gone_since = self._gone_since or now
                    if now - self._gone_since > self.settings.publish_grace:
                        log.info(
                            "%s: not published again within %gs; ending it for viewers",
                            self.key,
                            self.settings.publish_grace,
                        )
                        return
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
                self.ready.set_result(Start.NOT_FOUND)
            if self.client is not None:
                self.client.close()
            if self.stream.source is self:
                self.stream.end_of_source()
            self.hub.discard_if_idle(self.stream)
            self.on_stopped(self)

    async def _pull_once(self) -> Outcome:
        """One upstream session, from resolving where to pull to the end of the play."""
        try:
            upstream = await self.resolver.resolve(self.key)
        except RegistryError as exc:
            log.warning("%s: registry lookup failed: %s", self.key, exc)
            return Outcome.REGISTRY_DOWN
        if upstream is None:
            return Outcome.MISSING
        try:
            client = await RtmpClient.connect(self._with_pull_token(upstream), limits=self.settings.limits)
        except (OSError, TimeoutError, RtmpClientError) as exc:
            log.warning("%s: cannot connect to upstream %s: %s", self.key, upstream.url, exc)
            return Outcome.UNREACHABLE
        self.client = client
        self._session_attached = False
        try:
            await client.play(self._on_media)
        except (RtmpClientError, TimeoutError) as exc:
            log.info(
                "%s: upstream %s refused the play: %s",
                self.key,
                upstream.url,
                exc,
                extra={"event": "pull_error", "stream": str(self.key), "upstream": upstream.url},
            )
            client.close()
            self.client = None
            code = exc.code if isinstance(exc, RtmpClientError) else ""
            return Outcome.MISSING if code == "NetStream.Play.StreamNotFound" else Outcome.UNREACHABLE
        self.upstream = upstream
        self.connects += 1
        self._last_media = time.monotonic()
        self._gone_since = None
        self._attach_session()
        log.info(
            "%s: pulling from %s (%s%s)%s",
            self.key,
            upstream.url,
            self.resolver.description,
            "" if upstream.epoch is None else f", epoch {upstream.epoch}",
            "" if self.connects == 1 else f", reconnect #{self.connects - 1}",
            extra={"event": "pull_start", "stream": str(self.key), "upstream": upstream.url},
        )
        if not self.ready.done():
            self.ready.set_result(Start.LIVE)
            self.viewers_changed()  # the viewer that asked may already have gone
        reason = await self._watch(client)
        self.client = None
        outcome = (
            Outcome.ENDED
            if reason in _ENDED_CODES
            else Outcome.MOVED
            if reason == _MOVED
            else Outcome.STALLED
            if reason.startswith("no media")
            else Outcome.BROKEN
        )
        log.info("%s: upstream %s: %s (%s)", self.key, upstream.url, outcome.value, reason)
        return outcome

    async def _watch(self, client: RtmpClient) -> str:
        """Wait for the session to end; end it when the upstream sends no media for ``upstream_timeout`` (a
        frozen or partitioned origin sends nothing and no FIN either)."""
        timeout = self.settings.upstream_timeout
        while not client.closed.done():
            quiet = time.monotonic() - self._last_media
            if quiet >= timeout:
                client.close(f"no media for {timeout:g}s")
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout - quiet):
                    await asyncio.shield(client.closed)
        return client.closed.result()

    def _with_pull_token(self, upstream: Upstream) -> str:
        """The upstream URL with a short-lived pull token (never a viewer's token: those stay here)."""
        url = upstream.url
        secret = upstream.pull_secret or self.settings.cluster_secret
        if secret is None:
            return url
        token = sign(secret, PULL, self.key, int(time.time()) + PULL_TOKEN_TTL)
        return f"{url}{'&' if '?' in url else '?'}{token}"

    def _attach_session(self) -> None:
        """This upstream session feeds the stream from now on (its clock rebased once, before its first
        frame). Once per session: the upstream sends its cached GOP right behind Play.Start, often in the same
        read, so its first frames reach ``_on_media`` before ``play()`` has returned to ``_pull_once``."""
        if not self._session_attached:
            self._session_attached = True
            self.stream.attach(self)

    def _on_media(self, event: MediaReceived) -> None:
        self._last_media = time.monotonic()
        self._attach_session()
        self.stream.feed(event.type_id, event.timestamp, event.payload)


class PullManager:
    """At most one Puller per stream; concurrent first viewers all wait on it. ``internal``: the streams
    pulled from within the node (from the worker process that owns them), counted apart from the pulls."""

    def __init__(
        self,
        hub: Hub,
        resolver: Resolver,
        settings: PullSettings,
        internal: Callable[[StreamKey], bool] | None = None,
    ) -> None:
        self.hub = hub
        self.resolver = resolver
        self.settings = settings
        self.internal = internal
        self.pullers: dict[StreamKey, Puller] = {}
        self.pulls_started = 0
        self.internal_pulls_started = 0

    async def acquire(self, key: StreamKey) -> Stream | None:
        """The stream, fed by its pull; None when nobody publishes it. SourceUnavailable when the registry
        cannot be asked."""
        puller = self.pullers.get(key)
        if puller is None:
            stream = self.hub.get_or_create(key)
            puller = Puller(self.hub, stream, self.resolver, self.settings, self._stopped)
            self.pullers[key] = puller
            if self.internal is not None and self.internal(key):
                self.internal_pulls_started += 1
            else:
                self.pulls_started += 1
            puller.start()
        try:
            async with asyncio.timeout(self.settings.pull_timeout):
                start = await asyncio.shield(puller.ready)
        except TimeoutError:
            log.warning("%s: upstream pull did not start within %gs", key, self.settings.pull_timeout)
            return None
        if start is Start.UNAVAILABLE:
            raise SourceUnavailable(f"cluster registry unavailable, cannot locate {key}; retry later")
        return puller.stream if start is Start.LIVE else None

    def _stopped(self, puller: Puller) -> None:
        if self.pullers.get(puller.key) is puller:
            del self.pullers[puller.key]

    def puller_of(self, stream: Stream) -> Puller | None:
        """The pull feeding ``stream`` now, if any."""
        puller = self.pullers.get(stream.key)
        return puller if puller is not None and stream.source is puller else None

    def published(self, key: StreamKey, origin: str, epoch: int) -> None:
        puller = self.pullers.get(key)
        if puller is not None:
            puller.published(origin, epoch)

    def unpublished(self, key: StreamKey, origin: str, epoch: int) -> None:
        puller = self.pullers.get(key)
        if puller is not None:
            puller.unpublished(origin, epoch)

    async def stop_all(self) -> None:
        await asyncio.gather(*(p.close() for p in list(self.pullers.values())))
