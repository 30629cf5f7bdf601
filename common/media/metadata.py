"""onMetaData: the one parser of a stream's metadata message, for the hub and the load tools alike.

Publishers send ``@setDataFrame onMetaData {...}``; players expect ``onMetaData {...}``.
"""

from __future__ import annotations

from typing import Any

from common.rtmp import amf0
from common.rtmp.errors import ProtocolError


def _metadata_values(payload: bytes) -> list[Any] | None:
    """The AMF0 values from ``onMetaData`` on (a ``@setDataFrame`` wrapper removed); None if not metadata."""
    try:
        values = amf0.decode(payload)
    except ProtocolError:
        return None
    if values and values[0] == "@setDataFrame":
        values = values[1:]
    if len(values) >= 2 and values[0] == "onMetaData":
        return values
    return None


def metadata_properties(payload: bytes) -> dict[str, Any] | None:
    """The properties object of an onMetaData message; None if the payload is not one."""
    values = _metadata_values(payload)
    if values is None or not isinstance(values[1], dict):
        return None
    return dict(values[1])


def player_metadata(payload: bytes) -> bytes | None:
    """``@setDataFrame onMetaData {...}`` re-encoded as the ``onMetaData {...}`` players expect; None if not
    metadata."""
    values = _metadata_values(payload)
    return amf0.encode(*values) if values is not None else None
