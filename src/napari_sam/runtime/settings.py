"""Settings remembered between sessions, and the help text of settings dataclasses.

The napari widgets remember the last model, checkpoint file, device, encoder
precision and automatic-segmentation settings in one small JSON file
(:func:`napari_sam.runtime.config.settings_file`; ``$NAPARI_SAM_SETTINGS``
moves it, which tests use so they never touch the user's home folder)::

    {"version": 1, "model": {"choice": "vit_b", ...}, "automatic": {"points_per_side": 16, ...}}

Settings are a convenience, so reading never fails: a missing file gives no
settings; a broken, unreadable or old-format file is ignored and its problem
is returned as one sentence for the caller to show once; the next save
replaces it. Saving is atomic (:func:`napari_sam.runtime.files.atomic_write`)
and its failure is returned as a sentence too, never raised.

Settings dataclasses (``AutoSettings``, ``PropagationSettings``) carry their
help once, in their fields' metadata (``field(metadata={"help": ..., "label":
..., "min": ..., "max": ...})``); :func:`field_help` and :func:`field_meta`
read it for the command-line help and the widgets' tooltips.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from napari_sam.errors import NapariSamError, OutputFileError
from napari_sam.runtime import config
from napari_sam.runtime.files import atomic_write

__all__ = [
    "VERSION",
    "field_help",
    "field_meta",
    "read_section",
    "read_settings",
    "restore",
    "save_section",
]

#: The format of the settings file this version writes and reads.
VERSION = 1

T = TypeVar("T")


def _path(path: str | os.PathLike[str] | None) -> Path:
    return Path(path).expanduser() if path is not None else config.settings_file()


def read_settings(
    path: str | os.PathLike[str] | None = None,
) -> tuple[dict[str, dict[str, Any]], str | None]:
    """All remembered sections, and a sentence if the file had to be ignored.

    Returns
    -------
    sections : dict of str -> dict
        E.g. ``{"model": {...}, "automatic": {...}}``; empty when there is no
        usable file.
    problem : str or None
        Why an existing file was ignored (broken JSON, unreadable, another
        format version), naming the file.
    """
    file = _path(path)
    if not file.exists():
        return {}, None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {}, (
            f"The napari-sam settings file {file} could not be read ({_reason(exc)}); "
            "the defaults are used and the file is replaced when a setting changes."
        )
    if not isinstance(data, dict) or data.get("version") != VERSION:
        found = data.get("version") if isinstance(data, dict) else None
        return {}, (
            f"The napari-sam settings file {file} has another format (version {found!r}, "
            f"expected {VERSION}); the defaults are used and the file is replaced when a "
            "setting changes."
        )
    sections = {k: v for k, v in data.items() if k != "version" and isinstance(v, dict)}
    return sections, None


def read_section(
    name: str, path: str | os.PathLike[str] | None = None
) -> tuple[dict[str, Any], str | None]:
    """One remembered section (``{}`` if none), and the file's problem if it was ignored."""
    sections, problem = read_settings(path)
    return dict(sections.get(name, {})), problem


def save_section(
    name: str, values: Mapping[str, Any], path: str | os.PathLike[str] | None = None
) -> str | None:
    """Remember ``values`` as section ``name`` (other sections are kept).

    Returns None, or one sentence saying why the file could not be written.
    """
    file = _path(path)
    sections, _ = read_settings(file)
    sections[name] = {str(k): v for k, v in values.items()}
    try:
        text = json.dumps({"version": VERSION, **sections}, indent=2, sort_keys=True)
    except (TypeError, ValueError) as exc:
        return f"The napari-sam settings could not be saved ({exc})."
    try:
        with atomic_write(file, error=OutputFileError, what=f"The settings file {file}") as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
    except NapariSamError as exc:
        return str(exc)
    return None


def restore(
    cls: type[T], values: Mapping[str, Any], default: T | None = None
) -> tuple[T, str | None]:
    """A settings dataclass from remembered values, or the defaults and a sentence.

    Unknown names are ignored (settings of another version), missing ones come
    from ``default`` (default: ``cls()``); a value that does not fit (the
    constructor, or the instance's ``check()`` if it has one, raises) makes the
    whole section fall back to ``default``.
    """
    base = default if default is not None else cls()
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kept = {k: v for k, v in values.items() if k in names}
    try:
        instance = dataclasses.replace(base, **kept)  # type: ignore[type-var]
        check = getattr(instance, "check", None)
        if callable(check):
            check()
    except (TypeError, ValueError, NapariSamError) as exc:
        return base, (
            f"The remembered {cls.__name__} could not be used ({exc}); the defaults are used."
        )
    return instance, None


def field_meta(cls: type, name: str) -> dict[str, Any]:
    """The metadata of field ``name`` of a dataclass (``help``, ``label``, ``min``, ``max``...)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return dict(f.metadata)
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def field_help(cls: type, name: str, *, default: bool = False) -> str:
    """The help sentence of field ``name``; with ``default``, ``" (default: X)"`` appended."""
    text = str(field_meta(cls, name).get("help", "")).strip()
    if default:
        value = next(f.default for f in dataclasses.fields(cls) if f.name == name)
        text = f"{text.rstrip('.')} (default: {value})"
    return text


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return str(exc.strerror or exc)
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON at line {exc.lineno}"
    return str(exc)
