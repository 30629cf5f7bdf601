"""The little HTTP/1.1 a viewer needs: a GET request, the response head, and a chunked-body decoder.

Written by hand on a raw connection (no HTTP library in the swarm's hot path). Both parsers are
incremental and bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

MAX_HEAD_BYTES: Final = 16 * 1024  # a response head larger than this is refused
MAX_CHUNK_LINE: Final = 1024  # a chunk-size line (with extensions) larger than this is refused
_HEX_DIGITS: Final = b"0123456789abcdefABCDEF"


class HttpError(Exception):
    """The server's answer is not what a viewer can use (status, framing, limits)."""


@dataclass(frozen=True, slots=True)
class HttpUrl:
    host: str
    port: int
    target: str  # path and query, as sent in the request line

    @classmethod
    def parse(cls, url: str) -> HttpUrl:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not an http:// URL: {url!r}")
        target = parts.path or "/"
        if parts.query:
            target = f"{target}?{parts.query}"
        return cls(parts.hostname, parts.port or 80, target)

    def get_request(self) -> bytes:
        host = self.host if self.port == 80 else f"{self.host}:{self.port}"
        return (
            f"GET {self.target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: livecdn-loadtest\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n"
        ).encode("ascii")


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    reason: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "

    @property
    def chunked(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower()


def parse_head(raw: bytes) -> ResponseHead:
    """Parse a response head (status line + headers, without the final blank line)."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
        raise HttpError(f"bad HTTP status line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(f"bad HTTP header line {line[:80]!r}")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return ResponseHead(int(parts[1]), parts[2] if len(parts) > 2 else "", headers)


class HeadReader:
    """Collects bytes until the blank line ending the response head; returns the head and what follows."""

    def __init__(self, max_bytes: int = MAX_HEAD_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> tuple[ResponseHead, bytes] | None:
        searched = max(len(self._buf) - 3, 0)
        self._buf += data
        end = self._buf.find(b"\r\n\r\n", searched)
        if end < 0:
            if len(self._buf) > self.max_bytes:
                raise HttpError(f"HTTP response head larger than {self.max_bytes} bytes")
            return None
        if end > self.max_bytes:
            raise HttpError(f"HTTP response head larger than {self.max_bytes} bytes")
        head = parse_head(bytes(self._buf[:end]))
        rest = bytes(self._buf[end + 4 :])
        self._buf = bytearray()
        return head, rest


class ChunkedDecoder:
    """Incremental Transfer-Encoding: chunked decoder; ``feed`` returns the body bytes completed so far."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._remaining = 0  # body bytes left in the current chunk
        self._need_crlf = False  # the CRLF after a chunk's data is pending
        self.finished = False  # the last (zero-size) chunk arrived

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        if self.finished:
            return b""
        self._buf += data
        buf = self._buf
        out: list[bytes] = []
        pos = 0
        while pos < len(buf):
            if self._remaining:
                take = min(self._remaining, len(buf) - pos)
                out.append(bytes(buf[pos : pos + take]))
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._need_crlf = True
                continue
            if self._need_crlf:
                if len(buf) - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise HttpError("chunked body: missing CRLF after chunk data")
                pos += 2
                self._need_crlf = False
                continue
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                if len(buf) - pos > MAX_CHUNK_LINE:
                    raise HttpError("chunked body: chunk-size line too long")
                break
            line = bytes(buf[pos:line_end]).split(b";", 1)[0].strip()
            if not line or len(line) > 16 or line.strip(_HEX_DIGITS):
                raise HttpError(f"chunked body: bad chunk size {line[:20]!r}")
            size = int(line, 16)
            pos = line_end + 2
            if size == 0:
                self.finished = True  # trailers, if any, are not looked at
                pos = len(buf)
                break
            self._remaining = size
        del buf[:pos]
        return b"".join(out)
