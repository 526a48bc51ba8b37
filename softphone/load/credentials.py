"""Who the load agents are: one :class:`AgentSpec` per agent, from a URL template or a CSV.

``softphone load`` takes the agents' launch parameters three ways: ``--url-template``
(``{n}`` becomes 1..N), ``--credentials`` (one CSV row per agent) or ``--lab`` (the
runner seeds them); the worker only ever sees the resulting specs.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from softphone.errors import ConfigurationError


@dataclass(frozen=True)
class AgentSpec:
    """One agent: its number (1..N), a launch URL and/or launch-parameter flags."""

    n: int
    url: str | None = None
    flags: dict[str, str] = field(default_factory=dict)


def specs_from_template(template: str, agents: int) -> list[AgentSpec]:
    """``{n}`` in the URL becomes 1..N (e.g. ``...&username=agent{n}&user_id=10{n:02d}``)."""
    if "{n" not in template:
        raise ConfigurationError("--url-template: needs {n} where the agent number goes")
    try:
        return [AgentSpec(n, url=template.format(n=n)) for n in range(1, agents + 1)]
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigurationError(f"--url-template: {exc}; only {{n}} (e.g. {{n:03d}}) may appear") from None


def specs_from_csv(path: Path, agents: int | None = None) -> list[AgentSpec]:
    """One row per agent; the header names launch parameters (``url`` may hold a whole launch URL)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise ConfigurationError(f"--credentials {path}: {exc.strerror or exc}") from exc
    if not rows:
        raise ConfigurationError(f"--credentials {path}: no rows under the header")
    specs = []
    for i, row in enumerate(rows, start=1):
        flags = {k.strip(): v.strip() for k, v in row.items() if k and v not in (None, "") and k.strip() != "url"}
        url = (row.get("url") or "").strip() or None
        specs.append(AgentSpec(i, url=url, flags=flags))
    if agents is not None:
        if agents > len(specs):
            raise ConfigurationError(f"--credentials {path}: {len(specs)} row(s) for {agents} agents")
        specs = specs[:agents]
    return specs
