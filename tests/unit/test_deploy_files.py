"""The Grafana dashboard and scrape config only name metrics conveyor actually exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from service.observability.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
_STANDARD = CollectorRegistry()
for _collector in (ProcessCollector, PlatformCollector, GCCollector):
    _collector(registry=_STANDARD)
_STANDARD_FAMILIES = {family.name for family in _STANDARD.collect()}
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exposed_names() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        names |= {family.name + suffix for suffix in _SUFFIXES[family.type]}
    return names


def test_every_metric_the_dashboard_queries_exists() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "conveyor-dashboard.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queries += [variable["query"]["query"] for variable in dashboard["templating"]["list"][1:]]
    used = {name for query in queries for name in re.findall(r"conveyor_[a-z_]+", query)}

    assert used  # the dashboard does query conveyor's metrics
    assert used <= exposed_names(), used - exposed_names()
    # And every metric conveyor exposes has a panel (process_* and python_* are the client
    # library's standard collectors, not conveyor's).
    families = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in used}
    own = {family.name for family in Metrics().registry.collect()} - _STANDARD_FAMILIES
    assert own <= families


def test_the_scrape_config_reads_metrics_from_the_http_port() -> None:
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    assert config.count("metrics_path: /metrics") == 2
    assert ":8080" in config
