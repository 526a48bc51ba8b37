"""Client of the OmniSense REST API (agent sessions, voice calls, lead archive)."""
