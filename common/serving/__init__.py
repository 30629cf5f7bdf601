"""Serving: asyncio RTMP connections and client, HTTP-FLV, and the policy interface the roles implement."""
