"""Code shared by every livecdn node: RTMP protocol core, media parsing, the stream hub, config."""
