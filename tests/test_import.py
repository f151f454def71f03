"""The package's shape: cheap import, public names, layers whose arrows point down, no cycles.

The import graph is built from the source (every ``import``/``from`` statement,
at module level or inside functions), so a function-level import cannot hide
an upward arrow or a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import napari_sam

ROOT = Path(napari_sam.__file__).parent

#: Layers from the bottom up. A module may import modules of lower layers and of
#: its own package; never a higher layer, never a sibling package of the same rank.
LAYERS: dict[str, int] = {
    "errors": 0,
    "model": 1,
    "runtime": 2,
    "predictors": 3,
    "workflows": 4,
    "distributed": 5,
    "_widgets": 6,
    # the command line sits on top: `napari-sam gui` opens the napari plugin (_widgets.launch)
    "cli": 7,
}
GUI = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt", "vispy")
QT = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append(mod)
            # ``from napari_sam.runtime import config`` imports the module napari_sam.runtime.config
            out += [f"{mod}.{alias.name}" for alias in node.names]
    return out


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def _layer(module: str) -> tuple[str, int] | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # napari_sam/__init__.py: lazy names only
    top = parts[1]
    return top, LAYERS[top]


def test_every_module_belongs_to_a_layer():
    unknown = sorted(
        name for name in _graph() if "." in name and name.split(".")[1] not in LAYERS
    )
    assert unknown == [], f"put these in a layer of LAYERS: {unknown}"


def test_arrows_point_down():
    upward = []
    for source, targets in _graph().items():
        src = _layer(source)
        if src is None:
            continue
        for target in targets:
            dst = _layer(target)
            if dst is None:
                upward.append((source, target))
            elif dst[0] != src[0] and dst[1] >= src[1]:
                upward.append((source, target))
    assert upward == [], "imports that point up or sideways: " + ", ".join(
        f"{a} -> {b}" for a, b in sorted(upward)
    )


def test_no_import_cycles():
    graph = _graph()
    # the package __init__ modules are part of their children's import path, not an arrow
    graph = {k: {t for t in v if not k.startswith(t + ".")} for k, v in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_napari_and_qt_only_in_the_widget_package():
    offenders = []
    for path in ROOT.rglob("*.py"):
        name = _module_name(path)
        in_widgets = ".".join(name.split(".")[:2]) == "napari_sam._widgets"
        for mod in _imports(path):
            top = mod.split(".")[0]
            if top in GUI and not in_widgets:
                offenders.append((name, mod))
    assert offenders == []


def test_qt_only_in_the_qt_part_of_the_widget_package():
    """Controllers work on napari's models; only ``_widgets/_qt`` builds Qt widgets."""
    qt_dir = ROOT / "_widgets" / "_qt"
    if not qt_dir.is_dir():
        pytest.skip("the Qt part of the widget package is not split out yet")
    offenders = []
    for path in (ROOT / "_widgets").rglob("*.py"):
        if qt_dir in path.parents:
            continue
        for mod in _imports(path):
            if mod.split(".")[0] in QT or mod.startswith("napari.qt"):
                offenders.append((_module_name(path), mod))
    assert offenders == []


def test_import_is_cheap():
    code = (
        "import sys, napari_sam; "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'napari', 'qtpy', 'magicgui', 'numpy', 'tifffile')); "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_names_import_no_more_torch_than_they_need():
    """``SamPredictor`` needs torch itself, not torch's compiler stack or the GUI."""
    code = (
        "import sys; from napari_sam import SamPredictor, sam_model_registry; "
        "heavy = sorted({m.split('.')[0] + ('.' + m.split('.')[1] if m.count('.') else '') "
        "for m in sys.modules if m.split('.')[0] in ('triton', 'napari', 'qtpy', 'torchvision') "
        "or m.startswith(('torch._dynamo', 'torch._inductor'))}); print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_names():
    for name in (
        "sam_model_registry",
        "SamPredictor",
        "SamAutomaticMaskGenerator",
        "ResizeLongestSide",
        "build_sam",
        "build_sam_vit_h",
        "build_sam_vit_l",
        "build_sam_vit_b",
        "load_model",
    ):
        assert hasattr(napari_sam, name), name
    assert callable(napari_sam.sam_model_registry["vit_b"])
    # as in segment_anything: build_sam is the ViT-H builder
    assert napari_sam.build_sam is napari_sam.build_sam_vit_h
    assert napari_sam.sam_model_registry["default"] is napari_sam.build_sam_vit_h
