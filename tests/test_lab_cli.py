"""`softphone lab` as a user runs it: banner, serving, Ctrl-C, bad options."""

from __future__ import annotations

import asyncio
import json
import signal
from importlib import resources

import aiohttp
import pytest
from lab_cli_support import CLI, start


async def stop(proc: asyncio.subprocess.Process, sig: int = signal.SIGINT) -> tuple[int, str]:
    proc.send_signal(sig)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode()


async def test_serves_until_ctrl_c_and_prints_where(tmp_path):
    proc, banner, _ = await start("--port", "0", "--db", f"sqlite:///{tmp_path}/lab.db")
    try:
        assert banner["url"].startswith("http://127.0.0.1:")
        assert banner["api key from"] == "seed softphone/lab/seed.json"
        assert banner["seed"] == "softphone/lab/seed.json"
        assert banner["office hours"] == "none"
        async with aiohttp.ClientSession(banner["url"]) as session:
            async with session.post("/vicidial/leads/archive", headers={"Authorization": "Key=lab-system-key"},
                                    json={"insert_leads": True, "update_leads": True, "delete_leads": False,
                                          "lead_ids": [1]}) as resp:
                assert resp.status == 200 and (await resp.json())["insert_count"] == 1
    finally:
        code, out = await stop(proc)
    assert code == 0 and "softphone lab: stopped" in out
    assert (tmp_path / "lab.db").exists()


async def test_api_key_seed_and_office_hours_options(tmp_path):
    seed = json.loads(resources.files("softphone.lab").joinpath("seed.json").read_text("utf-8"))
    seed["leads"] = {"generate": {"first_lead_id": 1000, "count": 5, "list_id": 7}}
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(seed))
    proc, banner, _ = await start("--port", "0", "--seed", str(path), "--office-hours", "daily 00:00-24:00",
                               env={"SOFTPHONE_LAB_API_KEY": "from-env-key-123"})
    try:
        assert banner["api key from"] == "environment SOFTPHONE_LAB_API_KEY" and banner["seed"] == str(path)
        assert banner["office hours"] == "daily 00:00-24:00"
        async with aiohttp.ClientSession(banner["url"]) as session:
            body = {"insert_leads": True, "update_leads": True, "delete_leads": True, "lead_ids": [1000]}
            async with session.post("/vicidial/leads/archive", headers={"Authorization": "Key=lab-system-key"},
                                    json=body) as resp:
                assert resp.status == 401
            async with session.post("/vicidial/leads/archive", headers={"Authorization": "Key=from-env-key-123"},
                                    json=body) as resp:
                assert resp.status == 403
            async with session.post("/vicidial/leads/dearchive", headers={"Authorization": "Key=from-env-key-123"},
                                    json={"insert_leads": True, "delete_leads": True, "lead_ids": [1]}) as resp:
                # lead 1 is not in this seed: nothing archived, so it "does not exist"
                assert resp.status == 400 and (await resp.json())["lead_ids"] == [1]
    finally:
        code, _ = await stop(proc)
    assert code == 0


async def test_paths_file_moves_the_routes(tmp_path):
    paths = tmp_path / "paths.json"
    paths.write_text(json.dumps({"paths": {"lead_archive": "/custom/archive"}}))
    proc, banner, _ = await start("--port", "0", "--paths-file", str(paths))
    try:
        assert "/custom/archive" in banner["paths"]
        async with aiohttp.ClientSession(banner["url"]) as session:
            async with session.post("/custom/archive", json={}) as resp:
                assert resp.status == 401 and await resp.json() == {"message": "unable to validate api user"}
    finally:
        code, _ = await stop(proc)
    assert code == 0


async def test_sigterm_is_a_clean_stop_too():
    proc, _banner, _ = await start("--port", "0")
    code, out = await stop(proc, signal.SIGTERM)
    assert code == 0 and "softphone lab: stopped" in out


@pytest.mark.parametrize(("args", "fragment"), [
    (["--db", "postgres://x/y"], "unsupported scheme 'postgres'"),
    (["--office-hours", "someday 08:00-17:00"], "'someday' is not a day"),
])
async def test_bad_configuration_exits_2_with_the_reason(args, fragment):
    proc = await asyncio.create_subprocess_exec(*CLI, "--port", "0", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    _out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert fragment in err.decode()
