"""Office hours: the time condition during which the lead archive API refuses to run.

VICIdial's archive API runs outside office hours only (403 otherwise), so the
lab needs a configurable time condition.  Spec grammar, ranges separated by
``;`` (or given as several options)::

    DAYS HH:MM-HH:MM [ZONE]      e.g. "mon-fri 08:00-17:00 Africa/Johannesburg"
    none                         never office hours (the lab's default)

DAYS is ``mon``..``sun``, a range ``mon-fri`` (may wrap: ``fri-mon``), a
comma list ``mon,wed,fri``, or ``daily``/``*``.  ZONE is an IANA zone name
(default UTC).  A time range whose end is before its start crosses midnight
and belongs to the day it starts on; ``24:00`` is allowed as an end.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from softphone.errors import ConfigurationError
from softphone.log import get_logger

log = get_logger(__name__)

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME_RANGE = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


def _minutes(h: str, m: str, where: str, allow_24: bool) -> int:
    hh, mm = int(h), int(m)
    if mm > 59 or hh > 24 or (hh == 24 and (mm or not allow_24)):
        raise ConfigurationError(f"office hours {where!r}: {h}:{m} is not a valid time of day")
    return hh * 60 + mm


def _days(text: str, where: str) -> frozenset[int]:
    text = text.lower()
    if text in ("daily", "*", "all"):
        return frozenset(range(7))
    out: set[int] = set()
    for part in text.split(","):
        if "-" in part:
            a, _, b = part.partition("-")
            if a not in DAYS or b not in DAYS:
                raise ConfigurationError(f"office hours {where!r}: {part!r} is not a day range like mon-fri")
            i, j = DAYS.index(a), DAYS.index(b)
            k = i
            out.add(k)
            while k != j:
                k = (k + 1) % 7
                out.add(k)
        elif part in DAYS:
            out.add(DAYS.index(part))
        else:
            raise ConfigurationError(
                f"office hours {where!r}: {part!r} is not a day (use mon..sun, mon-fri, daily)")
    return frozenset(out)


@dataclass(frozen=True)
class OfficeRange:
    """Days of the week plus a time-of-day window in one zone."""

    days: frozenset[int]
    start: int  # minutes after midnight
    end: int
    zone: ZoneInfo
    text: str

    def contains(self, now: datetime) -> bool:
        local = now.astimezone(self.zone)
        minute = local.hour * 60 + local.minute
        weekday = local.weekday()
        if self.start < self.end:
            return weekday in self.days and self.start <= minute < self.end
        # crosses midnight: the evening part today, the morning part "yesterday's" range
        if weekday in self.days and minute >= self.start:
            return True
        return (weekday - 1) % 7 in self.days and minute < self.end


def _parse_range(text: str) -> OfficeRange:
    words = text.split()
    if len(words) not in (2, 3):
        raise ConfigurationError(
            f"office hours {text!r}: expected 'DAYS HH:MM-HH:MM [ZONE]', e.g. 'mon-fri 08:00-17:00 UTC'")
    days = _days(words[0], text)
    m = _TIME_RANGE.match(words[1])
    if not m:
        raise ConfigurationError(f"office hours {text!r}: {words[1]!r} is not a time range like 08:00-17:00")
    start = _minutes(m.group(1), m.group(2), text, allow_24=False)
    end = _minutes(m.group(3), m.group(4), text, allow_24=True)
    if start == end:
        raise ConfigurationError(f"office hours {text!r}: the time range is empty")
    zone_name = words[2] if len(words) == 3 else "UTC"
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(f"office hours {text!r}: unknown time zone {zone_name!r}") from None
    return OfficeRange(days=days, start=start, end=end, zone=zone, text=text)


class OfficeHours:
    """A set of ranges; :meth:`is_open` is true inside any of them."""

    def __init__(self, ranges: Iterable[OfficeRange] = ()):
        self.ranges = tuple(ranges)

    @classmethod
    def parse(cls, spec: str | Iterable[str] | None) -> OfficeHours:
        """From one spec string (``;``-separated ranges), several strings, or None/"none"."""
        if spec is None:
            return cls()
        specs = [spec] if isinstance(spec, str) else list(spec)
        ranges: list[OfficeRange] = []
        for s in specs:
            if not isinstance(s, str):
                raise ConfigurationError(f"office hours: {s!r} is not a string")
            for part in s.split(";"):
                part = part.strip()
                if not part:
                    continue
                if part.lower() == "none":
                    continue
                ranges.append(_parse_range(part))
        if not ranges and not any(p.strip().lower() == "none" for s in specs for p in s.split(";")) \
                and any(s.strip() for s in specs):
            raise ConfigurationError(f"office hours {specs!r}: no range given")
        return cls(ranges)

    @property
    def enabled(self) -> bool:
        return bool(self.ranges)

    def is_open(self, now: datetime | None = None) -> bool:
        """Whether ``now`` (aware; default the current time) is inside office hours."""
        now = now or datetime.now(UTC)
        if now.tzinfo is None:
            raise ValueError("office hours: now must be timezone-aware")
        return any(r.contains(now) for r in self.ranges)

    def describe(self) -> str:
        return "; ".join(r.text for r in self.ranges) if self.ranges else "none"

    def __repr__(self) -> str:
        return f"OfficeHours({self.describe()!r})"


__all__ = ["OfficeHours", "OfficeRange"]
