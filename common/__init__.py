"""Code every process shares, in layers: base helpers, the RTMP protocol, media, the hub, the registry,
serving (asyncio), and the node runtime. See docs/ARCHITECTURE.md for what each layer may import."""
