"""The load runner: many agent sessions per machine, every call leg's audio checked, reports.

Layer: above ``agent`` and ``lab`` (it drives agents and may start the lab); nothing
below imports it.  Modules:

* :mod:`~softphone.load.scenario`: the scenario file (YAML, validated, line numbers in errors)
  and thresholds;
* :mod:`~softphone.load.verdict`: the cheap live audio verdict for every call leg;
* :mod:`~softphone.load.results` / :mod:`~softphone.load.report`: figures, JSON/CSV/JUnit and
  the self-contained HTML report;
* :mod:`~softphone.load.progress`: live progress on the terminal.
"""

from __future__ import annotations
