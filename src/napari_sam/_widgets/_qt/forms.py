"""magicgui controls made from the controllers' models: layer pickers and settings forms.

- :class:`LayerPicker`: a magicgui ``ComboBox`` of napari layers of one type that
  shows a :class:`~napari_sam._widgets.layers.LayerChoice` (the controller decides
  which layers are candidates and which is chosen; the picker follows the layer
  list when the controller says it changed);
- :func:`settings_form`: a magicgui ``Container`` with one control per field of
  a settings dataclass, labelled and explained (tooltip) by the field's metadata
  (the help written once in the dataclass, see :mod:`napari_sam.runtime.settings`).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Sequence
from typing import Any

from magicgui.widgets import Container, create_widget
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QWidget

from napari_sam._widgets.layers import LayerChoice
from napari_sam.runtime.settings import field_help, field_meta

__all__ = ["LayerPicker", "compact", "labelled", "row", "settings_form", "sync_form"]


def compact(widget: Any) -> Any:
    """Let a magicgui combo box shrink to the dock's width (long names are elided)."""
    native = getattr(widget, "native", widget)
    combo = native if isinstance(native, QComboBox) else native.findChild(QComboBox)
    if combo is not None:
        combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        combo.setMinimumContentsLength(8)
    return widget


def row(*widgets: QWidget, stretch: int | None = None) -> QWidget:
    """Widgets side by side (``stretch``: the index of the one that takes the spare room)."""
    box = QWidget()
    layout = QHBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    for i, widget in enumerate(widgets):
        layout.addWidget(widget, 1 if i == stretch else 0)
    return box


def labelled(picker: LayerPicker) -> QWidget:
    """A picker with its label on the left."""
    label = QLabel(picker.widget.label)
    label.setMinimumWidth(60)
    return row(label, picker.widget.native, stretch=1)


class LayerPicker:
    """A layer picker (magicgui ComboBox) showing a :class:`LayerChoice`.

    ``on_pick(layer)`` is called when the user picks a layer (None: the
    "new layer" entry); :meth:`sync` shows the choice again after the
    controller changed it or the layer list changed.
    """

    def __init__(self, label: str, choice: LayerChoice, layer_type: type,
                 on_pick: Callable[[Any], Any], tooltip: str = "") -> None:
        self.choice = choice
        self._on_pick = on_pick
        self._syncing = False
        self.widget = create_widget(
            annotation=layer_type,
            label=label,
            widget_type="ComboBox",
            options={"choices": lambda widget: self.choice.choices(), "tooltip": tooltip},
        )
        compact(self.widget)
        self.widget.changed.connect(self._picked)
        self.sync()

    @property
    def value(self) -> Any:
        return self.widget.value

    def sync(self) -> None:
        self._syncing = True
        try:
            self.widget.reset_choices()
            if self.widget.value is not self.choice.current:
                self.widget.value = self.choice.current
        finally:
            self._syncing = False

    def pick(self, layer: Any) -> None:
        """Pick ``layer`` as the user would."""
        self.widget.value = layer

    def _picked(self, layer: Any) -> None:
        if not self._syncing:
            self._on_pick(layer)


def _options(cls: type, name: str, hint: Any) -> dict[str, Any]:
    meta = field_meta(cls, name)
    options: dict[str, Any] = {"tooltip": field_help(cls, name)}
    if hint in (int, float):
        options["min"] = meta.get("min", 0)
        options["max"] = meta.get("max", 10**9)
    if hint is float:
        options["step"] = 0.01
    return options


def settings_form(
    cls: type,
    values: Any,
    names: Sequence[str],
    on_change: Callable[[dict[str, Any]], Any],
) -> Container:
    """One labelled control per field ``names`` of dataclass ``cls``, showing ``values``.

    ``on_change(changes)`` gets ``{field: value}`` when the user edits one.
    """
    hints = typing.get_type_hints(cls)
    widgets = []
    for name in names:
        hint = hints[name]
        meta = field_meta(cls, name)
        widget = create_widget(
            value=getattr(values, name),
            annotation=hint,
            name=name,
            label=meta.get("label", name.replace("_", " ")),
            options=_options(cls, name, hint),
        )
        widget.changed.connect(lambda value, name=name: on_change({name: value}))
        widgets.append(widget)
    return Container(widgets=widgets, labels=True)


def sync_form(form: Container, values: Any) -> None:
    """Show ``values`` (a settings dataclass) in a form made by :func:`settings_form`."""
    names = {f.name for f in dataclasses.fields(values)}
    for widget in form:
        if widget.name in names and widget.value != getattr(values, widget.name):
            with widget.changed.blocked():
                widget.value = getattr(values, widget.name)
