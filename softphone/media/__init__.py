"""WebRTC audio with aiortc and PyAV: peer connections, sources, sinks, DTMF, stats."""
