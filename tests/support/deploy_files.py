"""Reading deploy/ in tests: a kustomize subset, the settings the files may name, and the
shutdown budget their grace periods must cover.

The kustomize subset renders deploy/k8s without the kustomize binary. It understands exactly
the fields deploy/k8s uses and fails on any other, so a new field in a kustomization cannot be
silently ignored: `resources` (files and directories), `namespace`,
`images` (newName/newTag), `configMapGenerator` (files) and `patches` (a strategic-merge file,
or an inline JSON 6902 list with a `target`).

Where it differs from kustomize, on purpose: generated ConfigMaps keep their plain name (kustomize
appends a content hash and rewrites the references to it, so checking references by the plain
name checks the same thing); strategic merge knows only the rule deploy/k8s relies on (lists of
objects with a `name` merge by name, a new entry goes first as kustomize puts it; other lists are
replaced); JSON 6902 knows add, replace and remove.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import yaml  # type: ignore[import-untyped]  # no stubs installed; documents are checked as plain data

from service.settings import DECLARED_SETTINGS, parse_duration

Manifest = dict[str, Any]

SUPPORTED_FIELDS = frozenset(
    ("apiVersion", "kind", "resources", "namespace", "images", "configMapGenerator", "patches")
)
CLUSTER_SCOPED = frozenset(("Namespace",))


def setting_defaults() -> dict[str, str]:
    """Every CONVEYOR_* variable conveyor reads, with its default."""
    return {declared.variable: declared.default for declared in DECLARED_SETTINGS}


def worst_case_shutdown(env: Mapping[str, str]) -> float:
    """Seconds from SIGTERM to exit at worst (README, "Operating it"): the drain delay, then the
    listener's and the handlers' shutdown timeouts one after the other, plus 5 s."""
    values = setting_defaults() | dict(env)
    drain = parse_duration(values["CONVEYOR_DRAIN_DELAY"])
    return drain + 2 * parse_duration(values["CONVEYOR_SHUTDOWN_TIMEOUT"]) + 5


def load_documents(path: Path) -> list[Manifest]:
    """Every non-empty YAML document of a file."""
    documents = yaml.safe_load_all(path.read_text(encoding="utf-8"))
    return [cast("Manifest", document) for document in documents if document]


def render(directory: Path) -> list[Manifest]:
    """The objects `kubectl kustomize <directory>` would print, in the subset above."""
    (kustomization,) = load_documents(directory / "kustomization.yaml")
    unknown = set(kustomization) - SUPPORTED_FIELDS
    if unknown:
        raise ValueError(f"{directory}: the test renderer does not know {sorted(unknown)}")
    objects: list[Manifest] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        objects += render(path) if path.is_dir() else load_documents(path)
    for generator in kustomization.get("configMapGenerator", []):
        objects.append(_config_map(directory, generator))
    for patch in kustomization.get("patches", []):
        _apply_patch(objects, directory, patch)
    for image in kustomization.get("images", []):
        _set_image(objects, image)
    if "namespace" in kustomization:
        for manifest in objects:
            if manifest["kind"] not in CLUSTER_SCOPED:
                manifest["metadata"]["namespace"] = kustomization["namespace"]
    return objects


def find(objects: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        manifest
        for manifest in objects
        if manifest["kind"] == kind and name in (None, manifest["metadata"]["name"])
    ]


def one(objects: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    (found,) = find(objects, kind, name)
    return found


def _config_map(directory: Path, generator: Manifest) -> Manifest:
    data = {
        Path(entry).name: (directory / entry).read_text(encoding="utf-8")
        for entry in generator["files"]
    }
    metadata = {"name": generator["name"]}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


def _apply_patch(objects: list[Manifest], directory: Path, patch: Manifest) -> None:
    if "path" in patch:
        (document,) = load_documents(directory / patch["path"])
        target = one(objects, document["kind"], document["metadata"]["name"])
        strategic_merge(target, document)
        return
    operations = yaml.safe_load(patch["patch"])
    selector = patch["target"]
    target = one(objects, selector["kind"], selector["name"])
    if not target["apiVersion"].startswith(selector.get("group", "")):
        raise ValueError(f"patch target {selector} does not match {target['apiVersion']}")
    json_patch(target, operations)


def strategic_merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        for key, value in patch.items():
            base[key] = strategic_merge(base[key], value) if key in base else copy.deepcopy(value)
        return base
    if _named_items(base) and _named_items(patch):
        by_name = {item["name"]: item for item in base}
        added = []
        for item in patch:
            if item["name"] in by_name:
                strategic_merge(by_name[item["name"]], item)
            else:
                added.append(copy.deepcopy(item))
        return added + base
    return copy.deepcopy(patch)


def _named_items(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(item, dict) and "name" in item for item in value
    )


def json_patch(document: Manifest, operations: list[Manifest]) -> None:
    for operation in operations:
        keys = [
            part.replace("~1", "/").replace("~0", "~")
            for part in operation["path"].lstrip("/").split("/")
        ]
        parent: Any = document
        for key in keys[:-1]:
            parent = parent[int(key)] if isinstance(parent, list) else parent[key]
        last = keys[-1]
        kind = operation["op"]
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if kind == "add":
                parent.insert(index, operation["value"])
            elif kind == "replace":
                parent[index] = operation["value"]
            elif kind == "remove":
                del parent[index]
            else:
                raise ValueError(f"unsupported JSON patch op {kind!r}")
        elif kind in ("add", "replace"):
            if kind == "replace" and last not in parent:
                raise ValueError(f"replace of a missing {operation['path']}")
            parent[last] = operation["value"]
        elif kind == "remove":
            del parent[last]
        else:
            raise ValueError(f"unsupported JSON patch op {kind!r}")


def pod_containers(manifest: Manifest) -> list[Manifest]:
    pod = manifest["spec"]["template"]["spec"]
    return cast("list[Manifest]", pod.get("initContainers", []) + pod["containers"])


def _set_image(objects: list[Manifest], image: Manifest) -> None:
    for manifest in objects:
        if manifest["kind"] not in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            continue
        for container in pod_containers(manifest):
            name = container["image"].split("@")[0].rsplit(":", 1)[0]
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
