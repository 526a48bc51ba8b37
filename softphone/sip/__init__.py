"""SIP over WebSocket (RFC 3261, 7118): pure protocol, no media imports."""
