"""Client of the OmniSense REST API (agent sessions, voice calls, lead archive).

* :mod:`.paths`: the one table of REST paths, overridable by file, env or code;
  the lab serves the same table.
* :mod:`.client`: :class:`~softphone.platform.client.PlatformClient`, async,
  one aiohttp session, typed results (:mod:`.models`) and errors, the token
  cache (:mod:`.auth`), safe retries, TLS verified by default.
* :mod:`.archive` / :mod:`.archive_cli`: any number of leads archived in
  batches of 500 (``softphone leads archive|dearchive``).
* :mod:`.notifications`: a loopback receiver for the platform's webhooks.

Nothing is imported here, so the lab can import :mod:`.paths` without aiohttp
client code.
"""
