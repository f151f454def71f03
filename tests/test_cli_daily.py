"""Daily command-line use: one default for ``embed --batch-size``, files that respect the
umask (a lab sharing one cache folder), user docs without internal issue numbers."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sam.cli import build_parser
from napari_sam.predictors.predictor import ImageEmbedding
from napari_sam.runtime import weights
from napari_sam.workflows.embeddings import BATCH_SIZE_RULE, DiskCache, EmbeddingKey

ROOT = Path(__file__).resolve().parents[1]
USER_DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_embed_batch_size_help_and_docs_give_the_same_default():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest is not None and a.choices)  # subparsers
    embed = sub.choices["embed"]
    action = next(a for a in embed._actions if "--batch-size" in a.option_strings)
    assert BATCH_SIZE_RULE in _flat(action.help)
    documented = [p.name for p in USER_DOCS if "--batch-size" in p.read_text()]
    assert documented, "no document explains --batch-size"
    for path in USER_DOCS:
        text = _flat(path.read_text())
        for match in re.finditer(r"--batch-size[^(]{0,20}\(default: ([^)]*)\)", text):
            assert match.group(1) == BATCH_SIZE_RULE, f"{path.name}: {match.group(0)}"


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_disk_cache_entries_respect_the_umask(tmp_path, umask):
    cache = DiskCache(tmp_path / "cache")
    key = EmbeddingKey("0" * 32, 0, "model", (0.0, 1.0))
    emb = ImageEmbedding(torch.zeros(1, 4, 2, 2), (8, 8), (8, 8))
    path = cache.put(key, emb)
    assert _mode(path) == 0o666 & ~umask
    assert _mode(cache.root) == 0o777 & ~umask


def test_downloaded_weights_respect_the_umask(tmp_path, umask):
    source = tmp_path / "weights.pth"
    data = np.random.default_rng(0).bytes(5000)
    source.write_bytes(data)
    dest = tmp_path / "cache" / "weights.pth"
    weights.download(
        source.as_uri(),
        dest,
        expected_size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        progress=False,
    )
    assert dest.read_bytes() == data
    assert _mode(dest) == 0o666 & ~umask


_ISSUE_REF = re.compile(r"\bissues? \d+|\(#\d+\)|#\d+\b(?![\d.]*[x×])", re.IGNORECASE)


def test_user_docs_do_not_mention_internal_issue_numbers():
    found = []
    for path in USER_DOCS:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if _ISSUE_REF.search(line):
                found.append(f"{path.name}:{n}: {line.strip()}")
    assert found == []
