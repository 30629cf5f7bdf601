"""The hub: streams, their caches and subscribers, and the fan-out of bytes serialized once. No sockets, no cluster."""
