"""docker-compose's lab, database and turn services are wired together consistently (no Docker here)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from softphone.cli import lab_command
from softphone.lab.db import parse_database_url

REPO = Path(__file__).resolve().parents[1]
_DEFAULT = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")
_REQUIRED = re.compile(r"\$\{(\w+):\?[^}]*\}")


def expand(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR:-default} / ${VAR:?message} / ${VAR} with ``env`` as the environment."""
    text = _REQUIRED.sub(lambda m: env[m.group(1)], text)
    return _DEFAULT.sub(lambda m: env.get(m.group(1), m.group(2) or ""), text)


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_lab_service_is_built_from_this_repository_and_runs_softphone_lab():
    lab = compose()["services"]["lab"]
    assert lab["build"]["context"] == "." and lab["network_mode"] == "host"
    dockerfile = (REPO / lab["build"]["dockerfile"]).read_text()
    assert 'ENTRYPOINT ["softphone", "lab"]' in dockerfile
    for line in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for copied in line.split():
            assert (REPO / copied).exists(), f"the Dockerfile copies {copied}, which is not in the repository"
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert "softphone" not in ignored and "pyproject.toml" not in ignored and "README.md" not in ignored


def test_lab_command_uses_only_options_softphone_lab_has():
    lab = compose()["services"]["lab"]
    options = {opt for param in lab_command.params for opt in param.opts + param.secondary_opts}
    envvars = {param.envvar for param in lab_command.params if param.envvar}
    for arg in lab["command"]:
        assert arg.split("=", 1)[0] in options, f"softphone lab has no option {arg!r}"
    for name in lab["environment"]:
        assert name in envvars or name == "LAB_PORT", f"softphone lab reads no {name}"
    assert "LAB_PORT" in (REPO / "Dockerfile").read_text()  # the health check's port


def test_lab_database_and_turn_are_wired_together():
    services = compose()["services"]
    lab, database, turn = services["lab"], services["database"], services["turn"]
    env = {"LAB_DB_PASSWORD": "s3cret", "TURN_PASSWORD": "turn-pass"}
    assert lab["depends_on"]["database"]["condition"] == "service_healthy"
    assert "turn" in lab["depends_on"]
    url = parse_database_url(expand(lab["environment"]["SOFTPHONE_LAB_DB"], env))
    db_env = {k: expand(str(v), env) for k, v in database["environment"].items()}
    assert url.dialect.name == "mysql"
    assert (url.user, url.password.reveal(), url.database) == (
        db_env["MARIADB_USER"], db_env["MARIADB_PASSWORD"], db_env["MARIADB_DATABASE"])
    published = expand(database["ports"][0], env)
    assert published == f"{url.host}:{url.port}:3306"  # the lab (host network) reaches the published port
    command = {arg.split("=", 1)[0]: expand(arg.split("=", 1)[1], env) for arg in lab["command"] if "=" in arg}
    assert "--no-turn" in lab["command"]
    turn_env = {k: expand(str(v), env) for k, v in turn["environment"].items()}
    assert command["--turn-port"] == turn_env["TURN_PORT"]
    turn_user = expand(lab["environment"]["SOFTPHONE_LAB_TURN_USER"], env)
    assert turn_user == f"{turn_env['TURN_USER']}:{turn_env['TURN_PASSWORD']}"
    assert {"lab-db", "lab-recordings"} <= set(compose()["volumes"])
    assert command["--recordings"] in [v.split(":")[1] for v in lab["volumes"]]
