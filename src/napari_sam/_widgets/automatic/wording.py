"""What the automatic dock says and decides before and after a run, as plain functions.

- :func:`planned_mode`: AIS or the point grid, from the chosen mode and the model
  (loaded, or only requested);
- :func:`mode_text`: one sentence on what the next run does with which model;
- :func:`refusal_before_loading`: the one-sentence refusal a run would end with,
  raised before a model is loaded or downloaded for nothing;
- :func:`run_text` and :func:`result_text`: the status line while a run works and
  after it wrote its labels.

Nothing here touches napari: the controller passes what it knows.
"""

from __future__ import annotations

import numpy as np

from napari_sam._widgets.automatic.modes import MODE_NAMES, RunChoices
from napari_sam._widgets.model_session import ModelRequest, has_decoder
from napari_sam.errors import SettingsError
from napari_sam.runtime.loader import LoadedModel, is_sam2
from napari_sam.workflows.ais import no_decoder_error
from napari_sam.workflows.image import ImageLayout
from napari_sam.workflows.segment import SAM2_REFUSAL, SegmentationResult

__all__ = ["mode_text", "planned_mode", "refusal_before_loading", "result_text", "run_text"]


def planned_mode(choices: RunChoices, model: LoadedModel | None, request: ModelRequest) -> str:
    """``"ais"`` or ``"amg"``: what the next run will do, as far as is known now.

    With mode "auto", the loaded model decides (AIS if it has a decoder); before it
    is loaded, the chosen published model does (a custom file: the point grid, until
    it is loaded and found to hold a decoder).
    """
    mode = choices.workflow_mode
    if mode != "auto":
        return mode
    if model is not None:
        return "ais" if model.has_decoder else "amg"
    return "ais" if has_decoder(request.choice) else "amg"


def mode_text(choices: RunChoices, model: LoadedModel | None, request: ModelRequest) -> str:
    """One sentence on what the next run does with which model (for the dock)."""
    name = model.name if model is not None else (
        "the checkpoint" if request.custom else request.choice)
    if model is None and request.choice == "auto":
        name = "SAM (auto: vit_t on a CPU, vit_b on a GPU)"
    if model is None and not request.custom and is_sam2(request.choice):
        return SAM2_REFUSAL
    if planned_mode(choices, model, request) == "amg":
        return f"The next run prompts {name} with a grid of points."
    if (not model.has_decoder if model is not None
            else not request.custom and not has_decoder(request.choice)):
        return (f"{name} has no AIS decoder: choose a micro-sam model (e.g. vit_b_lm) "
                "or the point grid.")
    if model is None and request.custom:
        return "The next run uses the checkpoint's instance decoder (AIS), if it has one."
    return f"The next run uses the instance decoder (AIS) of {name}."


def refusal_before_loading(
    choices: RunChoices, model: LoadedModel | None, request: ModelRequest
) -> None:
    """Raise the refusal a run would end with while no model is loaded yet: a SAM 2.1
    model (:class:`SettingsError`), or AIS with a published model that has no decoder.
    With a loaded model (or a custom file, unknown until loaded) the run itself decides."""
    if model is not None or request.custom:
        return
    if is_sam2(request.choice):
        raise SettingsError(SAM2_REFUSAL)
    if choices.workflow_mode == "ais" and not has_decoder(request.choice):
        raise no_decoder_error(request.choice)


def ready_text(kind: str, name: str, channels: str = "") -> str:
    """The status line before a run on the ``kind`` ("stack", ...) ``name``; ``channels``:
    what SAM sees of the channel layers, if chosen."""
    return f"Ready to segment the {kind} “{name}”{f' ({channels})' if channels else ''}."


def lines_text(leading: tuple[int, ...]) -> str:
    """The planes of a whole nD image by its leading shape, e.g. "3 time points of 16
    slices" for ``(3, 16)``."""
    if len(leading) == 2:
        t, z = leading
        return f"{t} time point{'s' if t != 1 else ''} of {z} slice{'s' if z != 1 else ''}"
    return f"{int(np.prod(leading))} planes"


def run_text(name: str, layout: ImageLayout, k: int | None, ais: bool, tiles: int,
             at: str = "", whole: tuple[int, ...] | None = None) -> str:
    """The status line of a run on image ``name``: slice ``k`` (None: the whole image or
    stack), with AIS or not, and ``tiles`` tiles per plane (1: not tiled); ``at``: where
    the stack lies in an nD image (e.g. "t=1"); ``whole``: the leading shape of an nD
    image segmented whole."""
    where = f"slice {k} of “{name}”" if k is not None else f"“{name}”"
    if layout.is_stack and k is None:
        where = f"all {layout.n_slices} slices of “{name}”"
    if whole is not None:
        where = f"“{name}”, {lines_text(whole)}"
    if at:
        where += f" at {at}"
    notes = ["instance decoder (AIS)"] if ais else []
    notes += [f"{tiles} tiles per plane"] if tiles > 1 else []
    how = f" ({', '.join(notes)})" if notes else ""
    return f"Segmenting {where}{how}…"


def result_text(result: SegmentationResult, layer_name: str, layout: ImageLayout,
                k: int | None, linked: bool, tiles: int, at: str = "",
                whole: tuple[int, ...] | None = None) -> str:
    """The status line after a run wrote ``result`` into the layer ``layer_name`` (``at``,
    ``whole``: as for :func:`run_text`)."""
    n = result.n_objects
    where = f"slice {k}" if k is not None else "the image"
    if layout.is_stack and k is None:
        where = f"{layout.n_slices} slices" + (", linked" if linked else "")
    if whole is not None:
        where = lines_text(whole) + (", linked through the slices" if linked else "")
    if at:
        where += f" at {at}"
    found = (f"{result.n_masks} masks proposed" if result.mode == "amg"
             else f"{result.n_masks} seeds before the size filter")
    tiled = f", {tiles} tiles per plane" if tiles > 1 else ""
    return (f"{MODE_NAMES.get(result.mode, result.mode)}: {n} object{'s' if n != 1 else ''} "
            f"in {where} → “{layer_name}” ({found}{tiled}).")
