"""Media formats: FLV tag inspection (AVC/HEVC/AAC, Enhanced RTMP), FLV muxing, onMetaData."""
