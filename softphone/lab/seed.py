"""The lab's fixture data: customers, users, campaigns, the system key and sample leads.

The default file is ``softphone/lab/seed.json`` (documented there and in
README); ``softphone lab --seed FILE`` takes another with the same shape.
Seeding is idempotent: rows that exist are left alone, and a sample lead is
inserted only when its ``lead_id`` is in neither ``vicidial_list`` nor the
archive (so restarting a lab on a file database never resurrects archived
leads).  :func:`make_lead` generates deterministic, realistic leads: the seed
file's leads and the benchmark's 100,000 come from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from softphone.errors import ConfigurationError
from softphone.lab.db import Database, Tx
from softphone.lab.schema import LEAD_COLUMN_NAMES, lead_column_list
from softphone.log import get_logger

log = get_logger(__name__)

DEFAULT_SEED = "seed.json"
#: expire_date of extensions a seed file gives users directly ("extension": "9101")
PRESEEDED_EXPIRY = "2099-12-31T23:59:59+00:00"

_FIRST = ("Thabo", "Aisha", "Pieter", "Naledi", "John", "Maria", "Sipho", "Fatima", "David", "Lerato",
          "James", "Zanele", "Ahmed", "Emma", "Kagiso", "Grace", "Lwazi", "Sarah", "Ruan", "Precious")
_LAST = ("Mokoena", "Patel", "van der Merwe", "Dlamini", "Smith", "Naidoo", "Botha", "Khumalo",
         "Nkosi", "Jacobs", "Pillay", "Ndlovu", "Williams", "Mahlangu", "Coetzee", "Zulu")
_CITIES = (("Johannesburg", "Gauteng", "2001"), ("Cape Town", "Western Cape", "8001"),
           ("Durban", "KwaZulu-Natal", "4001"), ("Pretoria", "Gauteng", "0002"),
           ("Port Elizabeth", "Eastern Cape", "6001"), ("Bloemfontein", "Free State", "9301"))
_STREETS = ("Main Road", "Church Street", "Long Street", "Jan Smuts Avenue", "Oxford Road", "Beach Road")
_STATUSES = ("NEW", "NEW", "NEW", "NA", "B", "CALLBK", "SALE", "DNC", "NI")


def make_lead(lead_id: int, list_id: int = 101) -> dict[str, Any]:
    """A deterministic lead for ``lead_id``: every ``vicidial_list`` column filled."""
    i = lead_id
    first = _FIRST[i % len(_FIRST)]
    last = _LAST[(i * 7) % len(_LAST)]
    city, province, postal = _CITIES[(i * 3) % len(_CITIES)]
    entry = datetime(2026, 1, 1, 8, 0, 0) + timedelta(minutes=37 * i)
    called = (i * 5) % 4
    return {
        "lead_id": i,
        "entry_date": entry.strftime("%Y-%m-%d %H:%M:%S"),
        "modify_date": (entry + timedelta(days=2, seconds=i % 3600)).strftime("%Y-%m-%d %H:%M:%S"),
        "status": _STATUSES[i % len(_STATUSES)],
        "user": "" if called == 0 else f"agent{1 + i % 3}",
        "vendor_lead_code": f"VLC{i:07d}",
        "source_id": "lab-seed",
        "list_id": list_id,
        "gmt_offset_now": 2.0,
        "called_since_last_reset": "N" if called == 0 else "Y",
        "phone_code": "27",
        "phone_number": f"0{(820000000 + i * 7919) % 1000000000:09d}",
        "title": ("Mr", "Ms", "Dr", "Mrs")[i % 4],
        "first_name": first,
        "middle_initial": chr(ord("A") + i % 26),
        "last_name": last,
        "address1": f"{1 + i % 250} {_STREETS[i % len(_STREETS)]}",
        "address2": "" if i % 3 else f"Unit {i % 40 + 1}",
        "address3": None,
        "city": city,
        "state": "",
        "province": province,
        "postal_code": postal,
        "country_code": "ZA",
        "gender": ("M", "F", "U")[i % 3],
        "date_of_birth": (date(1960, 1, 1) + timedelta(days=(i * 389) % 15000)).isoformat(),
        "alt_phone": "" if i % 2 else f"0{(710000000 + i * 31) % 1000000000:09d}",
        "email": f"{first.lower()}.{last.lower().replace(' ', '')}{i}@example.com",
        "security_phrase": "",
        "comments": None if i % 4 else f"Sample lead {i}",
        "called_count": called,
        "last_local_call_time": None if called == 0 else (entry + timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S"),
        "rank": 0,
        "owner": "",
        "entry_list_id": 0,
    }


def lead_row(lead: dict[str, Any]) -> tuple:
    return tuple(lead.get(c) for c in LEAD_COLUMN_NAMES)


INSERT_LEAD_SQL = (f"INSERT INTO vicidial_list ({lead_column_list()}) "
                   f"VALUES ({', '.join('?' * len(LEAD_COLUMN_NAMES))})")


SUPERVISOR = "supervisor"
#: a user's role; an agent's token acts on its own user only
ROLES = ("agent", SUPERVISOR)


@dataclass
class Seed:
    """The contents of a seed file, validated."""

    path: str
    api_key: str
    customers: list[dict[str, Any]]
    users: list[dict[str, Any]]
    campaigns: list[dict[str, Any]]
    leads: list[dict[str, Any]] = field(default_factory=list)

    def user(self, user_id: int) -> dict[str, Any] | None:
        return next((u for u in self.users if u["user_id"] == user_id), None)

    @property
    def supervisor_ids(self) -> frozenset[int]:
        """Users whose token may act beyond their own paths (campaign status, notification URL)."""
        return frozenset(u["user_id"] for u in self.users if u.get("role") == SUPERVISOR)

    def __repr__(self) -> str:  # never the api key or passwords
        return (f"Seed({self.path!r}, {len(self.customers)} customer(s), {len(self.users)} user(s), "
                f"{len(self.campaigns)} campaign(s), {len(self.leads)} lead(s))")


def _need(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ConfigurationError(f"seed {where}: missing {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigurationError(f"seed {where}.{key}: wrong type {type(value).__name__}")
    return value


def load_seed(path: str | Path | None = None) -> Seed:
    """Read and validate a seed file (default: the packaged ``seed.json``)."""
    if path is None:
        where = f"softphone/lab/{DEFAULT_SEED}"
        text = resources.files("softphone.lab").joinpath(DEFAULT_SEED).read_text("utf-8")
    else:
        where = str(path)
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise ConfigurationError(f"seed {where}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"seed {where}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"seed {where}: top level must be an object")
    api_key = _need(data, "api_key", str, where)
    customers = data.get("customers", [])
    users = _need(data, "users", list, where)
    campaigns = _need(data, "campaigns", list, where)
    for n, c in enumerate(customers):
        _need(c, "customer_id", int, f"{where} customers[{n}]")
    for n, u in enumerate(users):
        w = f"{where} users[{n}]"
        _need(u, "user_id", int, w)
        _need(u, "user_name", str, w)
        _need(u, "password", str, w)
        _need(u, "customer_id", int, w)
        if "extension" in u:
            _need(u, "extension", str, w)
        if "role" in u and _need(u, "role", str, w) not in ROLES:
            raise ConfigurationError(f"seed {w}.role: must be one of {', '.join(ROLES)}")
    for n, c in enumerate(campaigns):
        w = f"{where} campaigns[{n}]"
        _need(c, "campaign_id", int, w)
        _need(c, "campaign_name", str, w)
        if _need(c, "status", int, w) not in (0, 1, 2):
            raise ConfigurationError(f"seed {w}.status: must be 0, 1 or 2")
    leads: list[dict[str, Any]] = []
    spec = data.get("leads", {})
    for n, lead in enumerate(spec.get("rows", []) if isinstance(spec, dict) else []):
        _need(lead, "lead_id", int, f"{where} leads.rows[{n}]")
        unknown = set(lead) - set(LEAD_COLUMN_NAMES)
        if unknown:
            raise ConfigurationError(f"seed {where} leads.rows[{n}]: unknown column(s) {sorted(unknown)}")
        leads.append(lead)
    if isinstance(spec, dict) and "generate" in spec:
        gen = spec["generate"]
        first = _need(gen, "first_lead_id", int, f"{where} leads.generate")
        count = _need(gen, "count", int, f"{where} leads.generate")
        list_id = _need(gen, "list_id", int, f"{where} leads.generate")
        leads.extend(make_lead(i, list_id) for i in range(first, first + count))
    return Seed(path=where, api_key=api_key, customers=customers, users=users, campaigns=campaigns,
                leads=leads)


async def apply_seed(db: Database, seed: Seed) -> None:
    """Insert the seed's rows that are not there yet (idempotent)."""

    async def run(tx: Tx) -> None:
        for c in seed.customers:
            if not await tx.fetchone("SELECT 1 FROM lab_customers WHERE customer_id = ?", (c["customer_id"],)):
                await tx.execute("INSERT INTO lab_customers (customer_id, name) VALUES (?, ?)",
                                 (c["customer_id"], str(c.get("name", ""))))
        for u in seed.users:
            if not await tx.fetchone("SELECT 1 FROM lab_users WHERE user_id = ?", (u["user_id"],)):
                await tx.execute(
                    "INSERT INTO lab_users (user_id, user_name, password, customer_id, status) "
                    "VALUES (?, ?, ?, ?, 'LOGGED_OUT')",
                    (u["user_id"], u["user_name"], u["password"], u["customer_id"]))
            if u.get("extension") and not await tx.fetchone(
                    "SELECT 1 FROM lab_extensions WHERE user_id = ? OR extension = ?", (u["user_id"], u["extension"])):
                await tx.execute(
                    "INSERT INTO lab_extensions (extension, user_id, customer_id, expire_date) VALUES (?, ?, ?, ?)",
                    (u["extension"], u["user_id"], u["customer_id"], PRESEEDED_EXPIRY))
        for c in seed.campaigns:
            if not await tx.fetchone("SELECT 1 FROM lab_campaigns WHERE campaign_id = ?", (c["campaign_id"],)):
                await tx.execute(
                    "INSERT INTO lab_campaigns (campaign_id, campaign_name, status, list_id) VALUES (?, ?, ?, ?)",
                    (c["campaign_id"], c["campaign_name"], c["status"], int(c.get("list_id", 0))))
        if seed.leads:
            ids = [lead["lead_id"] for lead in seed.leads]
            present: set[int] = set()
            for table in ("vicidial_list", "vicidial_list_archive"):
                for start in range(0, len(ids), 500):
                    chunk = ids[start:start + 500]
                    rows = await tx.fetchall(
                        f"SELECT lead_id FROM {table} WHERE lead_id IN ({', '.join('?' * len(chunk))})", chunk)
                    present.update(int(r[0]) for r in rows)
            new = [lead_row(lead) for lead in seed.leads if lead["lead_id"] not in present]
            await tx.executemany(INSERT_LEAD_SQL, new)
            log.info("seeded %d lead(s) (%d already present)", len(new), len(present))

    await db.run_transaction(run)
