"""Sans-IO RTMP: bytes in, events out; bytes to send are pulled. No asyncio and no sockets here."""
