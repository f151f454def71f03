"""An array stand-in that records which slices are read (to check lazy reading)."""

from __future__ import annotations


class Recording:
    """An array that records which slices (first axis) dask reads from it."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.read: set[int] = set()

    def __getitem__(self, key):
        first = key[0] if isinstance(key, tuple) else key
        if isinstance(first, slice):
            self.read.update(range(*first.indices(self.shape[0])))
        else:
            self.read.add(int(first))
        return self.data[key]
