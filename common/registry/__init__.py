"""Cluster registry: nodes and stream claims, with backends chosen by URL."""

from __future__ import annotations

from common.registry.base import (
    NodeInfo,
    NodeLoad,
    Registry,
    RegistryError,
    RegistryEvent,
    StreamClaim,
)

__all__ = ["NodeInfo", "NodeLoad", "Registry", "RegistryError", "RegistryEvent", "StreamClaim", "open_registry"]


def open_registry(url: str) -> Registry:
    """memory://, redis://host:port/db (rediss:// too), consul://host:port[/prefix]."""
    if url.startswith("memory://"):
        from common.registry.memory import MemoryRegistry

        return MemoryRegistry(url)
    if url.startswith(("redis://", "rediss://")):
        from common.registry.redis import RedisRegistry

        return RedisRegistry(url)
    if url.startswith("consul://"):
        from common.registry.consul import ConsulRegistry

        return ConsulRegistry(url)
    raise ValueError(f"unsupported registry URL {url!r}")
