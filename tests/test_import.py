"""`import napari_sam` stays cheap and the public API matches segment_anything."""

from __future__ import annotations

import subprocess
import sys

import napari_sam


def test_import_is_cheap():
    code = (
        "import sys, napari_sam; "
        "heavy = [m for m in ('torch', 'napari', 'qtpy', 'magicgui') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_names():
    for name in ("sam_model_registry", "SamPredictor", "ResizeLongestSide"):
        assert hasattr(napari_sam, name)
    assert callable(napari_sam.sam_model_registry["vit_b"])


def test_core_never_imports_napari():
    """Core modules (everything outside _widgets/) must not import napari or Qt."""
    import pathlib
    import re

    root = pathlib.Path(napari_sam.__file__).parent
    pattern = re.compile(
        r"^\s*(import|from)\s+(napari|qtpy|PyQt5|PyQt6|PySide2|PySide6|magicgui)\b", re.M
    )
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if "_widgets" not in p.parts and pattern.search(p.read_text())
    ]
    assert offenders == []
