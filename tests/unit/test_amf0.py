"""Tests for the sans-IO AMF0 codec (common.rtmp.amf0)."""

from __future__ import annotations

import copy
import math
import pickle
import struct
import time
import tracemalloc
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.rtmp.amf0 import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_ITEMS,
    UNDEFINED,
    AmfDate,
    EcmaArray,
    decode,
    decode_one,
    encode,
    encode_value,
)
from common.rtmp.errors import ProtocolError

# --- helpers ----------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Structural equality that also checks types (dict vs EcmaArray, float vs bool...)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, dict):
        return list(a.keys()) == list(b.keys()) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, AmfDate):
        return same(a.milliseconds, b.milliseconds) and a.timezone == b.timezone
    return bool(a == b) if a is not UNDEFINED else b is UNDEFINED


def normalise(value: Any) -> Any:
    """What a value should look like after an encode/decode round trip."""
    if isinstance(value, bool) or value is None or value is UNDEFINED or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, EcmaArray):
        return EcmaArray({k: normalise(v) for k, v in value.items()})
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalise(v) for v in value]
    if isinstance(value, AmfDate):
        return AmfDate(float(value.milliseconds), value.timezone)
    raise AssertionError(f"unexpected {value!r}")


def f64(x: float) -> bytes:
    return struct.pack(">d", x)


def u16(n: int) -> bytes:
    return struct.pack(">H", n)


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def s(text: str) -> bytes:
    """An AMF0 string body (u16 length + UTF-8), without marker: as used for property names."""
    raw = text.encode()
    return u16(len(raw)) + raw


END = b"\x00\x00\x09"


# --- golden vectors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, b"\x00\x3f\xf0\x00\x00\x00\x00\x00\x00"),
        (0.0, b"\x00" + b"\x00" * 8),
        (-2.5, b"\x00\xc0\x04\x00\x00\x00\x00\x00\x00"),
        (3, b"\x00\x40\x08\x00\x00\x00\x00\x00\x00"),
        (True, b"\x01\x01"),
        (False, b"\x01\x00"),
        ("", b"\x02\x00\x00"),
        ("live", b"\x02\x00\x04live"),
        ("é", b"\x02\x00\x02\xc3\xa9"),
        (None, b"\x05"),
        (UNDEFINED, b"\x06"),
        ({}, b"\x03" + END),
        ({"a": 1.0}, b"\x03" + s("a") + b"\x00" + f64(1.0) + END),
        (EcmaArray(), b"\x08" + u32(0) + END),
        (EcmaArray(duration=0.0), b"\x08" + u32(1) + s("duration") + b"\x00" + f64(0.0) + END),
        ([], b"\x0a" + u32(0)),
        ([1.0, "x", None], b"\x0a" + u32(3) + b"\x00" + f64(1.0) + b"\x02\x00\x01x\x05"),
        ((True,), b"\x0a" + u32(1) + b"\x01\x01"),
        (AmfDate(1.5e12), b"\x0b" + f64(1.5e12) + b"\x00\x00"),
        (AmfDate(0.0, -60), b"\x0b" + f64(0.0) + b"\xff\xc4"),
    ],
)
def test_golden_encode_and_decode(value: Any, expected: bytes) -> None:
    assert encode_value(value) == expected
    assert same(decode(expected), [normalise(value)])
    decoded, offset = decode_one(expected)
    assert offset == len(expected)
    assert same(decoded, normalise(value))


def test_bool_is_not_a_number_and_ints_decode_as_float() -> None:
    assert encode_value(True)[0] == 0x01
    assert encode_value(1)[0] == 0x00
    (value,) = decode(encode_value(7))
    assert type(value) is float and value == 7.0


def test_special_floats() -> None:
    assert decode(encode_value(math.inf)) == [math.inf]
    assert decode(encode_value(-math.inf)) == [-math.inf]
    (nan,) = decode(encode_value(math.nan))
    assert math.isnan(nan)
    (neg_zero,) = decode(encode_value(-0.0))
    assert math.copysign(1.0, neg_zero) == -1.0


def test_connect_command_payload() -> None:
    payload = encode("connect", 1.0, {"app": "live", "tcUrl": "rtmp://h/live"})
    assert payload.startswith(b"\x02\x00\x07connect\x00\x3f\xf0" + b"\x00" * 6 + b"\x03\x00\x03app")
    assert payload.endswith(END)
    assert decode(payload) == ["connect", 1.0, {"app": "live", "tcUrl": "rtmp://h/live"}]


def test_encode_concatenates_encode_value() -> None:
    values = ["publish", 5.0, None, "stream", "live"]
    assert encode(*values) == b"".join(encode_value(v) for v in values)
    assert encode() == b""
    assert decode(b"") == []


def test_decode_one_walks_offsets() -> None:
    payload = encode("_result", 1.0, None, {"code": "ok"})
    offset = 0
    out = []
    while offset < len(payload):
        value, offset = decode_one(payload, offset)
        out.append(value)
    assert out == ["_result", 1.0, None, {"code": "ok"}]
    with pytest.raises(ProtocolError, match="truncated"):
        decode_one(payload, len(payload))
    with pytest.raises(ValueError):
        decode_one(payload, -1)


def test_accepts_bytearray_and_memoryview() -> None:
    payload = encode("onMetaData", EcmaArray(width=1280.0))
    assert decode(bytearray(payload)) == decode(memoryview(payload)) == decode(payload)


def test_string_length_boundary() -> None:
    short = "a" * 0xFFFF
    encoded = encode_value(short)
    assert encoded[:3] == b"\x02\xff\xff" and len(encoded) == 3 + 0xFFFF
    long = "a" * 0x10000
    encoded = encode_value(long)
    assert encoded[:5] == b"\x0c\x00\x01\x00\x00" and len(encoded) == 5 + 0x10000
    assert decode(encoded) == [long]
    # The threshold is on UTF-8 bytes, not characters.
    multibyte = "é" * 40000
    assert encode_value(multibyte)[0] == 0x0C
    assert decode(encode_value(multibyte)) == [multibyte]


def test_decode_xml_document_and_long_string() -> None:
    assert decode(b"\x0f" + u32(7) + b"<a>b</a>"[:7]) == ["<a>b</a"]
    assert decode(b"\x0c" + u32(2) + b"hi") == ["hi"]


def test_decode_typed_object_as_plain_dict() -> None:
    data = b"\x10" + s("flash.Thing") + s("x") + b"\x00" + f64(2.0) + END
    (value,) = decode(data)
    assert type(value) is dict and value == {"x": 2.0}


def test_invalid_utf8_is_replaced_not_rejected() -> None:
    # "café" in latin-1 is not valid UTF-8; neither is the key "té".
    data = b"\x02\x00\x04caf\xe9" + b"\x03\x00\x02t\xe9\x05" + END
    assert decode(data) == ["caf\ufffd", {"t\ufffd": None}]


def test_undefined_sentinel() -> None:
    assert repr(UNDEFINED) == "UNDEFINED"
    assert UNDEFINED is not None
    assert copy.deepcopy(UNDEFINED) is UNDEFINED
    assert pickle.loads(pickle.dumps(UNDEFINED)) is UNDEFINED
    assert decode(b"\x06") == [UNDEFINED] and decode(b"\x06")[0] is UNDEFINED


def test_ecma_array_repr_and_type() -> None:
    arr = EcmaArray(a=1.0)
    assert repr(arr) == "EcmaArray({'a': 1.0})"
    (value,) = decode(encode_value(arr))
    assert type(value) is EcmaArray


# --- encoder errors (our bugs) ----------------------------------------------------------


@pytest.mark.parametrize("value", [b"bytes", object(), {1, 2}, 1j, {1: "x"}, [{"a": object()}]])
def test_encode_unsupported_type_raises_type_error(value: Any) -> None:
    with pytest.raises(TypeError):
        encode_value(value)


def test_encode_unrepresentable_values_raise_value_error() -> None:
    with pytest.raises(ValueError):
        encode_value({"": 1.0})
    with pytest.raises(ValueError):
        encode_value({"k" * 0x10000: 1.0})
    with pytest.raises(ValueError):
        encode_value(AmfDate(0.0, 40000))
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(ValueError):
        encode_value(cyclic)


# --- decoder errors (the peer's fault) --------------------------------------------------


@pytest.mark.parametrize(
    ("marker", "name"),
    [
        (0x04, "movieclip"),
        (0x07, "reference"),
        (0x09, "object-end"),
        (0x0D, "unsupported"),
        (0x0E, "recordset"),
        (0x11, "AVM+"),
        (0x12, "unknown"),
        (0xFF, "unknown"),
    ],
)
def test_rejected_markers_name_the_marker(marker: int, name: str) -> None:
    with pytest.raises(ProtocolError, match=rf"0x{marker:02x}.*") as info:
        decode(bytes([marker]) + b"\x00" * 16)
    assert name in str(info.value)


def test_rejected_marker_nested_in_object() -> None:
    with pytest.raises(ProtocolError, match="0x07"):
        decode(b"\x03" + s("a") + b"\x07\x00\x01" + END)


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x3f\xf0",  # number
        b"\x01",  # boolean
        b"\x02",  # string length
        b"\x02\x00",
        b"\x02\x00\x05abc",  # string body
        b"\x0c\x00\x00\x01\x00abc",  # long string body
        b"\x0f\x00\x00\x00\x09<x/>",  # xml body
        b"\x03",  # object without properties / end
        b"\x03\x00\x01a",  # property without value
        b"\x03\x00\x05ab",  # truncated key
        b"\x03\x00\x01a\x05",  # no end marker
        b"\x03\x00\x01a\x05\x00\x00",  # end marker cut short
        b"\x0a\x00\x00",  # strict array count
        b"\x0a\x00\x00\x00\x02\x05",  # fewer elements than declared
        b"\x0b" + f64(0.0),  # date without timezone
        b"\x08\x00\x00",  # ecma count
        b"\x08\x00\x00\x00\x01\x00\x01a",  # ecma property without value
        b"\x10\x00\x05ab",  # typed object class name
    ],
)
def test_truncated_input_rejected(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="truncated"):
        decode(data)


def test_empty_key_without_object_end_rejected() -> None:
    with pytest.raises(ProtocolError, match="object-end"):
        decode(b"\x03\x00\x00\x05")


def test_ecma_array_wrong_count_is_ignored() -> None:
    body = s("a") + b"\x00" + f64(1.0) + s("b") + b"\x01\x01" + END
    for count in (0, 1, 5, 0xFFFFFFFF):
        assert decode(b"\x08" + u32(count) + body + b"\x05") == [EcmaArray(a=1.0, b=True), None]


def test_ecma_array_missing_terminator_at_end_of_buffer() -> None:
    body = s("duration") + b"\x00" + f64(12.0)
    expected = EcmaArray(duration=12.0)
    # Terminator entirely missing, or just its 0x09.
    assert same(decode(b"\x02\x00\x0aonMetaData\x08" + u32(1) + body), ["onMetaData", expected])
    assert same(decode(b"\x08" + u32(1) + body + b"\x00\x00"), [expected])
    assert same(decode_one(b"\x08" + u32(1) + body), (expected, 5 + len(body)))
    # ...but not when the buffer continues, and not for plain objects.
    with pytest.raises(ProtocolError):
        decode(b"\x08" + u32(1) + body + b"\x00\x00\x05")
    with pytest.raises(ProtocolError, match="truncated"):
        decode(b"\x03" + body)


def nested(kind: str) -> bytes:
    if kind == "strict":
        return b"\x0a" + u32(1)
    if kind == "object":
        return b"\x03" + s("k")
    if kind == "ecma":
        return b"\x08" + u32(1) + s("k")
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["strict", "object", "ecma"])
def test_nesting_limit(kind: str) -> None:
    tail = b"" if kind == "strict" else END

    def build(levels: int) -> bytes:
        return nested(kind) * levels + b"\x05" + tail * levels

    ok = build(DEFAULT_MAX_DEPTH)
    decode(ok)
    with pytest.raises(ProtocolError, match="nested deeper"):
        decode(build(DEFAULT_MAX_DEPTH + 1))
    decode(build(5), max_depth=5)
    with pytest.raises(ProtocolError, match="nested deeper"):
        decode(build(6), max_depth=5)


def test_absurdly_deep_nesting_is_protocol_error_not_recursion_error() -> None:
    data = (b"\x0a" + u32(1)) * 100_000 + b"\x05"
    with pytest.raises(ProtocolError):
        decode(data)
    with pytest.raises(ValueError):
        decode(b"\x05", max_depth=10**6)


def test_nesting_mixed_containers_counts_all_kinds() -> None:
    value: Any = None
    for i in range(DEFAULT_MAX_DEPTH):
        value = [value] if i % 3 == 0 else ({"k": value} if i % 3 == 1 else EcmaArray(k=value))
    assert same(decode(encode_value(value)), [value])
    with pytest.raises(ProtocolError):
        decode(encode_value([value]))


def test_huge_strict_array_count_rejected_without_allocation() -> None:
    data = b"\x0a\xff\xff\xff\xff" + b"\x05" * 5  # 10 bytes claiming 2**32-1 elements
    assert len(data) == 10
    tracemalloc.start()
    try:
        started = time.perf_counter()
        with pytest.raises(ProtocolError, match="4294967295"):
            decode(data)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.05
    assert peak < 64 * 1024


def test_strict_array_count_must_fit_remaining_bytes() -> None:
    with pytest.raises(ProtocolError, match="remain"):
        decode(b"\x0a" + u32(1000) + b"\x05" * 999)
    assert decode(b"\x0a" + u32(1000) + b"\x05" * 1000) == [[None] * 1000]


def test_max_items_limit() -> None:
    count = DEFAULT_MAX_ITEMS + 1
    with pytest.raises(ProtocolError, match="limit"):
        decode(b"\x0a" + u32(count) + b"\x05" * count)
    with pytest.raises(ProtocolError):
        decode(b"\x0a" + u32(4) + b"\x05" * 4, max_items=3)
    obj = encode_value({f"k{i}": None for i in range(4)})
    assert len(decode(obj, max_items=4)[0]) == 4
    with pytest.raises(ProtocolError, match="properties"):
        decode(obj, max_items=3)


# --- properties -------------------------------------------------------------------------

keys = st.text(min_size=1, max_size=12)
long_text = st.builds(
    lambda ch, n: ch * n,
    st.characters(codec="utf-8", exclude_categories=["Cs"]),
    st.integers(min_value=16_000, max_value=70_000),
)
text_values = st.one_of(st.text(max_size=30), st.text(max_size=30), st.text(max_size=30), long_text)
dates = st.builds(
    AmfDate,
    st.floats(allow_nan=False),
    st.integers(min_value=-0x8000, max_value=0x7FFF),
)
leaves = st.one_of(
    text_values,
    st.floats(allow_nan=False),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.booleans(),
    st.none(),
    st.just(UNDEFINED),
    dates,
)
amf_values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.dictionaries(keys, children, max_size=5),
        st.dictionaries(keys, children, max_size=5).map(EcmaArray),
    ),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(amf_values, max_size=3))
def test_round_trip(values: list[Any]) -> None:
    data = encode(*values)
    decoded = decode(data, max_depth=200)
    expected = [normalise(v) for v in values]
    assert same(decoded, expected)
    # Re-encoding the decoded values is byte-identical.
    assert encode(*decoded) == data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    try:
        result = decode(data)
    except ProtocolError:
        return
    assert isinstance(result, list)
    try:
        decode_one(data, 0)
    except ProtocolError:
        pass


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(amf_values, st.data())
def test_fuzz_mutated_valid_payloads(value: Any, data: st.DataObject) -> None:
    payload = bytearray(encode_value(value))
    if len(payload) > 4096:
        payload = payload[:4096]
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        index = data.draw(st.integers(min_value=0, max_value=len(payload)))
        if op == "flip" and index < len(payload):
            payload[index] = data.draw(st.integers(min_value=0, max_value=255))
        elif op == "cut":
            del payload[index:]
        else:
            payload[index:index] = data.draw(st.binary(min_size=1, max_size=4))
    try:
        result = decode(bytes(payload))
    except ProtocolError:
        return
    assert isinstance(result, list)
