"""The lab against its own OpenAPI document, with schemathesis over real HTTP.

Runs schemathesis 4's CLI in a subprocess (so the lab keeps serving on this
test's event loop) with a fixed seed and a bounded number of examples per
operation, checking: no 5xx, documented status codes, documented content
types and response bodies that match their schemas.
"""

from __future__ import annotations

import asyncio
import base64
import sys

import aiohttp
import pytest
import yaml
from openapi_spec_validator import validate

from softphone.lab.app import HANDLERS, openapi_text
from softphone.lab.server import start_lab
from softphone.lab.telephony import InMemoryTelephony
from softphone.platform.paths import DEFAULT_PATHS

CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance"
ST = "from schemathesis.cli import schemathesis; schemathesis()"


def test_document_covers_every_route_and_operation():
    doc = yaml.safe_load(openapi_text())
    validate(doc)  # a valid OpenAPI 3.0 document
    assert doc["openapi"].startswith("3.")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    routes = {(DEFAULT_PATHS[n].method, DEFAULT_PATHS[n].template) for n in HANDLERS}
    assert documented == routes
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            assert {"200", "500"} <= codes, (method, path)
            assert "401" in codes, (method, path)
            assert op["operationId"] in HANDLERS


@pytest.mark.slow
async def test_schemathesis_finds_no_failures(tmp_path):
    async with await start_lab(telephony=InMemoryTelephony()) as lab:
        async with aiohttp.ClientSession(lab.url) as session:
            async with session.post("/omni/user/authorize", headers={"Authorization": "Key=lab-system-key"},
                                    json={"user_name": "agent1",
                                          "password": base64.b64encode(b"agent1pass").decode()}) as resp:
                token = (await resp.json())["token_key"]
            # an agent logged in with a live call 1, so the examples (user 1001, call 1) reach the logic
            headers = {"Authorization": "Key=lab-system-key", "tokenKey": token}
            async with session.post("/omni/users/1001/login", headers=headers,
                                    json={"campaign_id": 1, "extension": "9001"}) as resp:
                assert resp.status == 200
            async with session.post("/omni/voice/1001/call", headers=headers,
                                    json={"phone_number": "0821234567", "outbound_cli": "2711",
                                          "unique_id": "st"}) as resp:
                assert (await resp.json())["call_id"] == 1
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", ST, "run", f"{lab.url}/openapi.json",
            "-H", "Authorization: Key=lab-system-key", "-H", f"tokenKey: {token}",
            "--checks", CHECKS, "--phases", "examples,coverage,fuzzing", "--max-examples", "15",
            "--workers", "1", "--seed", "20261127", "--generation-database", "none",
            "--request-timeout", "10", "--no-color", "--report-dir", str(tmp_path / "report"),
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 240)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    assert "19 operations" in text or "Tested: 19" in text or "19/19" in text, text[-3000:]
