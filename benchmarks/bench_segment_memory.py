"""``napari-sam segment`` on a time-lapse and a stack: the memory its label image takes.

Runs the real command, each in a fresh process, on a time-lapse of stacks
(T Z Y X) and on a stack (Z Y X) of synthetic fluorescent nuclei
(``napari_sam.workflows.samples.make_nuclei_3d``, uint16), with MobileSAM's
architecture and seeded random weights saved to a local checkpoint (nothing is
downloaded) and permissive thresholds, twice per input: the labels in memory
(below ``spill.SPILL_BYTES``, the default for these sizes) and made on disk
(``SPILL_BYTES`` set to 0, as for labels over 1 GiB). Reports the peak of the
memory Python and numpy allocate (``tracemalloc``; PyTorch's own allocations
are not counted) and the process's peak resident memory, and checks that both
ways write the same file.

Usage::

    python benchmarks/bench_segment_memory.py                 # 6 x 8 x 768 x 768 and 48 x 768 x 768
    python benchmarks/bench_segment_memory.py --quick         # a smoke run
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import machine_info, markdown_table

RUN = r"""
import resource, sys, time, tracemalloc
from napari_sam import cli
from napari_sam.workflows import spill
if sys.argv[1] == "disk":
    spill.SPILL_BYTES = 0
tracemalloc.start()
t = time.perf_counter()
rc = cli.main(["segment", sys.argv[2], "-o", sys.argv[3], "--model", "vit_t",
               "--checkpoint", sys.argv[4], "--device", "cpu", "--points-per-side", "4",
               "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--min-area", "0",
               "--max-area", "1", "--box-nms-thresh", "1", "--link-slices", "--quiet"])
peak = tracemalloc.get_traced_memory()[1]
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(rc, peak, rss * 1024, time.perf_counter() - t)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs (a smoke run)")
    args = parser.parse_args()
    import tifffile
    import torch

    from napari_sam.predictors.build_sam import sam_model_registry
    from napari_sam.workflows.samples import make_nuclei_3d

    t, z, side = (2, 8, 256) if args.quick else (6, 8, 768)
    print(machine_info())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        torch.manual_seed(0)
        checkpoint = folder / "vit_t_random.pt"
        torch.save(sam_model_registry["vit_t"]().state_dict(), checkpoint)
        volume = make_nuclei_3d(shape=(t * z, side, side), n=24 if args.quick else 200)
        inputs = {
            "time-lapse": (volume.reshape(t, z, side, side), "TZYX"),
            "stack": (volume, "ZYX"),
        }
        rows = []
        for name, (data, axes) in inputs.items():
            src = folder / f"{name}.tif"
            tifffile.imwrite(src, data, imagej=True, metadata={"axes": axes})
            outputs = []
            for where in ("memory", "disk"):
                out = folder / f"{name}_{where}_labels.tif"
                line = subprocess.run(
                    [sys.executable, "-c", RUN, where, str(src), str(out), str(checkpoint)],
                    capture_output=True, text=True, check=True,
                ).stdout.strip().splitlines()[-1]
                rc, peak, rss, seconds = line.split()
                if rc != "0":
                    raise SystemExit(f"segment failed on {name} ({where})")
                labels_mib = 4 * data.size / 2**20
                rows.append([
                    f"{name} {' × '.join(map(str, data.shape))}", where,
                    f"{labels_mib:.0f} MiB", f"{int(peak) / 2**20:.0f} MiB",
                    f"{int(rss) / 2**20:.0f} MiB", f"{float(seconds):.0f} s",
                ])
                outputs.append(tifffile.imread(out))
            same = np.array_equal(outputs[0], outputs[1])
            rows[-1].append("same file" if same else "DIFFERENT")
            rows[-2].append("")
    print(markdown_table(
        ["input", "labels made in", "labels (uint32)", "Python/numpy peak",
         "peak RSS", "time", "output"],
        rows,
    ))


if __name__ == "__main__":
    main()
