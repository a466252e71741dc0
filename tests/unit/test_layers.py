"""Nothing in a lower layer imports a higher one: the folder tree is the architecture.

Between the packages, data flows one way: `producers` imports neither `consumers` nor `service`,
and `consumers` does not import `service`.

Inside `service`, from the bottom up (a module may import its own layer and the ones below):

0. configuration: `clock`, `cancellation`, `settings`, `settings_reader`, `store_url`,
   `subscription_config`;
1. `store` and `observability`;
2. `broker` and `archive` (the event archive's stream, reads and replays);
3. `http`, `admin`, `schedules`, and `app_keys` (the aiohttp application keys that all look
   their parts up by);
4. the process assembly: `app`, `supervisor`, `reloader`;
5. `cli`;
6. the package's own `__init__` and `__main__`.

One exception, listed below: the settings parse some values with the pure helpers of the
concern that owns them (addresses, request bounds). Such a helper must import nothing from
`service` at all, so the exception cannot hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SERVICE_LAYERS: dict[str, int] = {
    "service.clock": 0,
    "service.cancellation": 0,
    "service.settings": 0,
    "service.settings_reader": 0,
    "service.store_url": 0,
    "service.subscription_config": 0,
    "service.store": 1,
    "service.observability": 1,
    "service.broker": 2,
    "service.archive": 2,
    "service.http": 3,
    "service.admin": 3,
    "service.schedules": 3,
    "service.app_keys": 3,
    "service.app": 4,
    "service.supervisor": 4,
    "service.reloader": 4,
    "service.cli": 5,
    "service": 6,
    "service.__main__": 6,
}

PURE_HELPERS_FOR_SETTINGS: dict[str, frozenset[str]] = {
    "service.settings": frozenset({"service.http.admission", "service.broker.addresses"}),
    "service.settings_reader": frozenset({"service.broker.addresses"}),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(package: str) -> dict[str, Path]:
    return {_module_name(path): path for path in sorted((ROOT / package).rglob("*.py"))}


def _imports(path: Path) -> set[str]:
    """Every absolute module named by an import statement, wherever it sits in the module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            named = [f"{node.module}.{alias.name}" for alias in node.names]
            names.update(named)
            # `from service import settings_reader` names the submodule, not the package.
            if not all(_is_package_or_module(name) for name in named):
                names.add(node.module)
    return names


def _layer(module: str) -> int | None:
    """The layer of the longest registered prefix of `module`, or None outside `service`."""
    if module == "service":
        return SERVICE_LAYERS[module]
    parts = module.split(".")
    for end in range(len(parts), 1, -1):
        layer = SERVICE_LAYERS.get(".".join(parts[:end]))
        if layer is not None:
            return layer
    return None


def _is_package_or_module(name: str) -> bool:
    relative = Path(*name.split("."))
    return (ROOT / relative).with_suffix(".py").is_file() or (
        ROOT / relative / "__init__.py"
    ).is_file()


def _service_imports(path: Path) -> set[str]:
    return {
        name
        for name in _imports(path)
        if (name == "service" or name.startswith("service.")) and _is_package_or_module(name)
    }


def test_producers_import_neither_consumers_nor_service() -> None:
    offenders = {
        module: sorted(
            name for name in _imports(path) if name.split(".")[0] in {"consumers", "service"}
        )
        for module, path in _modules("producers").items()
    }
    assert {module: names for module, names in offenders.items() if names} == {}


def test_consumers_do_not_import_service() -> None:
    offenders = {
        module: sorted(name for name in _imports(path) if name.split(".")[0] == "service")
        for module, path in _modules("consumers").items()
    }
    assert {module: names for module, names in offenders.items() if names} == {}


def test_every_service_module_has_a_layer() -> None:
    assert [module for module in _modules("service") if _layer(module) is None] == []


def test_no_service_module_imports_a_higher_layer() -> None:
    upward: dict[str, list[str]] = {}
    for module, path in _modules("service").items():
        own = _layer(module)
        assert own is not None
        allowed = PURE_HELPERS_FOR_SETTINGS.get(module, frozenset())
        names = sorted(
            name
            for name in _service_imports(path)
            if (_layer(name) or 0) > own and name not in allowed
        )
        if names:
            upward[module] = names
    assert upward == {}


def test_the_helpers_settings_may_reach_up_to_import_nothing_from_service() -> None:
    modules = _modules("service")
    helpers = sorted(set().union(*PURE_HELPERS_FOR_SETTINGS.values()))
    assert {helper: sorted(_service_imports(modules[helper])) for helper in helpers} == {
        helper: [] for helper in helpers
    }
