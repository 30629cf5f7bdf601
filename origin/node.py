"""Origin node: accepts RTMP publishes and serves their streams to edges and players."""

from __future__ import annotations

from typing import ClassVar

from common.node import Node


class OriginNode(Node):
    role: ClassVar[str] = "origin"
