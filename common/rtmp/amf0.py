"""Sans-IO AMF0 encoder/decoder (pure functions, no I/O).

AMF0 is the serialisation used by RTMP command messages (``connect``, ``publish``, ...)
and by data messages (``@setDataFrame``/``onMetaData``). Everything here works on
in-memory buffers; all multi-byte numbers are big-endian.

Type mapping (Python <-> AMF0 marker):

=====================  ==========================================================
``float`` (``int``)    number ``0x00`` (ints encode as numbers; decode is ``float``)
``bool``               boolean ``0x01``
``str``                string ``0x02`` (u16 length) / long string ``0x0C`` (u32)
``dict``               object ``0x03`` (str keys only)
``None``               null ``0x05``
``UNDEFINED``          undefined ``0x06``
``EcmaArray``          ECMA (associative) array ``0x08``
``list`` / ``tuple``   strict array ``0x0A`` (decodes to ``list``)
``AmfDate``            date ``0x0B``
=====================  ==========================================================

On decode, XML documents (``0x0F``) become ``str`` and typed objects (``0x10``) become
plain ``dict`` (the class name is dropped).

Error policy: anything wrong with bytes received from a peer (truncation, unknown or
unsupported markers, excessive nesting, absurd counts) raises
:class:`~common.rtmp.errors.ProtocolError`; no other exception escapes the decoder.
Asking the encoder to serialise an unsupported Python type raises ``TypeError`` and an
unrepresentable value (e.g. a key longer than 65535 UTF-8 bytes) raises ``ValueError``:
those are bugs on our side, not the peer's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from struct import Struct
from typing import Any, Final

from common.rtmp.errors import ProtocolError

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_ITEMS",
    "UNDEFINED",
    "AmfDate",
    "EcmaArray",
    "UndefinedType",
    "decode",
    "decode_one",
    "encode",
    "encode_value",
]

DEFAULT_MAX_DEPTH: Final = 32
"""Maximum nesting of containers (objects, ECMA arrays, strict arrays) accepted on decode."""

DEFAULT_MAX_ITEMS: Final = 65536
"""Maximum number of elements in one strict array, or properties in one object/ECMA array."""

# Hard ceiling for the ``max_depth`` argument: the decoder is recursive, so a caller
# asking for more than this could hit Python's recursion limit.
_MAX_DEPTH_LIMIT: Final = 256
# Same idea on the encoding side (also catches self-referencing containers).
_MAX_ENCODE_DEPTH: Final = 256

# --- markers ----------------------------------------------------------------------------

NUMBER: Final = 0x00
BOOLEAN: Final = 0x01
STRING: Final = 0x02
OBJECT: Final = 0x03
MOVIECLIP: Final = 0x04
NULL: Final = 0x05
UNDEFINED_MARKER: Final = 0x06
REFERENCE: Final = 0x07
ECMA_ARRAY: Final = 0x08
OBJECT_END: Final = 0x09
STRICT_ARRAY: Final = 0x0A
DATE: Final = 0x0B
LONG_STRING: Final = 0x0C
UNSUPPORTED: Final = 0x0D
RECORDSET: Final = 0x0E
XML_DOCUMENT: Final = 0x0F
TYPED_OBJECT: Final = 0x10
AVMPLUS_OBJECT: Final = 0x11

_MARKER_NAMES: Final[dict[int, str]] = {
    MOVIECLIP: "movieclip",
    REFERENCE: "reference",
    OBJECT_END: "object-end outside an object",
    UNSUPPORTED: "unsupported",
    RECORDSET: "recordset",
    AVMPLUS_OBJECT: "AVM+ (AMF3) switch",
}

_U16_MAX: Final = 0xFFFF
_U32_MAX: Final = 0xFFFFFFFF

# --- precompiled structs ----------------------------------------------------------------

_U16: Final = Struct(">H")
_U32: Final = Struct(">I")
_F64: Final = Struct(">d")
_DATE_BODY: Final = Struct(">dh")
_MARKER_F64: Final = Struct(">Bd")
_MARKER_U16: Final = Struct(">BH")
_MARKER_U32: Final = Struct(">BI")
_MARKER_DATE: Final = Struct(">Bdh")

_OBJECT_END_BYTES: Final = b"\x00\x00\x09"
_TRUE_BYTES: Final = b"\x01\x01"
_FALSE_BYTES: Final = b"\x01\x00"
_NULL_BYTES: Final = b"\x05"
_UNDEFINED_BYTES: Final = b"\x06"


# --- value types ------------------------------------------------------------------------


class UndefinedType(enum.Enum):
    """Type of the :data:`UNDEFINED` sentinel (an enum so it stays a singleton when copied)."""

    UNDEFINED = "UNDEFINED"

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __str__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False


UNDEFINED: Final = UndefinedType.UNDEFINED
"""Sentinel for the AMF0 ``undefined`` value (marker ``0x06``), distinct from ``None`` (null)."""


class EcmaArray(dict[str, Any]):
    """An AMF0 ECMA (associative) array, marker ``0x08``; a plain ``dict`` encodes as an object."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"EcmaArray({dict.__repr__(self)})"


@dataclass(frozen=True, slots=True)
class AmfDate:
    """An AMF0 date (marker ``0x0B``): milliseconds since the Unix epoch (UTC) and a timezone.

    ``timezone`` is a signed 16-bit offset in minutes; the spec says it should be 0 and
    readers should ignore it, but it is kept so values round-trip byte for byte.
    """

    milliseconds: float
    timezone: int = 0


# --- encoding ---------------------------------------------------------------------------


def encode(*values: Any) -> bytes:
    """Encode each value in turn and return the concatenation (e.g. a whole command payload)."""
    out = bytearray()
    for value in values:
        _encode_into(out, value, 0)
    return bytes(out)


def encode_value(value: Any) -> bytes:
    """Encode a single value.

    Raises ``TypeError`` for a Python type with no AMF0 mapping (or a non-``str`` dict
    key) and ``ValueError`` for values that cannot be represented (empty or over-long
    property names, out-of-range date timezone, absurd nesting or cyclic containers).
    """
    out = bytearray()
    _encode_into(out, value, 0)
    return bytes(out)


def _encode_into(out: bytearray, value: Any, depth: int) -> None:
    # Ordered roughly by frequency in RTMP traffic; bool must be tested before int.
    if isinstance(value, str):
        raw = value.encode("utf-8")
        size = len(raw)
        if size <= _U16_MAX:
            out += _MARKER_U16.pack(STRING, size)
        elif size <= _U32_MAX:
            out += _MARKER_U32.pack(LONG_STRING, size)
        else:  # pragma: no cover - needs a >4 GiB string
            raise ValueError(f"string too long for AMF0 ({size} bytes)")
        out += raw
    elif isinstance(value, bool):
        out += _TRUE_BYTES if value else _FALSE_BYTES
    elif isinstance(value, (int, float)):
        # float() of a huge int raises OverflowError, which is the right signal.
        out += _MARKER_F64.pack(NUMBER, float(value))
    elif value is None:
        out += _NULL_BYTES
    elif value is UNDEFINED:
        out += _UNDEFINED_BYTES
    elif isinstance(value, dict):
        if depth >= _MAX_ENCODE_DEPTH:
            raise ValueError(f"AMF0 value nested deeper than {_MAX_ENCODE_DEPTH} levels (cyclic?)")
        if isinstance(value, EcmaArray):
            count = len(value)
            if count > _U32_MAX:  # pragma: no cover - cannot be built in practice
                raise ValueError(f"ECMA array too large for AMF0 ({count} entries)")
            out += _MARKER_U32.pack(ECMA_ARRAY, count)
        else:
            out.append(OBJECT)
        _encode_properties(out, value, depth + 1)
    elif isinstance(value, (list, tuple)):
        if depth >= _MAX_ENCODE_DEPTH:
            raise ValueError(f"AMF0 value nested deeper than {_MAX_ENCODE_DEPTH} levels (cyclic?)")
        count = len(value)
        if count > _U32_MAX:  # pragma: no cover - cannot be built in practice
            raise ValueError(f"strict array too large for AMF0 ({count} elements)")
        out += _MARKER_U32.pack(STRICT_ARRAY, count)
        for item in value:
            _encode_into(out, item, depth + 1)
    elif isinstance(value, AmfDate):
        timezone = value.timezone
        if not isinstance(timezone, int) or not -0x8000 <= timezone <= 0x7FFF:
            raise ValueError(f"AMF0 date timezone must be a signed 16-bit int, got {timezone!r}")
        out += _MARKER_DATE.pack(DATE, float(value.milliseconds), timezone)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as AMF0")


def _encode_properties(out: bytearray, props: dict[Any, Any], depth: int) -> None:
    for key, item in props.items():
        if not isinstance(key, str):
            raise TypeError(f"AMF0 property names must be str, got {type(key).__name__}")
        raw = key.encode("utf-8")
        size = len(raw)
        if size == 0:
            # An empty name followed by 0x09 is the end marker: it cannot be a property.
            raise ValueError("AMF0 property names must not be empty")
        if size > _U16_MAX:
            raise ValueError(f"AMF0 property name too long ({size} bytes, max {_U16_MAX})")
        out += _U16.pack(size)
        out += raw
        _encode_into(out, item, depth)
    out += _OBJECT_END_BYTES


# --- decoding ---------------------------------------------------------------------------

_Buffer = bytes | bytearray | memoryview


def decode(
    data: _Buffer,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_items: int = DEFAULT_MAX_ITEMS,
) -> list[Any]:
    """Decode every value in ``data`` until the buffer ends.

    Returns an empty list for empty input. Raises :class:`ProtocolError` if the buffer is
    truncated or malformed, nests containers deeper than ``max_depth`` or declares more
    than ``max_items`` elements in one container.
    """
    reader = _Reader(data, max_depth, max_items)
    values: list[Any] = []
    while reader.pos < reader.end:
        values.append(reader.value(0))
    return values


def decode_one(
    data: _Buffer,
    offset: int = 0,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_items: int = DEFAULT_MAX_ITEMS,
) -> tuple[Any, int]:
    """Decode one value starting at ``offset``; return ``(value, offset_after_value)``.

    Raises :class:`ProtocolError` on malformed input, including ``offset`` at or past the
    end of ``data``; a negative ``offset`` is a caller bug and raises ``ValueError``.
    """
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    reader = _Reader(data, max_depth, max_items)
    reader.pos = offset
    value = reader.value(0)
    return value, reader.pos


class _Reader:
    """Cursor over one buffer; ``value`` decodes one value and advances ``pos``."""

    __slots__ = ("data", "end", "max_depth", "max_items", "pos")

    def __init__(self, data: _Buffer, max_depth: int, max_items: int) -> None:
        if not 0 <= max_depth <= _MAX_DEPTH_LIMIT:
            raise ValueError(f"max_depth must be in 0..{_MAX_DEPTH_LIMIT}, got {max_depth}")
        if max_items < 0:
            raise ValueError(f"max_items must be >= 0, got {max_items}")
        self.data: bytes = data if isinstance(data, bytes) else bytes(data)
        self.end = len(self.data)
        self.max_depth = max_depth
        self.max_items = max_items
        self.pos = 0

    # -- primitives ----------------------------------------------------------------------

    def _need(self, size: int, what: str) -> int:
        """Check ``size`` bytes are available at ``pos``; return ``pos`` (not advanced)."""
        pos = self.pos
        if pos + size > self.end:
            raise ProtocolError(
                f"truncated AMF0 {what} at offset {pos}: need {size} bytes, {max(self.end - pos, 0)} left"
            )
        return pos

    def _utf8(self, size: int, what: str) -> str:
        pos = self._need(size, what)
        end = pos + size
        self.pos = end
        # Invalid UTF-8 is replaced rather than rejected: real encoders send latin-1
        # metadata and dropping a publish over a title string would be worse.
        return self.data[pos:end].decode("utf-8", "replace")

    def _u16_string(self, what: str) -> str:
        pos = self._need(2, what + " length")
        (size,) = _U16.unpack_from(self.data, pos)
        self.pos = pos + 2
        return self._utf8(size, what)

    def _u32_string(self, what: str) -> str:
        pos = self._need(4, what + " length")
        (size,) = _U32.unpack_from(self.data, pos)
        self.pos = pos + 4
        return self._utf8(size, what)

    def _u32(self, what: str) -> int:
        pos = self._need(4, what)
        self.pos = pos + 4
        count: int = _U32.unpack_from(self.data, pos)[0]
        return count

    # -- values --------------------------------------------------------------------------

    def value(self, depth: int) -> Any:
        pos = self.pos
        if pos >= self.end:
            raise ProtocolError(f"truncated AMF0 data at offset {pos}: expected a type marker")
        marker = self.data[pos]
        self.pos = pos + 1

        if marker == STRING:
            return self._u16_string("string")
        if marker == NUMBER:
            pos = self._need(8, "number")
            self.pos = pos + 8
            number: float = _F64.unpack_from(self.data, pos)[0]
            return number
        if marker == OBJECT:
            self._enter(depth, "object")
            return self._properties({}, depth + 1, "object", lenient_end=False)
        if marker == BOOLEAN:
            pos = self._need(1, "boolean")
            self.pos = pos + 1
            return self.data[pos] != 0
        if marker == NULL:
            return None
        if marker == UNDEFINED_MARKER:
            return UNDEFINED
        if marker == ECMA_ARRAY:
            self._enter(depth, "ECMA array")
            # The declared count is only a hint (encoders get it wrong): ignore it and
            # read properties up to the end marker.
            self._u32("ECMA array count")
            return self._properties(EcmaArray(), depth + 1, "ECMA array", lenient_end=True)
        if marker == STRICT_ARRAY:
            self._enter(depth, "strict array")
            count = self._u32("strict array count")
            if count > self.max_items:
                raise ProtocolError(
                    f"AMF0 strict array at offset {pos} declares {count} elements (limit {self.max_items})"
                )
            remaining = self.end - self.pos
            if count > remaining:  # every element takes at least one byte
                raise ProtocolError(
                    f"truncated AMF0 strict array at offset {pos}: declares {count} elements "
                    f"but only {remaining} bytes remain"
                )
            child = depth + 1
            return [self.value(child) for _ in range(count)]
        if marker == DATE:
            pos = self._need(10, "date")
            self.pos = pos + 10
            milliseconds, timezone = _DATE_BODY.unpack_from(self.data, pos)
            return AmfDate(milliseconds, timezone)
        if marker == LONG_STRING:
            return self._u32_string("long string")
        if marker == XML_DOCUMENT:
            return self._u32_string("XML document")
        if marker == TYPED_OBJECT:
            self._enter(depth, "typed object")
            self._u16_string("typed object class name")
            return self._properties({}, depth + 1, "typed object", lenient_end=False)

        name = _MARKER_NAMES.get(marker)
        if name is not None:
            raise ProtocolError(f"unsupported AMF0 marker 0x{marker:02x} ({name}) at offset {pos}")
        raise ProtocolError(f"unknown AMF0 marker 0x{marker:02x} at offset {pos}")

    def _enter(self, depth: int, what: str) -> None:
        if depth >= self.max_depth:
            raise ProtocolError(f"AMF0 {what} at offset {self.pos - 1} nested deeper than {self.max_depth} levels")

    def _properties(self, result: dict[str, Any], depth: int, what: str, *, lenient_end: bool) -> dict[str, Any]:
        """Read ``name, value`` pairs into ``result`` up to the empty-name + 0x09 end marker."""
        data = self.data
        end = self.end
        max_items = self.max_items
        while True:
            pos = self.pos
            if lenient_end and pos == end:
                # Some encoders omit the ECMA array terminator at the end of the buffer.
                return result
            if pos + 2 > end:
                raise ProtocolError(f"truncated AMF0 {what} at offset {pos}: expected a property name")
            (size,) = _U16.unpack_from(data, pos)
            self.pos = pos + 2
            if size == 0:
                if pos + 2 == end and lenient_end:
                    return result  # empty name present, 0x09 missing at end of buffer
                if pos + 2 >= end:
                    raise ProtocolError(f"truncated AMF0 {what} at offset {pos}: expected object-end")
                if data[pos + 2] != OBJECT_END:
                    raise ProtocolError(
                        f"AMF0 {what} at offset {pos}: empty property name not followed by "
                        f"object-end (got marker 0x{data[pos + 2]:02x})"
                    )
                self.pos = pos + 3
                return result
            if len(result) >= max_items:
                raise ProtocolError(f"AMF0 {what} has more than {max_items} properties")
            key = self._utf8(size, what + " property name")
            result[key] = self.value(depth)
