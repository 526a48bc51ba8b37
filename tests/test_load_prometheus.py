"""The Prometheus exposition of the live counters."""

from __future__ import annotations

import aiohttp
import pytest

from softphone.errors import ConfigurationError
from softphone.load.progress import RunStatus, WorkerStatus
from softphone.load.prometheus import PrometheusExporter, parse_listen, render


def _status() -> RunStatus:
    return RunStatus(elapsed=12.5, duration=60, target_agents=10, active=9, registered=9, in_call=8, calls=20,
                     failures={"SIP 503": 2, 'odd "cause"\n': 1},
                     workers=(WorkerStatus(0, 5, 25.0, 80.0, 3.0), WorkerStatus(1, 4, 50.0, 90.0, 12.0)))


def test_render_is_the_text_format():
    text = render(_status(), cpu_cores=0.75, pss_bytes=170 * 1024 ** 2)
    lines = text.splitlines()
    assert "# TYPE softphone_load_calls_total counter" in lines
    assert "softphone_load_agents_in_call 8" in lines and "softphone_load_calls_total 20" in lines
    assert 'softphone_load_failures_total{cause="SIP 503"} 2' in lines
    assert 'softphone_load_failures_total{cause="odd \\"cause\\"\\n"} 1' in lines  # escaped label value
    assert 'softphone_load_worker_cpu_ratio{worker="1"} 0.5' in lines
    assert "softphone_load_loop_lag_seconds 0.012" in lines and "softphone_load_cpu_cores 0.75" in lines
    for line in lines:  # every sample line is NAME[{labels}] VALUE
        if not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])


def test_parse_listen():
    assert parse_listen("9464") == ("127.0.0.1", 9464)
    assert parse_listen("0.0.0.0:9100") == ("0.0.0.0", 9100)
    with pytest.raises(ConfigurationError, match="PORT or HOST:PORT"):
        parse_listen("metrics")


async def test_exporter_serves_the_latest_update():
    exporter = PrometheusExporter("127.0.0.1", 0)
    url = await exporter.start()
    try:
        exporter.update(_status(), cpu_cores=0.5, pss_bytes=1.0)
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            assert resp.status == 200 and resp.content_type == "text/plain"
            assert "softphone_load_agents_active 9" in await resp.text()
    finally:
        await exporter.close()
