"""deploy/k8s: lint-clean YAML, objects that validate against the Kubernetes API schemas, custom
resources with what their operators need, and values that agree with the code.

The kustomize base and the example overlay are rendered by tests/support/deploy_files.py (a subset
that fails on any field it does not know; its output matched `kubectl kustomize` v5.5 when it was
written). Not checked here: the custom resources against their operators' full CRD schemas (only
the fields below), and anything that needs a cluster (admission, the operators' reconciliation).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import pytest
from yamllint import linter  # type: ignore[import-untyped]  # ships no type information
from yamllint.config import YamlLintConfig  # type: ignore[import-untyped]  # same package

from producers.topology import Topology
from service.settings import parse_duration
from service.subscription_config import load_subscriptions
from tests.support.deploy_files import (
    Manifest,
    find,
    load_documents,
    one,
    pod_containers,
    render,
    setting_defaults,
    worst_case_shutdown,
)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "k8s" / "base"
OVERLAY = DEPLOY / "k8s" / "overlays" / "example"
# A release kubernetes-validate ships schemas for; the manifests use only GA APIs older than it.
KUBERNETES_VERSION = "1.33"
CUSTOM_RESOURCES = {
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
}
# Secrets the manifests read and something outside them creates (deploy/README.md says what).
EXTERNAL_SECRETS = {"conveyor-store", "conveyor-admin", "conveyor-api-keys"}
NAMESPACE = "conveyor"


def plain_env(container: Manifest) -> dict[str, str]:
    return {entry["name"]: entry["value"] for entry in container["env"] if "value" in entry}


@pytest.fixture(scope="module")
def base() -> list[Manifest]:
    return render(BASE)


@pytest.fixture(scope="module")
def overlay() -> list[Manifest]:
    return render(OVERLAY)


def deployments(objects: list[Manifest]) -> dict[str, Manifest]:
    return {manifest["metadata"]["name"]: manifest for manifest in find(objects, "Deployment")}


def conveyor_container(deployment: Manifest) -> Manifest:
    return next(c for c in pod_containers(deployment) if c["name"] == "conveyor")


def test_every_yaml_file_under_deploy_passes_yamllint() -> None:
    config = YamlLintConfig(file=str(DEPLOY / ".yamllint"))
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    problems = [
        f"{path.relative_to(ROOT)}:{problem.line}: {problem.message}"
        for path in files
        for problem in linter.run(path.read_text(encoding="utf-8"), config, str(path))
    ]

    assert {"compose.yaml", "kustomization.yaml", "worker-scaledobject.yaml"} <= {
        path.name for path in files
    }
    assert problems == []


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
def test_every_kubernetes_object_validates_against_the_api_schema(directory: Path) -> None:
    objects = render(directory)
    validated = set()
    for manifest in objects:
        key = (manifest["apiVersion"], manifest["kind"])
        if key in CUSTOM_RESOURCES:
            continue
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        validated.add(manifest["kind"])

    expected = {
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    }
    assert validated == (expected | {"Namespace"} if directory == OVERLAY else expected)
    assert {(manifest["apiVersion"], manifest["kind"]) for manifest in objects} >= CUSTOM_RESOURCES


def test_the_base_has_no_namespace_and_the_overlay_puts_everything_in_one(
    base: list[Manifest], overlay: list[Manifest]
) -> None:
    assert all("namespace" not in manifest["metadata"] for manifest in base)
    namespaced = [manifest for manifest in overlay if manifest["kind"] != "Namespace"]
    assert {manifest["metadata"]["namespace"] for manifest in namespaced} == {NAMESPACE}
    assert one(overlay, "Namespace")["metadata"]["name"] == NAMESPACE


def test_the_overlay_changes_what_it_says_and_nothing_else(
    base: list[Manifest], overlay: list[Manifest]
) -> None:
    for deployment in deployments(overlay).values():
        assert conveyor_container(deployment)["image"] == "registry.example.com/conveyor:0.1.0"
    hpa = one(overlay, "HorizontalPodAutoscaler", "conveyor-ingress")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 12)
    assert one(overlay, "ScaledObject", "conveyor-worker")["spec"]["maxReplicaCount"] == 20
    worker = conveyor_container(deployments(overlay)["conveyor-worker"])
    assert plain_env(worker)["CONVEYOR_LOG_LEVEL"] == "debug"
    # Everything the base defines is still there, once.
    names = sorted((manifest["kind"], manifest["metadata"]["name"]) for manifest in base)
    assert (
        sorted(
            (manifest["kind"], manifest["metadata"]["name"])
            for manifest in overlay
            if manifest["kind"] != "Namespace"
        )
        == names
    )


def test_every_conveyor_variable_is_a_setting_and_every_reference_resolves(
    base: list[Manifest],
) -> None:
    rabbitmq = one(base, "RabbitmqCluster")["metadata"]["name"]
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for deployment in deployments(base).values():
        defined: list[str] = []
        for entry in conveyor_container(deployment)["env"]:
            name = entry["name"]
            if name.startswith("CONVEYOR_"):
                assert name in setting_defaults(), f"{name} is not in service.settings"
            # Kubernetes expands $(NAME) only for variables defined earlier in the list.
            for reference in re.findall(r"\$\(([A-Z0-9_]+)\)", entry.get("value", "")):
                assert reference in defined, f"{name} refers to {reference} before it exists"
            secret = entry.get("valueFrom", {}).get("secretKeyRef")
            if secret is not None:
                assert secret["name"] in EXTERNAL_SECRETS | {f"{rabbitmq}-default-user"}
                assert f"`{secret['name']}`" in readme, f"deploy/README.md names {secret['name']}"
            defined.append(name)
        assert {"CONVEYOR_AMQP_URL", "CONVEYOR_STORE_URL", "CONVEYOR_CONFIG"} <= set(defined)


def test_the_broker_url_points_at_the_rabbitmq_cluster(base: list[Manifest]) -> None:
    rabbitmq = one(base, "RabbitmqCluster")["metadata"]["name"]
    for deployment in deployments(base).values():
        url = plain_env(conveyor_container(deployment))["CONVEYOR_AMQP_URL"]
        assert url.startswith("amqp://$(RABBITMQ_USERNAME):$(RABBITMQ_PASSWORD)@")
        assert url.endswith(f"@{rabbitmq}:5672/")


def test_probes_ask_livez_and_readyz_on_the_container_port(base: list[Manifest]) -> None:
    for deployment in deployments(base).values():
        container = conveyor_container(deployment)
        port = int((setting_defaults() | plain_env(container))["CONVEYOR_HTTP_PORT"])
        (declared,) = container["ports"]
        assert (declared["name"], declared["containerPort"]) == ("http", port)
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["port"] in ("http", port)


def test_grace_periods_cover_the_worst_case_shutdown(base: list[Manifest]) -> None:
    for name, deployment in deployments(base).items():
        container = conveyor_container(deployment)
        needed = worst_case_shutdown(plain_env(container))
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= needed
        if name == "conveyor-ingress":
            # The load balancer must have noticed the 503s before the listener closes.
            probe = container["readinessProbe"]
            drain = parse_duration(plain_env(container)["CONVEYOR_DRAIN_DELAY"])
            assert drain >= probe["periodSeconds"] * probe["failureThreshold"]


def test_pods_run_unprivileged_on_a_read_only_root(base: list[Manifest]) -> None:
    dockerfile_user = re.findall(r"^USER (\d+)", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)[
        -1
    ]
    for deployment in deployments(base).values():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == int(dockerfile_user)
        assert pod["automountServiceAccountToken"] is False
        container = conveyor_container(deployment)
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        # Python's tempfile needs a writable /tmp on a read-only root.
        tmp = mounts["/tmp"]  # noqa: S108 - a path inside the pod, not a file this test opens
        assert "emptyDir" in volumes[tmp]
        # The store is PostgreSQL from a Secret: a SQLite file in an emptyDir would be per pod.
        store = next(e for e in container["env"] if e["name"] == "CONVEYOR_STORE_URL")
        assert store["valueFrom"]["secretKeyRef"]["name"] == "conveyor-store"


def test_both_roles_read_the_subscriptions_the_config_map_holds(base: list[Manifest]) -> None:
    config_map = one(base, "ConfigMap", "conveyor-subscriptions")
    for deployment in deployments(base).values():
        container = conveyor_container(deployment)
        volumes = {
            volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]
        }
        path = Path(plain_env(container)["CONVEYOR_CONFIG"])
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent))
        assert volumes[mount["name"]]["configMap"]["name"] == config_map["metadata"]["name"]
        assert path.name in config_map["data"]
    # The file is a valid subscriptions file whose handlers the image carries (examples/).
    ours = load_subscriptions(BASE / "subscriptions.toml")
    examples = load_subscriptions(ROOT / "examples" / "subscriptions.toml")
    assert [(s.name, s.events, s.handler_path) for s in ours] == [
        (s.name, s.events, s.handler_path) for s in examples
    ]


def test_workers_scale_with_keda_on_the_queues_of_their_subscriptions(
    overlay: list[Manifest],
) -> None:
    scaled_object = one(overlay, "ScaledObject", "conveyor-worker")
    scaled = scaled_object["spec"]
    target = scaled["scaleTargetRef"]
    assert (target.get("kind", "Deployment"), target["name"]) == ("Deployment", "conveyor-worker")
    worker = deployments(overlay)["conveyor-worker"]
    assert "replicas" not in worker["spec"]  # KEDA's HPA owns the count
    conveyor_namespace = plain_env(conveyor_container(worker))["CONVEYOR_NAMESPACE"]
    topology = Topology(conveyor_namespace)
    expected = {topology.queue(s.name) for s in load_subscriptions(BASE / "subscriptions.toml")}
    rabbitmq = one(overlay, "RabbitmqCluster")["metadata"]["name"]
    authentications = {m["metadata"]["name"]: m for m in find(overlay, "TriggerAuthentication")}

    queues = set()
    for trigger in scaled["triggers"]:
        metadata = trigger["metadata"]
        assert trigger["type"] == "rabbitmq"
        assert (metadata["protocol"], metadata["mode"]) == ("amqp", "QueueLength")
        assert float(metadata["value"]) > 0
        # KEDA resolves the host from its own namespace: the Service's full name, no password.
        kubernetes_namespace = scaled_object["metadata"]["namespace"]
        assert metadata["host"] == f"amqp://{rabbitmq}.{kubernetes_namespace}.svc:5672/"
        authentication = authentications[trigger["authenticationRef"]["name"]]["spec"]
        references = {r["parameter"]: r for r in authentication["secretTargetRef"]}
        assert set(references) == {"username", "password"}
        for parameter, reference in references.items():
            assert (reference["name"], reference["key"]) == (f"{rabbitmq}-default-user", parameter)
        queues.add(metadata["queueName"])
    assert queues == expected


def test_the_rabbitmq_cluster_has_three_nodes_fit_for_quorum_queues(base: list[Manifest]) -> None:
    cluster = one(base, "RabbitmqCluster")
    spec: dict[str, Any] = cluster["spec"]
    assert cluster["apiVersion"] == "rabbitmq.com/v1beta1"
    assert spec["replicas"] == 3  # a majority survives one node
    assert spec["image"].startswith("rabbitmq:3.13")  # quorum at-least-once dead-lettering: 3.10+
    assert "cluster_partition_handling = pause_minority" in spec["rabbitmq"]["additionalConfig"]
    assert spec["persistence"]["storage"]
    assert spec["resources"]["limits"]["memory"] == spec["resources"]["requests"]["memory"]
    (rule,) = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert rule["topologyKey"] == "kubernetes.io/hostname"
    (expression,) = rule["labelSelector"]["matchExpressions"]
    # The operator labels its pods app.kubernetes.io/name=<cluster name>.
    assert (expression["key"], expression["values"]) == (
        "app.kubernetes.io/name",
        [cluster["metadata"]["name"]],
    )


def test_services_budgets_and_autoscalers_select_the_right_pods(base: list[Manifest]) -> None:
    labels = {
        name: deployment["spec"]["template"]["metadata"]["labels"]
        for name, deployment in deployments(base).items()
    }

    def selected(selector: Mapping[str, str]) -> list[str]:
        return [name for name, pod in labels.items() if selector.items() <= pod.items()]

    service = one(base, "Service", "conveyor-ingress")["spec"]
    assert selected(service["selector"]) == ["conveyor-ingress"]
    assert {port["targetPort"] for port in service["ports"]} == {"http"}
    budgets = {
        selected(pdb["spec"]["selector"]["matchLabels"])[0]
        for pdb in find(base, "PodDisruptionBudget")
    }
    assert budgets == {"conveyor-ingress", "conveyor-worker"}
    hpa = one(base, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "conveyor-ingress"
    assert "replicas" not in deployments(base)["conveyor-ingress"]["spec"]
    # deploy/prometheus/prometheus.yml keeps pods labelled name=conveyor with a port named http.
    scrape = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    assert "regex: conveyor" in scrape
    assert all(pod["app.kubernetes.io/name"] == "conveyor" for pod in labels.values())


def test_every_base_file_is_listed_in_the_kustomization() -> None:
    (kustomization,) = load_documents(BASE / "kustomization.yaml")
    listed = set(kustomization["resources"]) | {"kustomization.yaml", "subscriptions.toml"}
    assert {path.name for path in BASE.iterdir()} == listed
