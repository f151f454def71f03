"""Registry, published key sets, and checkpoint loading / error messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from napari_sam import sam_model_registry
from napari_sam.errors import CheckpointError, ModelTypeMismatchError
from napari_sam.model.build import CONFIGS, build_model, check_state, detect_model_type
from napari_sam.runtime.checkpoints import build_from_config, read_checkpoint
from reference import SMALL


@pytest.mark.parametrize("model_type", ["vit_b", "vit_l", "vit_h"])
def test_key_sets_equal_reference(model_type):
    """Our parameter names and shapes equal the reference's (nothing allocated)."""
    from segment_anything import sam_model_registry as ref_registry

    with torch.device("meta"):
        ref = ref_registry[model_type]()
        ours = sam_model_registry[model_type]()
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert set(our_sd) == set(ref_sd)
    assert {k: tuple(v.shape) for k, v in our_sd.items()} == {
        k: tuple(v.shape) for k, v in ref_sd.items()
    }
    assert detect_model_type(our_sd) == model_type


def test_registry_keys_and_default():
    assert {"default", "vit_h", "vit_l", "vit_b"} <= set(sam_model_registry)
    assert sam_model_registry["default"] is sam_model_registry["vit_h"]


def test_random_init_like_reference():
    """Without a checkpoint: eval mode, zero position embeddings, real random weights."""
    torch.manual_seed(0)
    model = build_model(SMALL)
    assert not model.training
    assert torch.count_nonzero(model.image_encoder.pos_embed) == 0
    assert torch.count_nonzero(model.image_encoder.blocks[0].attn.rel_pos_h) == 0
    assert model.mask_decoder.iou_token.weight.std() > 0.5


def test_load_strict_roundtrip(small_pair, tmp_path):
    _, ours, ckpt = small_pair
    loaded = build_from_config(SMALL, ckpt)
    for (k, a), (k2, b) in zip(ours.state_dict().items(), loaded.state_dict().items()):
        assert k == k2
        assert torch.equal(a, b)
    assert not any(t.is_meta for t in loaded.state_dict().values())
    assert loaded.pixel_mean.device.type == "cpu"


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"model": sd},
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model_state": sd},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"state_dict": {f"sam.{k}": v for k, v in sd.items()}},
    ],
    ids=["model", "state_dict", "model_state", "module_prefix", "wrapped_sam_prefix"],
)
def test_wrapped_checkpoints_load(small_pair, tmp_path, wrap):
    _, ours, ckpt = small_pair
    sd = torch.load(ckpt, weights_only=True)
    path = tmp_path / "wrapped.pth"
    torch.save(wrap(sd), path)
    loaded = build_from_config(SMALL, path)
    key = "mask_decoder.iou_token.weight"
    assert torch.equal(loaded.state_dict()[key], ours.state_dict()[key])


def test_missing_file_names_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        sam_model_registry["vit_b"](checkpoint=tmp_path / "nope.pth")


def test_truncated_checkpoint(small_pair, tmp_path):
    _, _, ckpt = small_pair
    data = ckpt.read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="could not be read"):
        build_from_config(SMALL, bad)


def test_not_a_pytorch_file(tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("these are not weights")
    with pytest.raises(CheckpointError, match="could not be read"):
        build_from_config(SMALL, bad)


@pytest.mark.parametrize(
    "obj",
    [torch.zeros(3), [1, 2, 3], {"weights": "none"}, {}],
    ids=["tensor", "list", "strings", "empty"],
)
def test_not_a_state_dict(tmp_path, obj):
    path = tmp_path / "odd.pth"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match="does not contain SAM model weights"):
        read_checkpoint(path)


def test_missing_and_unexpected_keys_are_named(small_pair, tmp_path):
    _, _, ckpt = small_pair
    sd = torch.load(ckpt, weights_only=True)
    sd.pop("mask_decoder.iou_token.weight")
    sd["extra.head.weight"] = torch.zeros(2)
    path = tmp_path / "edited.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as info:
        build_from_config(SMALL, path)
    msg = str(info.value)
    assert "mask_decoder.iou_token.weight" in msg and "extra.head.weight" in msg
    assert "missing" in msg and "unexpected" in msg


def test_small_checkpoint_into_vit_b_lists_shapes(small_pair):
    _, _, ckpt = small_pair
    with pytest.raises(CheckpointError) as info:
        sam_model_registry["vit_b"](checkpoint=ckpt)
    assert "wrong shape" in str(info.value)
    assert not isinstance(info.value, ModelTypeMismatchError)


@pytest.mark.parametrize(
    ("have", "want"), [("vit_b", "vit_l"), ("vit_h", "vit_b"), ("vit_l", "vit_h")]
)
def test_other_model_type_is_named(have, want):
    with torch.device("meta"):
        state = build_model(CONFIGS[have]).state_dict()
        expected = build_model(CONFIGS[want]).state_dict()
    with pytest.raises(ModelTypeMismatchError) as info:
        check_state(expected, state, model_type=want, source="x.pth")
    assert info.value.found == have and info.value.expected == want
    assert f"holds a '{have}' model" in str(info.value)


def test_other_model_type_from_file(tmp_path):
    """A real vit_b-shaped file given to the vit_l builder fails before building vit_l."""
    with torch.device("meta"):
        shapes = build_model(CONFIGS["vit_b"]).state_dict()
    state = {k: torch.zeros(v.shape, dtype=torch.float16) for k, v in shapes.items()}
    path = tmp_path / "sam_vit_b.pth"
    torch.save(state, path)
    with pytest.raises(ModelTypeMismatchError, match="'vit_b' model, not 'vit_l'"):
        sam_model_registry["vit_l"](checkpoint=path)


def test_loading_imports_neither_dynamo_nor_triton(small_pair):
    """Loading a checkpoint must not import torch._dynamo (and with it triton): triton's
    LLVM crashes a process that already holds a Mesa OpenGL context, as napari does."""
    import subprocess
    import sys

    _, _, ckpt = small_pair
    code = (
        "import sys, torch\n"
        "from reference import SMALL\n"
        "from napari_sam.runtime.checkpoints import build_from_config\n"
        f"m = build_from_config(SMALL, {str(ckpt)!r})\n"
        "print(sorted(k for k in ('torch._dynamo', 'triton') if k in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=str(Path(__file__).parent),
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_checkpoint_build_skips_random_init_only_while_building(small_pair):
    """The init patch is undone: a later random build is random again."""
    _, _, ckpt = small_pair
    build_from_config(SMALL, ckpt)
    torch.manual_seed(0)
    a = build_from_config(SMALL).mask_decoder.iou_token.weight
    assert a.std() > 0.5
