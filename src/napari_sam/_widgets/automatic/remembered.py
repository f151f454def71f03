"""The automatic dock's three groups of settings, remembered between sessions.

:class:`RememberedSettings` holds the point-grid settings
(:class:`~napari_sam.workflows.segment.AutoSettings`, section ``"automatic"``),
the AIS post-processing (:class:`~napari_sam.workflows.ais.AISSettings`,
``"automatic_ais"``) and the run choices (mode and tiling,
:class:`~napari_sam._widgets.automatic.modes.RunChoices`, ``"automatic_run"``).
It reads them from the user's settings file (:mod:`napari_sam.runtime.settings`)
once, replaces a group only with a checked, changed value, and saves each change;
it says nothing itself: problems come back as sentences for the dock to show.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

from napari_sam._widgets.automatic.modes import RunChoices
from napari_sam.runtime import settings as user_settings
from napari_sam.workflows.ais import AISSettings
from napari_sam.workflows.segment import AutoSettings

__all__ = ["DOCK_DEFAULTS", "RememberedSettings"]

#: The dock's settings before any are remembered: a stack's objects keep one label through z.
DOCK_DEFAULTS = AutoSettings(link_slices=True)

#: attribute -> (settings-file section, class, default)
_GROUPS: dict[str, tuple[str, type, Any]] = {
    "settings": ("automatic", AutoSettings, DOCK_DEFAULTS),
    "ais_settings": ("automatic_ais", AISSettings, AISSettings()),
    "choices": ("automatic_run", RunChoices, RunChoices()),
}


def _values(group: Any) -> dict[str, Any]:
    as_dict = getattr(group, "as_dict", None)
    return as_dict() if as_dict is not None else asdict(group)


class RememberedSettings:
    """The automatic dock's settings (``settings``, ``ais_settings``, ``choices``).

    With ``remember`` False nothing is read or written (tests, scripted docks).
    """

    def __init__(self, remember: bool = True) -> None:
        self.remember = remember
        self.settings: AutoSettings = DOCK_DEFAULTS
        self.ais_settings: AISSettings = AISSettings()
        self.choices: RunChoices = RunChoices()

    def restore(self) -> list[str]:
        """Read the three groups from the settings file; returns the problems found
        (an unreadable file once, then one sentence per group with bad values)."""
        if not self.remember:
            return []
        problems: list[str] = []
        for i, (attr, (section, cls, default)) in enumerate(_GROUPS.items()):
            values, problem = user_settings.read_section(section)
            if i == 0 and problem:  # the file's own problem, said once
                problems.append(problem)
            restored, bad = user_settings.restore(cls, values, default)
            setattr(self, attr, restored)
            if values and bad:
                problems.append(bad)
        return problems

    def update(
        self, attr: str, value: Any | None, changes: dict[str, Any]
    ) -> tuple[bool, str | None]:
        """Replace group ``attr`` with ``value`` (default: the current one) plus ``changes``.

        The new value is checked first where the group can check itself
        (:class:`RunChoices` raises :class:`~napari_sam.errors.SettingsError`, and
        nothing changes). Returns ``(changed, problem saving it or None)``.
        """
        section = _GROUPS[attr][0]
        new = replace(value or getattr(self, attr), **changes)
        if attr == "choices":
            new.check()
        if new == getattr(self, attr):
            return False, None
        setattr(self, attr, new)
        problem = user_settings.save_section(section, _values(new)) if self.remember else None
        return True, problem or None
