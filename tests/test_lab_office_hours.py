"""Office hours: parsing, errors naming the bad part, and is_open on an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from softphone.errors import ConfigurationError
from softphone.lab.office_hours import OfficeHours

JHB = ZoneInfo("Africa/Johannesburg")  # UTC+2, no DST


def at(y, mo, d, h, mi, tz=UTC):
    return datetime(y, mo, d, h, mi, tzinfo=tz)


def test_none_and_empty_are_never_open():
    for spec in (None, "none", "NONE", " none ", ["none"]):
        hours = OfficeHours.parse(spec)
        assert not hours.enabled and hours.describe() == "none"
        assert not hours.is_open(at(2026, 11, 25, 10, 0))


def test_weekday_range_in_a_zone():
    hours = OfficeHours.parse("mon-fri 08:00-17:00 Africa/Johannesburg")
    # Wednesday 2026-11-25
    assert hours.is_open(at(2026, 11, 25, 8, 0, JHB))
    assert hours.is_open(at(2026, 11, 25, 16, 59, JHB))
    assert not hours.is_open(at(2026, 11, 25, 17, 0, JHB))
    assert not hours.is_open(at(2026, 11, 25, 7, 59, JHB))
    # the same instants seen in UTC: 06:00Z is 08:00 in Johannesburg
    assert hours.is_open(at(2026, 11, 25, 6, 0))
    assert not hours.is_open(at(2026, 11, 25, 5, 59))
    # Saturday
    assert not hours.is_open(at(2026, 11, 28, 10, 0, JHB))


def test_several_ranges_by_semicolon_or_list_and_default_utc():
    hours = OfficeHours.parse("mon-fri 08:00-17:00; sat 09:00-12:00")
    assert hours.is_open(at(2026, 11, 28, 9, 30))
    assert not hours.is_open(at(2026, 11, 28, 12, 0))
    same = OfficeHours.parse(["mon-fri 08:00-17:00", "sat 09:00-12:00"])
    assert [r.text for r in same.ranges] == [r.text for r in hours.ranges]


def test_day_lists_wrapping_ranges_and_daily():
    assert OfficeHours.parse("mon,wed 10:00-11:00").is_open(at(2026, 11, 25, 10, 30))
    assert not OfficeHours.parse("mon,wed 10:00-11:00").is_open(at(2026, 11, 26, 10, 30))
    fri_mon = OfficeHours.parse("fri-mon 10:00-11:00")
    assert fri_mon.is_open(at(2026, 11, 29, 10, 30))  # Sunday
    assert not fri_mon.is_open(at(2026, 11, 25, 10, 30))  # Wednesday
    assert OfficeHours.parse("daily 00:00-24:00").is_open(at(2026, 11, 29, 23, 59))


def test_overnight_range_belongs_to_the_day_it_starts():
    hours = OfficeHours.parse("fri 22:00-06:00 UTC")
    assert hours.is_open(at(2026, 11, 27, 23, 0))  # Friday night
    assert hours.is_open(at(2026, 11, 28, 5, 59))  # Saturday early morning
    assert not hours.is_open(at(2026, 11, 28, 6, 0))
    assert not hours.is_open(at(2026, 11, 27, 5, 0))  # Friday early morning: Thursday's range, none


@pytest.mark.parametrize(("spec", "fragment"), [
    ("weekdays 08:00-17:00", "'weekdays' is not a day"),
    ("mon-fry 08:00-17:00", "'mon-fry' is not a day range"),
    ("mon-fri 8-17", "'8-17' is not a time range"),
    ("mon-fri 08:00-25:00", "25:00 is not a valid time of day"),
    ("mon-fri 08:60-17:00", "08:60 is not a valid time of day"),
    ("mon-fri 09:00-09:00", "the time range is empty"),
    ("mon-fri 08:00-17:00 Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
    ("mon-fri", "expected 'DAYS HH:MM-HH:MM [ZONE]'"),
    ("mon-fri 08:00-17:00 UTC extra", "expected 'DAYS HH:MM-HH:MM [ZONE]'"),
])
def test_bad_specs_name_the_bad_part(spec, fragment):
    with pytest.raises(ConfigurationError, match="office hours") as info:
        OfficeHours.parse(spec)
    assert fragment in str(info.value)


def test_naive_now_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        OfficeHours.parse("daily 00:00-24:00").is_open(datetime(2026, 1, 1))
