"""A local stand-in for the OmniSense platform: REST API, database, telephony."""
