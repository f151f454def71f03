"""Files written whole or not at all, and content hashes: one implementation of each.

:func:`atomic_write` is used for every file napari-sam writes (label TIFFs,
COCO JSON, cached embeddings, downloaded weights): data goes to a temporary
file in the destination folder, is flushed to disk, gets the permissions a new
file would get under the user's umask (so a lab sharing one cache folder can
read each other's files), and only then replaces the destination in one rename.
:func:`content_hash` names array contents (embedding keys, result identities).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from napari_sam.errors import NapariSamError, OutputFileError

__all__ = [
    "atomic_write",
    "content_hash",
    "new_dir_mode",
    "new_file_mode",
    "replace_dir",
    "temporary_dir",
]


def new_file_mode() -> int:
    """The permission bits a newly created file gets under the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def new_dir_mode() -> int:
    """The permission bits a newly created folder gets under the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str],
    *,
    error: type[NapariSamError] = OutputFileError,
    what: str = "",
) -> Iterator[Path]:
    """Write ``path`` all at once: yield a temporary path to write, then rename it into place.

    The folder is created if needed. If the block raises (or is interrupted,
    e.g. Ctrl+C), the temporary file is removed and ``path`` is left as it was.

    Parameters
    ----------
    path : path-like
        The destination.
    error : NapariSamError subclass
        Raised (with one sentence) when the folder or the file cannot be written.
    what : str
        How to name the file in that sentence (default: its path).

    Raises
    ------
    error
        If the folder cannot be created or written to, or the rename fails.
    """
    path = Path(path).expanduser()
    name = what or str(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"The folder {folder} cannot be created ({exc.strerror or exc}).") from exc
    if path.is_dir():
        raise error(f"{name} is a folder; give a file name.")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=folder)
        os.close(fd)
    except OSError as exc:
        raise error(
            f"{name} cannot be written: the folder {folder} is not writable "
            f"({exc.strerror or exc})."
        ) from exc
    tmp = Path(tmp_name)
    try:
        yield tmp
        try:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            # mkstemp makes the file private (0600); give it the permissions of a new file
            with contextlib.suppress(OSError):
                os.chmod(tmp, new_file_mode())
            os.replace(tmp, path)
        except OSError as exc:
            raise error(f"{name} cannot be written ({exc.strerror or exc}).") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def content_hash(array: object) -> str:
    """Hash (BLAKE2b, 128 bit, hex) of an array's values, shape and dtype.

    Two arrays get the same hash exactly when they hold the same values with the
    same shape and dtype, whatever their memory layout.
    """
    arr = np.ascontiguousarray(np.asarray(array))
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{arr.shape}|{arr.dtype.str}|".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


@contextlib.contextmanager
def temporary_dir(
    path: str | os.PathLike[str], *, error: type[NapariSamError] = OutputFileError
) -> Iterator[Path]:
    """A new hidden folder next to ``path`` to build a folder output in (zarr).

    It gets the permissions of a new folder under the umask. If the block
    raises (or is interrupted), the folder and everything in it is removed;
    on success it is removed too unless the block moved it away
    (:func:`replace_dir`).
    """
    path = Path(path).expanduser()
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=folder))
        with contextlib.suppress(OSError):
            os.chmod(tmp, new_dir_mode())
    except OSError as exc:
        raise error(
            f"{path} cannot be written: the folder {folder} is not writable "
            f"({exc.strerror or exc})."
        ) from exc
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(
    tmp: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    error: type[NapariSamError] = OutputFileError,
) -> None:
    """Move the complete folder ``tmp`` to ``path``, replacing what is there.

    A folder cannot replace another in one atomic step: an existing ``path``
    is first renamed aside, ``tmp`` renamed into place, then the old copy
    deleted; if the second rename fails, the old copy is put back. ``path``
    therefore always names either the old or the new complete output.
    """
    tmp, path = Path(tmp), Path(path).expanduser()
    old: Path | None = None
    try:
        if path.exists() or path.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            old.rmdir()
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except OSError:
            if old is not None:
                os.replace(old, path)
                old = None
            raise
    except OSError as exc:
        raise error(f"{path} cannot be written ({exc.strerror or exc}).") from exc
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                old.unlink()
