"""records_to_labels: mask records -> uint32 instance label image."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.errors import NapariSamError
from napari_sam.predictors.amg_utils import mask_to_coco_rle, mask_to_rle
from napari_sam.workflows.labels import MaskRecordError, decode_segmentation, records_to_labels


def _disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


SHAPE = (40, 50)
BIG = _disk(SHAPE, 20, 25, 15)
SMALL = _disk(SHAPE, 20, 25, 4)  # inside BIG
OTHER = _disk(SHAPE, 5, 45, 3)


def _records(*masks, mode="binary_mask"):
    out = []
    for m in masks:
        if mode == "binary_mask":
            seg = m
        elif mode == "uncompressed_rle":
            seg = mask_to_rle(m)[0]
        else:
            seg = mask_to_coco_rle(m)
        out.append({"segmentation": seg, "area": int(m.sum())})
    return out


@pytest.mark.parametrize("mode", ["binary_mask", "uncompressed_rle", "coco_rle"])
def test_small_objects_stay_visible(mode):
    labels = records_to_labels(_records(SMALL, BIG, OTHER, mode=mode))
    assert labels.dtype == np.uint32 and labels.shape == SHAPE
    # Ids by decreasing area: BIG=1, SMALL=2 (OTHER has 29 pixels < SMALL's 49).
    assert OTHER.sum() < SMALL.sum() < BIG.sum()
    assert (labels[SMALL] == 2).all()
    assert (labels[BIG & ~SMALL] == 1).all()
    assert (labels[OTHER] == 3).all()
    assert (labels[~(BIG | OTHER)] == 0).all()
    assert set(np.unique(labels)) == {0, 1, 2, 3}


def test_min_area_and_ids():
    labels, ids = records_to_labels(_records(SMALL, BIG, OTHER), min_area=30, return_ids=True)
    assert ids.tolist() == [2, 1, 0]
    assert set(np.unique(labels)) == {0, 1, 2}
    assert (labels[OTHER] == 0).all()


def test_hidden_objects_are_dropped_and_ids_stay_consecutive():
    half = BIG.copy()
    half[:, :25] = False
    covered = SMALL.copy()
    labels, ids = records_to_labels([BIG, half, covered, SMALL.copy()], return_ids=True)
    # Painting order: BIG, half (over BIG's right side), then the two equal small
    # masks in record order: the second hides the first, which gets no label.
    assert ids.tolist() == [1, 2, 0, 3]
    assert set(np.unique(labels)) == {0, 1, 2, 3}


def test_plain_masks_and_empty_input():
    labels = records_to_labels([BIG.astype(np.uint8), np.zeros(SHAPE, bool)])
    assert set(np.unique(labels)) == {0, 1}
    empty = records_to_labels([], shape=(3, 4))
    assert empty.shape == (3, 4) and empty.dtype == np.uint32 and not empty.any()
    with pytest.raises(MaskRecordError, match="shape"):
        records_to_labels([])


def test_bad_records():
    with pytest.raises(MaskRecordError, match="shape") as err:
        records_to_labels([BIG, np.zeros((3, 3), bool)])
    assert isinstance(err.value, NapariSamError) and isinstance(err.value, ValueError)
    with pytest.raises(MaskRecordError, match="segmentation"):
        records_to_labels([{"area": 3}])
    with pytest.raises(MaskRecordError, match="counts"):
        records_to_labels([{"segmentation": {"size": [2, 2]}}])
    with pytest.raises(MaskRecordError, match="sum to 4"):
        decode_segmentation({"size": [2, 2], "counts": [1, 1]})
    with pytest.raises(MaskRecordError, match="2D"):
        decode_segmentation(np.zeros((2, 2, 2), bool))


def test_labels_from_generator_records():
    """Records straight from the automatic mask generator (toy model)."""
    from napari_sam import SamAutomaticMaskGenerator
    from napari_sam.model.sam.sam import Sam
    from test_automatic import CONFIGS, IMAGE, ToyDecoder, ToyEncoder, ToyPromptEncoder

    model = Sam(ToyEncoder(), ToyPromptEncoder(), ToyDecoder()).eval()
    records = SamAutomaticMaskGenerator(model, output_mode="coco_rle",
                                        **CONFIGS["relaxed"]).generate(IMAGE)
    labels, ids = records_to_labels(records, return_ids=True)
    assert labels.shape == IMAGE.shape[:2]
    visible = ids[ids > 0]
    assert sorted(visible.tolist()) == list(range(1, len(visible) + 1))
    # The smallest record is never covered by a larger one.
    areas = [r["area"] for r in records]
    smallest = max(i for i, a in enumerate(areas) if a == min(areas))  # painted last
    assert ids[smallest] == labels.max()
