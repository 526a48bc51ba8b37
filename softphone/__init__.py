"""softphone: a headless WebRTC softphone agent for TForge OmniSense.

Layers, each importing only those below it::

    cli, agent
    lab (sip, media)      platform (REST client)
    media (aiortc, PyAV)  sip (pure protocol)
    params, errors, log
"""

__version__ = "0.1.0"
