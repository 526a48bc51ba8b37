"""The load runner: many agent sessions per machine, every call leg's audio checked, reports.

Layer: above ``agent`` and ``lab`` (it drives agents and may start the lab); nothing
below imports it.  Modules:

* :mod:`~softphone.load.runner`: ``softphone load``'s parent process (options, the embedded
  lab, spawning the workers, live progress, the run's results and reports);
* :mod:`~softphone.load.worker`: one worker process (its agents on one loop, status, results);
* :mod:`~softphone.load.agent_run`: one agent's session through the flow and the scenario;
* :mod:`~softphone.load.credentials`: who the agents are (URL template or CSV);
* :mod:`~softphone.load.scenario`: the scenario file (YAML, validated, line numbers in errors)
  and thresholds;
* :mod:`~softphone.load.verdict`: the cheap live audio verdict for every call leg;
* :mod:`~softphone.load.results` / :mod:`~softphone.load.report`: figures, JSON/CSV/JUnit and
  the self-contained HTML report;
* :mod:`~softphone.load.progress`: live progress on the terminal.
"""

from __future__ import annotations
