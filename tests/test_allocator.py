"""runtime.allocator: glibc's thresholds raised while a loop runs, restored after."""

from __future__ import annotations

import platform

import pytest
import torch

from napari_sam.runtime import allocator


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


@pytest.fixture
def fake(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(allocator, "_glibc", lambda: libc)
    return libc


HELD = [("mallopt", allocator.M_MMAP_THRESHOLD, allocator.HELD_BYTES),
        ("mallopt", allocator.M_TRIM_THRESHOLD, allocator.HELD_BYTES)]
AFTER = [("mallopt", allocator.M_MMAP_THRESHOLD, allocator.AFTER_MMAP_BYTES),
         ("mallopt", allocator.M_TRIM_THRESHOLD, allocator.AFTER_TRIM_BYTES),
         ("malloc_trim", 0)]


def test_thresholds_raised_inside_and_restored_after(fake):
    with allocator.reuse_freed_memory():
        assert fake.calls == HELD
        with allocator.reuse_freed_memory():  # nested: nothing more
            pass
        assert fake.calls == HELD
    assert fake.calls == HELD + AFTER


def test_restored_when_the_loop_fails(fake):
    with pytest.raises(ValueError), allocator.reuse_freed_memory():
        raise ValueError("boom")
    assert fake.calls == HELD + AFTER


def test_spans_a_generator_until_it_is_closed(fake):
    def steps():
        with allocator.reuse_freed_memory():
            yield 1
            yield 2

    it = steps()
    next(it)
    assert fake.calls == HELD
    it.close()
    assert fake.calls == HELD + AFTER


def test_inactive_does_nothing(fake):
    with allocator.reuse_freed_memory(active=False):
        pass
    assert fake.calls == []


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_real_glibc_round_trip():
    """Under glibc the real library is found, and tensors allocated inside are
    ordinary tensors (the thresholds are accepted)."""
    libc = allocator._glibc()
    assert libc is not None
    assert libc.mallopt(allocator.M_MMAP_THRESHOLD, allocator.AFTER_MMAP_BYTES) == 1
    with allocator.reuse_freed_memory():
        a = torch.ones(8 << 20)  # 32 MiB
        del a
        b = torch.ones(8 << 20)
    assert float(b.sum()) == 8 << 20
