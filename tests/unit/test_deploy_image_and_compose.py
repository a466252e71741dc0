"""deploy/Dockerfile and deploy/compose.yaml agree with the code and with each other.

No Docker engine runs here, so nothing is built or started: these read the files. What they
cannot tell: whether the base image tag still resolves, and whether the containers come up.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from service.settings import parse_duration
from tests.support.deploy_files import Manifest, load_documents, setting_defaults
from tests.support.deploy_files import worst_case_shutdown as shutdown_budget

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONVEYOR_SERVICES = ("conveyor-ingress", "conveyor-worker")


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    lines = [
        line
        for line in (DEPLOY / "Dockerfile").read_text().splitlines()
        if not line.lstrip().startswith("#")
    ]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    pairs = [line.strip().split(None, 1) for line in joined.splitlines() if line.strip()]
    return [(pair[0].upper(), pair[1] if len(pair) > 1 else "") for pair in pairs]


def instructions(name: str) -> list[str]:
    return [
        arguments for instruction, arguments in dockerfile_instructions() if instruction == name
    ]


def dockerignore_includes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    included = True
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/").removeprefix("**/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
        names = prefixes + parts  # a **/ pattern matches at any depth
        if any(fnmatch.fnmatchcase(candidate, pattern) for candidate in names):
            included = negated
    return included


def resolve(value: str) -> str:
    """Compose interpolation with the demo defaults: ${NAME:-default} becomes default."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    (document,) = load_documents(DEPLOY / "compose.yaml")
    return document


def test_the_image_installs_from_the_lock_and_runs_as_a_fixed_non_root_user() -> None:
    installs = [run for run in instructions("RUN") if "pip install" in run and "-c " in run]
    assert any("-c constraints.txt" in run for run in installs)
    (user,) = instructions("USER")
    uid = user.split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0


def test_the_image_is_multi_stage_on_a_pinned_python_the_project_supports() -> None:
    (default,) = [
        arg.split("=", 1)[1] for arg in instructions("ARG") if arg.startswith("PYTHON_IMAGE=")
    ]
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-\w+(@sha256:[0-9a-f]{64})?", default)
    assert match, f"{default}: pin the patch release (and ideally the digest)"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert (int(match[1]), int(match[2])) >= tuple(int(n) for n in requires.lstrip(">=").split("."))
    stages = [arguments.split() for arguments in instructions("FROM")]
    assert stages == [["${PYTHON_IMAGE}", "AS", "builder"], ["${PYTHON_IMAGE}", "AS", "runtime"]]
    copies_from_builder = [copy for copy in instructions("COPY") if "--from=builder" in copy]
    assert copies_from_builder == ["--from=builder /opt/conveyor /opt/conveyor"]


def test_the_image_serves_on_8080_checks_livez_and_stops_on_sigterm() -> None:
    (healthcheck,) = instructions("HEALTHCHECK")
    assert "/livez" in healthcheck
    assert "'8080'" in healthcheck  # the default of CONVEYOR_HTTP_PORT
    assert setting_defaults()["CONVEYOR_HTTP_PORT"] == "8080"
    assert instructions("EXPOSE") == ["8080"]
    assert instructions("STOPSIGNAL") == ["SIGTERM"]
    (entrypoint,) = instructions("ENTRYPOINT")
    (command,) = instructions("CMD")
    assert json.loads(entrypoint) + json.loads(command) == ["conveyor", "serve"]


def test_the_image_carries_the_examples_and_points_at_them() -> None:
    environment = " ".join(instructions("ENV"))
    config = re.search(r"CONVEYOR_CONFIG=(\S+)", environment)
    assert config
    (workdir,) = [w for w in instructions("WORKDIR") if w == "/app"]
    assert config[1] == f"{workdir}/examples/subscriptions.toml"
    assert "examples/ /app/examples/" in instructions("COPY")
    for name in re.findall(r"\b(CONVEYOR_[A-Z_]+)\b", environment):
        assert name in setting_defaults()


def test_every_file_the_image_copies_reaches_the_build_context() -> None:
    sources = [
        source
        for copy in instructions("COPY")
        if "--from=" not in copy
        for source in copy.split()[:-1]
    ]
    assert {"constraints.txt", "pyproject.toml", "service/", "examples/"} <= set(sources)
    for source in sources:
        path = ROOT / source
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        files = [f for f in files if "__pycache__" not in f.parts]
        assert files, source
        for file in files:
            assert dockerignore_includes(str(file.relative_to(ROOT))), file
    # And what must stay out does.
    for private in (".venv/bin/python", ".git/config", "var/conveyor.db", "tests/conftest.py"):
        assert not dockerignore_includes(private), private


def test_compose_runs_the_services_the_issue_names(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"rabbitmq", "postgres", *CONVEYOR_SERVICES, "prometheus", "grafana"}
    assert services["rabbitmq"]["image"].startswith("rabbitmq:3.13")
    assert services["rabbitmq"]["image"].endswith("-management")
    assert services["postgres"]["image"].startswith("postgres:16")
    plugins = next(
        volume.split(":")[0]
        for volume in services["rabbitmq"]["volumes"]
        if volume.split(":")[1] == "/etc/rabbitmq/enabled_plugins"
    )
    enabled = (DEPLOY / plugins).read_text()
    assert "rabbitmq_prometheus" in enabled
    assert "rabbitmq_management" in enabled


@pytest.mark.parametrize(
    ("service", "role"), [("conveyor-ingress", "ingress"), ("conveyor-worker", "worker")]
)
def test_compose_runs_each_role_on_postgresql_after_its_dependencies_are_healthy(
    compose: dict[str, Any], service: str, role: str
) -> None:
    spec: Manifest = compose["services"][service]
    environment = {name: resolve(str(value)) for name, value in spec["environment"].items()}
    assert environment["CONVEYOR_ROLE"] == role
    for name in environment:
        if name.startswith("CONVEYOR_"):
            assert name in setting_defaults(), f"{name} is not in service.settings"
    assert URL(environment["CONVEYOR_STORE_URL"]).scheme == "postgresql"
    assert URL(environment["CONVEYOR_STORE_URL"]).host == "postgres"
    assert URL(environment["CONVEYOR_AMQP_URL"]).host == "rabbitmq"
    assert (DEPLOY / spec["build"]["context"] / spec["build"]["dockerfile"]).is_file()
    for dependency, condition in spec["depends_on"].items():
        assert condition == {"condition": "service_healthy"}
        assert "healthcheck" in compose["services"][dependency]
    assert parse_duration(spec["stop_grace_period"]) >= shutdown_budget(environment)


def test_every_file_compose_mounts_exists(compose: dict[str, Any]) -> None:
    mounts = [
        volume.split(":")[0]
        for service in compose["services"].values()
        for volume in service.get("volumes", [])
        if volume.startswith("./")
    ]
    assert mounts
    for source in mounts:
        assert (DEPLOY / source).exists(), source


def test_prometheus_in_compose_scrapes_both_conveyor_services(compose: dict[str, Any]) -> None:
    (config_file,) = [
        volume.split(":")[0]
        for volume in compose["services"]["prometheus"]["volumes"]
        if volume.split(":")[1] == "/etc/prometheus/prometheus.yml"
    ]
    (config,) = load_documents(DEPLOY / config_file)
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "conveyor"]
    assert job["metrics_path"] == "/metrics"
    targets = {target for group in job["static_configs"] for target in group["targets"]}
    for service in CONVEYOR_SERVICES:
        port = compose["services"][service]["environment"]["CONVEYOR_HTTP_PORT"]
        assert f"{service}:{port}" in targets


def test_grafana_in_compose_provisions_the_dashboard_on_the_prometheus_data_source(
    compose: dict[str, Any],
) -> None:
    grafana = compose["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    dashboard_target = mounts["./grafana/conveyor-dashboard.json"]
    provisioning = {
        target.rsplit("/", 1)[1]: DEPLOY / source
        for source, target in mounts.items()
        if target.startswith("/etc/grafana/provisioning/")
    }
    (providers,) = [load_documents(path)[0] for path in provisioning["dashboards"].glob("*.yaml")]
    (provider,) = providers["providers"]
    assert provider["options"]["path"] == dashboard_target.rsplit("/", 1)[0]
    (sources,) = [load_documents(path)[0] for path in provisioning["datasources"].glob("*.yaml")]
    (source,) = sources["datasources"]
    assert (source["type"], source["isDefault"]) == ("prometheus", True)
    assert source["url"] == "http://prometheus:9090"
    assert "9090:9090" in compose["services"]["prometheus"]["ports"]
    # The dashboard picks its data source by type: the provisioned default answers it.
    dashboard = json.loads((DEPLOY / "grafana" / "conveyor-dashboard.json").read_text())
    variable = dashboard["templating"]["list"][0]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
