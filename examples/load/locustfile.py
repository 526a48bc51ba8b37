"""Agent sessions as Locust users: many machines, Locust's UI, CSV and master/worker aggregation.

Each user is one agent (authorize, extension, register, login, bridge call, audio
verdict, the scenario's steps, logout); every step shows in Locust as a request
(type API, SIP or WEBRTC, name = the step).  Agents come from a CSV of launch
parameters (one row per agent) or a launch URL template with ``{n}``::

    pip install 'softphone[locust]'
    export SOFTPHONE_CREDENTIALS=agents.csv             # or SOFTPHONE_URL_TEMPLATE='https://...{n}...'
    locust -f examples/load/locustfile.py --master --headless -u 100 -r 10 --run-time 5m --csv stats
    locust -f examples/load/locustfile.py --worker --master-host 10.0.0.1    # on each worker machine

Worker ``k``'s ``i``-th user takes row (or agent number) ``k * SOFTPHONE_WORKER_STRIDE + i``,
so workers never share an agent.  ``SOFTPHONE_SCENARIO`` names a scenario file (default:
stay on the bridge call with the audio checked); ``SOFTPHONE_RELAY_ONLY=1`` sends media
through TURN only.
"""

from __future__ import annotations

import os

from softphone.locust import SoftphoneUser


class Agent(SoftphoneUser):
    credentials = os.environ.get("SOFTPHONE_CREDENTIALS")
    url_template = os.environ.get("SOFTPHONE_URL_TEMPLATE")
    scenario = os.environ.get("SOFTPHONE_SCENARIO")
    worker_stride = int(os.environ.get("SOFTPHONE_WORKER_STRIDE", "1000"))
    relay_only = os.environ.get("SOFTPHONE_RELAY_ONLY") == "1"
