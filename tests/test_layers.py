"""The package's layering, read from the ``import`` statements themselves (``ast``).

Each module may import modules of its own layer or of layers below it, never one above, and the
module graph has no cycle (not even through ``if TYPE_CHECKING:`` imports). The order is written
once, here; a new module must be placed in it.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import smartproxy

# Lowest first. A module belongs to the first entry that names it or one of its packages.
LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "smartproxy",
        "smartproxy.errors",
        "smartproxy.fastjson",
        "smartproxy.localtime",
        "smartproxy.gcpolicy",
        "smartproxy.files",
        "smartproxy.deadlines",
        "smartproxy.lean",
    ),
    ("smartproxy.config",),
    (
        "smartproxy.routing",
        "smartproxy.security",
        "smartproxy.storage",
        "smartproxy.providers",
        "smartproxy.metrics",
        "smartproxy.metrics_merge",
        "smartproxy.audit",
        "smartproxy.logs",
        "smartproxy.upstream.errors",
        "smartproxy.upstream.retry",
        "smartproxy.upstream.breaker",
        "smartproxy.upstream.health",
        "smartproxy.upstream.failures",
        "smartproxy.upstream.sse",
        "smartproxy.upstream.slots",
    ),
    ("smartproxy.state",),
    ("smartproxy.upstream",),
    ("smartproxy.api",),
    ("smartproxy.app", "smartproxy.server", "smartproxy.serving"),
    ("smartproxy.cli", "smartproxy.supervisor", "smartproxy.__main__"),
)

ROOT = Path(smartproxy.__file__).resolve().parent


def _modules() -> dict[str, tuple[Path, bool]]:
    out: dict[str, tuple[Path, bool]] = {"smartproxy": (ROOT / "__init__.py", True)}
    for info in pkgutil.walk_packages([str(ROOT)], prefix="smartproxy."):
        spec = importlib.util.find_spec(info.name)
        assert spec is not None and spec.origin is not None
        out[info.name] = (Path(spec.origin), info.ispkg)
    return out


MODULES = _modules()


def layer_of(module: str) -> int:
    best: tuple[int, int] | None = None  # (length of the matching prefix, layer)
    for index, names in enumerate(LAYERS):
        for name in names:
            if module == name or module.startswith(name + "."):
                if name == "smartproxy" and module != "smartproxy":
                    continue  # the package itself is base; its sub-modules are placed by name
                if best is None or len(name) > best[0]:
                    best = (len(name), index)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return best[1]


def imports_of(module: str) -> set[str]:
    """The smartproxy modules ``module`` imports (anywhere in the file, TYPE_CHECKING included)."""
    path, is_pkg = MODULES[module]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [
                f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target
                for a in node.names
            ]
        out.update(t for t in targets if t in MODULES and t != module)
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_is_importable_and_placed() -> None:
    for module in MODULES:
        if module != "smartproxy.__main__":  # importing it runs the CLI
            importlib.import_module(module)
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_downwards(module: str) -> None:
    own = layer_of(module)
    upward = sorted(dep for dep in GRAPH[module] if layer_of(dep) > own)
    assert not upward, (
        f"{module} (layer {own}) imports from layers above it: "
        + ", ".join(f"{d} (layer {layer_of(d)})" for d in upward)
    )


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(GRAPH[node]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_the_checker_sees_a_violation() -> None:
    """The test can fail: a module of a low layer importing the API layer is caught."""
    assert layer_of("smartproxy.api.proxy") > layer_of("smartproxy.config.model")
    assert "smartproxy.state" in GRAPH["smartproxy.api.proxy"]
