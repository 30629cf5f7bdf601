"""Stream keys: the one place that knows a stream is named ``APP/NAME`` and what a valid name is."""

from __future__ import annotations

import re
from typing import NamedTuple

# App and stream names: path-safe, bounded. No '..', no leading dots, no slashes inside a name.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


def valid_name(value: str) -> bool:
    return bool(_NAME.match(value)) and ".." not in value


class StreamKey(NamedTuple):
    """A stream's identity across the cluster; ``str(key)`` is the registry's ``app/name`` form."""

    app: str
    name: str

    def __str__(self) -> str:
        return f"{self.app}/{self.name}"

    @property
    def valid(self) -> bool:
        return valid_name(self.app) and valid_name(self.name)

    @classmethod
    def parse(cls, text: str) -> StreamKey:
        """``app/name`` as the registry stores it; ValueError for anything else."""
        app, sep, name = text.partition("/")
        if not sep or "/" in name:
            raise ValueError(f"expected APP/NAME, got {text!r}")
        return cls(app, name)
