"""SAM 2.1: parameter layout, checkpoint loading, family/size mismatches, catalogue entries."""

from __future__ import annotations

import pytest
import torch

from napari_sam.errors import CheckpointError, ModelTypeMismatchError
from napari_sam.model.sam2 import SAM2_CONFIGS, Sam2, build_sam2
from napari_sam.runtime.loader import is_sam2, load, model_names, resolve_model_type
from napari_sam.runtime.weights import CHECKPOINTS, MODEL_TYPE_ALIASES, checkpoint_info


@pytest.mark.parametrize(
    "name",
    [
        "sam2_tiny",
        "sam2_small",
        "sam2_base_plus",
        pytest.param("sam2_large", marks=pytest.mark.slow),
    ],
)
def test_parameters_are_the_published_layout(name):
    """Same keys and shapes as Meta's model built from its SAM 2.1 config."""
    from reference_sam2 import build_reference_sam2

    ref = build_reference_sam2(name).state_dict()
    ours = build_sam2(SAM2_CONFIGS[name]).state_dict()
    assert set(ours) == set(ref)
    shapes = {k: tuple(v.shape) for k, v in ref.items()}
    assert {k: tuple(v.shape) for k, v in ours.items()} == shapes


def test_loader_reads_a_published_layout_file(sam2_checkpoint):
    path = sam2_checkpoint("sam2_tiny")
    loaded = load("sam2_tiny", checkpoint=path, device="cpu", precision="fp32", progress=False)
    assert isinstance(loaded.sam, Sam2)
    assert loaded.model_type == "sam2_tiny"
    assert loaded.name == path.name and "sam2_tiny" not in loaded.model_id.split(":")[0]
    assert loaded.describe().startswith(path.name)
    ref_state = torch.load(path, weights_only=True)["model"]
    ours = loaded.sam.state_dict()
    assert all(torch.equal(ours[k], ref_state[k]) for k in ref_state)
    # "auto" with a SAM 2 file takes the architecture the file holds
    auto = load("auto", checkpoint=path, device="cpu", progress=False)
    assert auto.model_type == "sam2_tiny" and isinstance(auto.sam, Sam2)


def test_names_aliases_and_catalogue():
    assert {"sam2_tiny", "sam2_small", "sam2_base_plus", "sam2_large"} <= set(model_names())
    assert resolve_model_type("sam2.1_hiera_base_plus") == "sam2_base_plus"
    assert resolve_model_type("sam2_b+") == "sam2_base_plus"
    assert is_sam2("sam2_t") and not is_sam2("vit_b")
    sizes = {
        "sam2_tiny": ("sam2.1_hiera_tiny.pt", 156_008_466),
        "sam2_small": ("sam2.1_hiera_small.pt", 184_416_285),
        "sam2_base_plus": ("sam2.1_hiera_base_plus.pt", 323_606_802),
        "sam2_large": ("sam2.1_hiera_large.pt", 898_083_611),
    }
    for name, (filename, size) in sizes.items():
        info = checkpoint_info(name)
        assert info.filename == filename and info.size_bytes == size
        assert info.url == "https://dl.fbaipublicfiles.com/segment_anything_2/092824/" + filename
        assert len(info.sha256) == 64 and int(info.sha256, 16) >= 0
        assert name in CHECKPOINTS and MODEL_TYPE_ALIASES[filename[:-3]] == name


def test_sam1_checkpoint_offered_as_sam2(tmp_path):
    from napari_sam.runtime.checkpoints import build_any

    path = tmp_path / "mobile_sam_like.pt"
    torch.save(build_any("vit_t").state_dict(), path)
    with pytest.raises(ModelTypeMismatchError) as info:
        load("sam2_tiny", checkpoint=path, device="cpu", progress=False)
    msg = str(info.value)
    assert str(path) in msg and "SAM 1 model ('vit_t')" in msg and "sam2_tiny" in msg
    assert msg.count(".") >= 1 and "\n" not in msg


def test_sam2_checkpoint_offered_as_sam1(sam2_checkpoint):
    path = sam2_checkpoint("sam2_tiny")
    with pytest.raises(ModelTypeMismatchError) as info:
        load("vit_b", checkpoint=path, device="cpu", progress=False)
    msg = str(info.value)
    assert str(path) in msg and "SAM 2.1 model ('sam2_tiny')" in msg and "'vit_b'" in msg


def test_other_sam2_size_is_named(tmp_path):
    path = tmp_path / "small.pt"
    torch.save({"model": build_sam2(SAM2_CONFIGS["sam2_small"]).state_dict()}, path)
    with pytest.raises(ModelTypeMismatchError) as info:
        load("sam2_tiny", checkpoint=path, device="cpu", progress=False)
    assert "SAM 2.1 model ('sam2_small')" in str(info.value)
    assert info.value.found == "sam2_small"


def test_damaged_state_lists_the_keys(tmp_path):
    state = build_sam2(SAM2_CONFIGS["sam2_tiny"]).state_dict()
    del state["no_obj_ptr"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "damaged.pt"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as info:
        load("sam2_tiny", checkpoint=path, device="cpu", progress=False)
    msg = str(info.value)
    assert "no_obj_ptr" in msg and "extra.weight" in msg and "damaged.pt" in msg
