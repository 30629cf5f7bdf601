"""An asyncio RTMP client over the sans-IO ClientSession: play (edge pulls, probes) and publish."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

from common.rtmp.events import (
    ConnectAccepted,
    ConnectionFailed,
    ConnectRejected,
    Event,
    MediaReceived,
    PlayStarted,
    PublishStarted,
    StatusReceived,
    StreamCreated,
)
from common.rtmp.session import ClientSession, SessionLimits

log = logging.getLogger(__name__)

MediaCallback = Callable[[MediaReceived], None]
StatusCallback = Callable[[StatusReceived], None]


class RtmpClientError(Exception):
    """The server refused or broke the session; ``code`` is the onStatus/_error code when there is one."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class RtmpUrl:
    host: str
    port: int
    app: str
    name: str  # stream name, including any ?query the server should see

    @classmethod
    def parse(cls, url: str) -> RtmpUrl:
        parts = urlsplit(url)
        if parts.scheme != "rtmp" or not parts.hostname:
            raise ValueError(f"not an rtmp:// URL: {url!r}")
        path = parts.path.strip("/")
        app, _, name = path.partition("/")
        if not app:
            raise ValueError(f"RTMP URL without an application: {url!r}")
        if parts.query:
            name = f"{name}?{parts.query}"
        return cls(parts.hostname, parts.port or 1935, app, name)

    @property
    def tc_url(self) -> str:
        return f"rtmp://{self.host}:{self.port}/{self.app}"

    def __str__(self) -> str:
        return f"{self.tc_url}/{self.name}"


class _ClientProtocol(asyncio.Protocol):
    def __init__(self, client: RtmpClient) -> None:
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client._attached(cast(asyncio.Transport, transport))  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.client._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lost(exc)


class RtmpClient:
    """One client connection. Use ``await RtmpClient.connect(url)``, then ``play`` or ``publish``."""

    def __init__(self, url: RtmpUrl, limits: SessionLimits | None = None) -> None:
        self.url = url
        self.session = ClientSession(url.app, url.tc_url, limits)
        self.transport: asyncio.Transport | None = None
        self.stream_id = 0
        self.bytes_received = 0
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[Any] | None = None
        self._on_media: MediaCallback | None = None
        self.on_status: StatusCallback | None = None  # every onStatus the server sends, for those who watch
        self.closed: asyncio.Future[str] = self._loop.create_future()

    @classmethod
    async def connect(
        cls, url: str | RtmpUrl, *, timeout: float = 10.0, limits: SessionLimits | None = None
    ) -> RtmpClient:
        target = url if isinstance(url, RtmpUrl) else RtmpUrl.parse(url)
        client = cls(target, limits)
        try:
            async with asyncio.timeout(timeout):
                await client._loop.create_connection(lambda: _ClientProtocol(client), target.host, target.port)
                await client._expect()  # ConnectAccepted
                client.session.create_stream()
                client._flush()
                client.stream_id = await client._expect()
        except BaseException:
            client.close()
            raise
        return client

    async def play(self, on_media: MediaCallback, *, timeout: float = 10.0) -> None:
        """Start playing; raise RtmpClientError (e.g. code NetStream.Play.StreamNotFound) if refused."""
        self._on_media = on_media
        self.session.play(self.stream_id, self.url.name)
        self._flush()
        async with asyncio.timeout(timeout):
            await self._expect()

    async def publish(self, *, timeout: float = 10.0) -> None:
        self.session.publish(self.stream_id, self.url.name)
        self._flush()
        async with asyncio.timeout(timeout):
            await self._expect()

    def send_media(self, type_id: int, timestamp: int, payload: bytes) -> None:
        self.session.send_media(self.stream_id, type_id, timestamp, payload)
        self._flush()

    def write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def close(self, reason: str = "closed by us") -> None:
        if self.transport is not None and not self.transport.is_closing():
            if self.stream_id:
                self.session.delete_stream(self.stream_id)
                self._flush()
            self.transport.close()
        if not self.closed.done():
            self.closed.set_result(reason)

    async def __aenter__(self) -> RtmpClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------------

    async def _expect(self) -> Any:
        self._waiter = self._loop.create_future()
        try:
            return await self._waiter
        finally:
            self._waiter = None

    def _resolve(self, value: Any = None, error: BaseException | None = None) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(value)

    def _attached(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._flush()

    def _flush(self) -> None:
        data = self.session.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _received(self, data: bytes) -> None:
        self.bytes_received += len(data)
        events = self.session.receive_data(data)
        on_media = self._on_media
        for event in events:
            if on_media is not None and type(event) is MediaReceived:
                on_media(event)
            else:
                self._handle(event)
        self._flush()

    def _handle(self, event: Event) -> None:
        if isinstance(event, ConnectAccepted):
            self._resolve()
        elif isinstance(event, StreamCreated):
            self._resolve(event.stream_id)
        elif isinstance(event, (PlayStarted, PublishStarted)):
            self._resolve()
        elif isinstance(event, ConnectRejected):
            self._resolve(error=RtmpClientError(f"connect rejected: {event.description}", event.code))
        elif isinstance(event, StatusReceived):
            if self.on_status is not None:
                self.on_status(event)
            if event.level == "error" or event.code in ("NetStream.Play.Stop", "NetStream.Play.UnpublishNotify"):
                error = RtmpClientError(f"{event.code}: {event.description}", event.code)
                if self._waiter is not None:
                    self._resolve(error=error)
                else:
                    self._finish(event.code)
        elif isinstance(event, ConnectionFailed):
            self._resolve(error=RtmpClientError(f"protocol error: {event.reason}"))
            self._finish(f"protocol error: {event.reason}")

    def _finish(self, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result(reason)
        if self.transport is not None:
            self.transport.close()

    def _lost(self, exc: Exception | None) -> None:
        reason = f"connection lost: {exc}" if exc else "connection closed by peer"
        self._resolve(error=RtmpClientError(reason))
        if not self.closed.done():
            self.closed.set_result(reason)
