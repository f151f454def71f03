"""The catalogue of published weights, the weights cache and verified downloads.

Models are loaded with :func:`napari_sam.runtime.loader.load`, which asks this
module for the file. Checkpoints are stored in
:func:`napari_sam.runtime.config.cache_dir` (``$NAPARI_SAM_CACHE`` if set,
otherwise the user's cache folder) under their published file names. A
download is written to a temporary file next to its destination, checked
(byte size, and MD5, SHA-256 and/or xxHash-128 where :data:`CHECKPOINTS`
records them) and only then renamed into place, so an interrupted or corrupt
download never leaves a file that looks usable.

Besides Meta's SAM and MobileSAM, the catalogue names micro-sam's fine-tuned
models (``vit_b_lm``, ``vit_l_em_organelles``, ...): each has an encoder file
(a SAM state dict of its :attr:`CheckpointInfo.architecture`) and a
:attr:`CheckpointInfo.decoder` file for automatic instance segmentation.

Nothing here imports ``torch``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import socket
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_sam.errors import (
    Cancelled,
    UnknownModelTypeError,
    WeightsDownloadError,
)
from napari_sam.runtime.config import cache_dir
from napari_sam.runtime.files import new_file_mode
from napari_sam.runtime.progress import CancelCheck, ProgressCallback, notify

if TYPE_CHECKING:
    pass

__all__ = [
    "CHECKPOINTS",
    "MODEL_TYPE_ALIASES",
    "CheckpointInfo",
    "checkpoint_info",
    "checkpoint_path",
    "decoder_path",
    "discard_cached",
    "download",
    "file_xxh128",
    "is_cached",
    "models_with_decoder",
    "published_decoder",
]

#: Bytes read per step while downloading.
DEFAULT_CHUNK_SIZE = 1 << 20

#: Seconds without data after which a download is given up.
DEFAULT_TIMEOUT = 60.0

#: Model type names that are other names for a checkpoint of :data:`CHECKPOINTS`.
MODEL_TYPE_ALIASES: dict[str, str] = {"default": "vit_h"}



@dataclass(frozen=True)
class CheckpointInfo:
    """A published SAM checkpoint file.

    Attributes
    ----------
    model_type : str
        Key in ``sam_model_registry`` (``"vit_h"``, ``"vit_l"``, ``"vit_b"``, ``"vit_t"``).
    filename : str
        Published file name; the file is cached under this name.
    url : str
        Where the file is downloaded from.
    size_bytes : int or None
        Exact size of the file in bytes, if known.
    md5 : str or None
        Hex MD5 digest of the file, if known.
    sha256 : str or None
        Hex SHA-256 digest of the file, if known.
    description : str
        A short human-readable name for menus and ``napari-sam info``.
    architecture : str or None
        The network the file holds (a key of ``napari_sam.model.build.CONFIGS``),
        when it differs from ``model_type`` (micro-sam's ``"vit_b_lm"`` is a ``"vit_b"``).
    xxh128 : str or None
        Hex xxHash-128 digest of the file, if known (micro-sam's registry records these).
    decoder : CheckpointInfo or None
        The instance-segmentation decoder published with the model (micro-sam), if any.
    """

    model_type: str
    filename: str
    url: str
    size_bytes: int | None
    md5: str | None = None
    sha256: str | None = None
    description: str = ""
    architecture: str | None = None
    xxh128: str | None = None
    decoder: CheckpointInfo | None = None

    @property
    def size_mb(self) -> float | None:
        """Size in megabytes (10**6 bytes), or ``None`` if unknown."""
        return None if self.size_bytes is None else self.size_bytes / 1e6

    @property
    def arch(self) -> str:
        """The network architecture: :attr:`architecture`, or else :attr:`model_type`."""
        return self.architecture or self.model_type


_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"

# Provenance of the numbers below (all from public material, none computed here):
#
# * size_bytes: the SAM sizes 2564550879 / 1249524607 / 375042383 are listed together
#   with the SHA-256 digests below in several public model manifests, and 375042383 is
#   the Content-Length that dl.fbaipublicfiles.com reports in a published `wget` log.
#   40728226 for mobile_sam.pt is listed with its SHA-256 and the source
#   github.com/ChaoningZhang/MobileSAM (weights/mobile_sam.pt, commit f706ad9c) in
#   several public manifests.
# * sha256: micro-sam (computational-cell-analytics/micro-sam, micro_sam/util.py, the
#   pooch registry keyed "vit_h", "vit_l", "vit_b", "vit_t"); the same digests appear
#   in independent manifests next to the sizes above.
# * md5 (SAM files only): IOPaint / lama-cleaner (SEGMENT_ANYTHING_MODELS table of the
#   interactive-segmentation plugin) and other download scripts agree; each digest
#   starts with the six hex digits in the file name (4b8939, 0b3195, 01ec64), which is
#   how Meta named the files. No MD5 is recorded for mobile_sam.pt: the MD5 published
#   for a re-hosted copy (f3c0d8cd...) could not be tied to the GitHub file, so only the
#   SHA-256 above (which is) is used.
CHECKPOINTS: dict[str, CheckpointInfo] = {
    "vit_h": CheckpointInfo(
        model_type="vit_h",
        filename="sam_vit_h_4b8939.pth",
        url=_SAM_URL + "sam_vit_h_4b8939.pth",
        size_bytes=2_564_550_879,
        md5="4b8939a88964f0f4ff5f5b2642c598a6",
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        description="SAM ViT-H (huge, most accurate, 2.6 GB)",
    ),
    "vit_l": CheckpointInfo(
        model_type="vit_l",
        filename="sam_vit_l_0b3195.pth",
        url=_SAM_URL + "sam_vit_l_0b3195.pth",
        size_bytes=1_249_524_607,
        md5="0b3195507c641ddb6910d2bb5adee89c",
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        description="SAM ViT-L (large, 1.2 GB)",
    ),
    "vit_b": CheckpointInfo(
        model_type="vit_b",
        filename="sam_vit_b_01ec64.pth",
        url=_SAM_URL + "sam_vit_b_01ec64.pth",
        size_bytes=375_042_383,
        md5="01ec64d29a2fca3f0661936605ae66f8",
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        description="SAM ViT-B (base, fast, 375 MB)",
    ),
    "vit_t": CheckpointInfo(
        model_type="vit_t",
        filename="mobile_sam.pt",
        url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        size_bytes=40_728_226,
        md5=None,
        sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        description="MobileSAM ViT-T (tiny, fastest on CPU, 41 MB)",
    ),
}


# micro-sam's fine-tuned models (computational-cell-analytics/micro-sam, micro_sam/util.py,
# ``models()``, version 1.8.14: the pooch registry ``"xxh128:<hex>"`` and the URLs, for the
# encoder key ``<name>`` and the decoder key ``<name>_decoder``). Byte sizes are not
# published there, so files are checked by their xxHash-128 digest only. The files are
# cached as ``<name>.pt`` and ``<name>_decoder.pt``: several are published under the same
# file name (``vit_b.pt``) for different models.
_BIOIMAGEIO = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/"
_OWNCLOUD = "https://owncloud.gwdg.de/index.php/s/"
_MICRO_SAM: tuple[tuple[str, str, str, str, str, str, str], ...] = (
    # name, architecture, what it is for, encoder URL, encoder xxh128, decoder URL, decoder xxh128
    (
        "vit_t_lm", "vit_t", "light microscopy (cells, nuclei)",
        _BIOIMAGEIO + "faithful-chicken/1.1/files/vit_t.pt", "72ec5074774761a6e5c05a08942f981e",
        _BIOIMAGEIO + "faithful-chicken/1.1/files/vit_t_decoder.pt",
        "3e914a5f397b0312cdd36813031f8823",
    ),
    (
        "vit_b_lm", "vit_b", "light microscopy (cells, nuclei)",
        _BIOIMAGEIO + "diplomatic-bug/1.2/files/vit_b.pt", "fe9252a29f3f4ea53c15a06de471e186",
        _BIOIMAGEIO + "diplomatic-bug/1.2/files/vit_b_decoder.pt",
        "708b15ac620e235f90bb38612c4929ba",
    ),
    (
        "vit_l_lm", "vit_l", "light microscopy (cells, nuclei)",
        _BIOIMAGEIO + "idealistic-rat/1.2/files/vit_l.pt", "017f20677997d628426dec80a8018f9d",
        _BIOIMAGEIO + "idealistic-rat/1.2/files/vit_l_decoder.pt",
        "2faeafa03819dfe03e7c46a44aaac64a",
    ),
    (
        "vit_t_em_organelles", "vit_t", "electron microscopy (mitochondria, nuclei, organelles)",
        _BIOIMAGEIO + "greedy-whale/1/files/vit_t.pt", "253474720c497cce605e57c9b1d18fd9",
        _BIOIMAGEIO + "greedy-whale/1/files/vit_t_decoder.pt",
        "8f897c7bb93174a4d1638827c4dd6f44",
    ),
    (
        "vit_b_em_organelles", "vit_b", "electron microscopy (mitochondria, nuclei, organelles)",
        _BIOIMAGEIO + "noisy-ox/1.2/files/vit_b.pt", "f3bf2ed83d691456bae2c3f9a05fb438",
        _BIOIMAGEIO + "noisy-ox/1.2/files/vit_b_decoder.pt",
        "bb6398956a6b0132c26b631c14f95ce2",
    ),
    (
        "vit_l_em_organelles", "vit_l", "electron microscopy (mitochondria, nuclei, organelles)",
        _BIOIMAGEIO + "humorous-crab/1.2/files/vit_l.pt", "810b084b6e51acdbf760a993d8619f2d",
        _BIOIMAGEIO + "humorous-crab/1.2/files/vit_l_decoder.pt",
        "334877640bfdaaabce533e3252a17294",
    ),
    (
        "vit_b_histopathology", "vit_b", "histopathology (H&E nuclei)",
        _OWNCLOUD + "sBB4H8CTmIoBZsQ/download", "ffd1a2cd84570458b257bd95fdd8f974",
        _OWNCLOUD + "KO9AWqynI7SFOBj/download", "6a66194dcb6e36199cbee2214ecf7213",
    ),
    (
        "vit_l_histopathology", "vit_l", "histopathology (H&E nuclei)",
        _OWNCLOUD + "IZgnn1cpBq2PHod/download", "b591833c89754271023e901281dee3f2",
        _OWNCLOUD + "oIs6VSmkOp7XrKF/download", "46aab7765d4400e039772d5a50b55c04",
    ),
    (
        "vit_h_histopathology", "vit_h", "histopathology (H&E nuclei)",
        _OWNCLOUD + "L7AcvVz7DoWJ2RZ/download", "bd1856dafc156a43fb3aa705f1a6e92e",
        _OWNCLOUD + "1qAKxy5H0jgwZvM/download", "3ed9f87e46ad5e16935bd8d722c8dc47",
    ),
    (
        "vit_b_medical_imaging", "vit_b", "medical imaging (CT, MRI, ultrasound ...)",
        _OWNCLOUD + "f5Ol4FrjPQWfjUF/download", "40169f1e3c03a4b67bff58249c176d92",
        _OWNCLOUD + "ahd3ZhZl2e0RIwz/download", "9e498b12f526f119b96c88be76e3b2ed",
    ),
)
for _name, _arch, _use, _url, _xxh, _dec_url, _dec_xxh in _MICRO_SAM:
    CHECKPOINTS[_name] = CheckpointInfo(
        model_type=_name,
        filename=f"{_name}.pt",
        url=_url,
        size_bytes=None,
        description=f"micro-sam ViT-{_arch[-1].upper()} for {_use}, with an AIS decoder",
        architecture=_arch,
        xxh128=_xxh,
        decoder=CheckpointInfo(
            model_type=_name,
            filename=f"{_name}_decoder.pt",
            url=_dec_url,
            size_bytes=None,
            description=f"instance decoder of {_name}",
            architecture=_arch,
            xxh128=_dec_xxh,
        ),
    )


# SAM 2.1 (Meta's release of 2024-09-28, folder "092824"), loaded by napari_sam.model.sam2.
# Provenance (public material, none computed here): the byte sizes and SHA-256 digests are
# the ones several independent public manifests and install scripts record for these exact
# URLs (e.g. micro-sam's SAM 2 branch, micro_sam/v2/util.py HASHES; checkpoint manifests
# listing "156008466 bytes", "184416285", "323606802", "898083611 bytes" next to the same
# digests). Meta publishes no MD5 for them.
_SAM2_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
CHECKPOINTS.update(
    {
        "sam2_tiny": CheckpointInfo(
            model_type="sam2_tiny",
            filename="sam2.1_hiera_tiny.pt",
            url=_SAM2_URL + "sam2.1_hiera_tiny.pt",
            size_bytes=156_008_466,
            sha256="7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
            description="SAM 2.1 Hiera-T (tiny, memory propagation, 156 MB)",
        ),
        "sam2_small": CheckpointInfo(
            model_type="sam2_small",
            filename="sam2.1_hiera_small.pt",
            url=_SAM2_URL + "sam2.1_hiera_small.pt",
            size_bytes=184_416_285,
            sha256="6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38",
            description="SAM 2.1 Hiera-S (small, memory propagation, 184 MB)",
        ),
        "sam2_base_plus": CheckpointInfo(
            model_type="sam2_base_plus",
            filename="sam2.1_hiera_base_plus.pt",
            url=_SAM2_URL + "sam2.1_hiera_base_plus.pt",
            size_bytes=323_606_802,
            sha256="a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5",
            description="SAM 2.1 Hiera-B+ (base plus, memory propagation, 324 MB)",
        ),
        "sam2_large": CheckpointInfo(
            model_type="sam2_large",
            filename="sam2.1_hiera_large.pt",
            url=_SAM2_URL + "sam2.1_hiera_large.pt",
            size_bytes=898_083_611,
            sha256="2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318",
            description="SAM 2.1 Hiera-L (large, memory propagation, 898 MB)",
        ),
    }
)
MODEL_TYPE_ALIASES.update(
    {
        "sam2.1_hiera_tiny": "sam2_tiny",
        "sam2.1_hiera_small": "sam2_small",
        "sam2.1_hiera_base_plus": "sam2_base_plus",
        "sam2.1_hiera_large": "sam2_large",
        "sam2_t": "sam2_tiny",
        "sam2_s": "sam2_small",
        "sam2_b+": "sam2_base_plus",
        "sam2_l": "sam2_large",
    }
)


# --------------------------------------------------------------------------- cache


def checkpoint_info(model_type: str) -> CheckpointInfo:
    """Look up the published checkpoint of a model type.

    Parameters
    ----------
    model_type : str
        ``"vit_h"``, ``"vit_l"``, ``"vit_b"``, ``"vit_t"`` or ``"default"`` (= ``"vit_h"``).

    Returns
    -------
    CheckpointInfo

    Raises
    ------
    UnknownModelTypeError
        If no checkpoint is known for ``model_type``.
    """
    key = MODEL_TYPE_ALIASES.get(model_type, model_type)
    try:
        return CHECKPOINTS[key]
    except (KeyError, TypeError):
        known = ", ".join(sorted(CHECKPOINTS))
        raise UnknownModelTypeError(
            f"There is no published checkpoint for model type {model_type!r}; "
            f"choose one of {known}."
        ) from None


def _cached_file(info: CheckpointInfo) -> Path:
    return cache_dir(create=False) / info.filename


def _has_expected_size(path: Path, info: CheckpointInfo) -> bool:
    try:
        size = path.stat().st_size
    except OSError:
        return False
    if not path.is_file():
        return False
    if info.size_bytes is None:
        return size > 0
    return size == info.size_bytes


def is_cached(model_type: str) -> bool:
    """Whether the files of ``model_type`` are in the cache with the right size.

    For a model with a :attr:`~CheckpointInfo.decoder`, both files must be there.

    Parameters
    ----------
    model_type : str
        A key of :data:`CHECKPOINTS` (or an alias such as ``"default"``).

    Returns
    -------
    bool
    """
    info = checkpoint_info(model_type)
    return all(_has_expected_size(_cached_file(f), f) for f in _files_of(info))


def _files_of(info: CheckpointInfo) -> list[CheckpointInfo]:
    return [info] if info.decoder is None else [info, info.decoder]


def models_with_decoder() -> list[str]:
    """The names in :data:`CHECKPOINTS` whose models come with an instance decoder (AIS)."""
    return [name for name, info in CHECKPOINTS.items() if info.decoder is not None]


def discard_cached(model_type: str, *, decoder: bool = False) -> bool:
    """Delete the cached file of ``model_type`` (its decoder file with ``decoder``).

    For a cached file that turned out to be damaged: the next use downloads it
    again. Returns whether a file was deleted.
    """
    info = checkpoint_info(model_type)
    target = info.decoder if decoder else info
    if target is None:
        return False
    path = _cached_file(target)
    try:
        path.unlink()
    except OSError:
        return False
    return True


def checkpoint_path(
    model_type: str,
    *,
    download: bool = True,
    progress: bool = True,
    progress_callback: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> Path:
    """Path of the cached checkpoint of ``model_type``, downloading it if needed.

    A cached file whose byte size differs from the published size (for example
    a truncated copy) is never used: it is downloaded again, or reported.
    The hash of a cached file is checked when it is downloaded, not on every
    call, so that loading stays fast.

    Parameters
    ----------
    model_type : str
        A key of :data:`CHECKPOINTS` (or an alias such as ``"default"``).
    download : bool, optional
        Download the file if it is not cached. If ``False`` a missing file is an error.
    progress : bool, optional
        Show a text progress bar on stderr while downloading.
    progress_callback : callable, optional
        called with :class:`~napari_sam.runtime.progress.Progress` events, see :func:`download`.
    should_cancel : callable, optional
        ``should_cancel() -> bool``, see :func:`download`.

    Returns
    -------
    pathlib.Path
        The checkpoint file inside :func:`cache_dir`.

    Raises
    ------
    UnknownModelTypeError
        If no checkpoint is known for ``model_type``.
    WeightsDownloadError
        If the file is missing (or has the wrong size) and cannot or may not be
        downloaded; the message says where to put a manually downloaded copy.
    """
    info = checkpoint_info(model_type)
    return _fetch(
        info,
        download=download,
        progress=progress,
        progress_callback=progress_callback,
        should_cancel=should_cancel,
    )


def decoder_path(
    model_type: str,
    *,
    download: bool = True,
    progress: bool = True,
    progress_callback: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> Path | None:
    """Path of the cached instance decoder of ``model_type``, downloading it if needed.

    Like :func:`checkpoint_path`, for the :attr:`~CheckpointInfo.decoder` file;
    ``None`` for a model published without a decoder.

    Raises
    ------
    UnknownModelTypeError, WeightsDownloadError, Cancelled
    """
    info = checkpoint_info(model_type).decoder
    if info is None:
        return None
    return _fetch(
        info,
        download=download,
        progress=progress,
        progress_callback=progress_callback,
        should_cancel=should_cancel,
    )


def _fetch(
    info: CheckpointInfo,
    *,
    download: bool,
    progress: bool,
    progress_callback: ProgressCallback | None,
    should_cancel: CancelCheck | None,
) -> Path:
    dest = _cached_file(info)
    if _has_expected_size(dest, info):
        return dest
    if not download:
        if dest.exists():
            size = dest.stat().st_size
            raise WeightsDownloadError(
                f"The cached file {dest} has {size} bytes instead of {info.size_bytes} "
                f"(an incomplete download?); delete it, or replace it with the file from "
                f"{info.url}."
            )
        what = "decoder" if info.filename.endswith("_decoder.pt") else "weights"
        raise WeightsDownloadError(
            f"The {info.model_type} {what} are not downloaded yet; download {info.url} "
            f"and save it as {dest} (or allow napari-sam to download it)."
        )
    cache_dir(create=True)
    return _download_file(
        info.url,
        dest,
        expected_size=info.size_bytes,
        md5=info.md5,
        sha256=info.sha256,
        xxh128=info.xxh128,
        progress=progress,
        progress_callback=progress_callback,
        should_cancel=should_cancel,
    )


# --------------------------------------------------------------------------- download


def _manual_hint(dest: Path) -> str:
    return f"download that file yourself (e.g. in a web browser) and save it as {dest}"


def _describe_url_error(exc: BaseException) -> str:
    if isinstance(exc, _TransferError):
        return str(exc)
    if isinstance(exc, urllib.error.HTTPError):
        return f"the server answered HTTP {exc.code} {exc.reason}".rstrip()
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, FileNotFoundError):
            return "the file does not exist"
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return "the connection timed out"
        if isinstance(reason, socket.gaierror):
            return "the server name could not be resolved (no internet connection?)"
        if isinstance(reason, ConnectionRefusedError):
            return "the connection was refused (no internet connection or a firewall?)"
        if isinstance(reason, OSError):
            return f"the server could not be reached ({reason.strerror or reason})"
        return f"the server could not be reached ({reason})"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "the connection timed out"
    if isinstance(exc, http.client.IncompleteRead):
        return "the connection broke off before the whole file arrived"
    if isinstance(exc, (ConnectionError, http.client.HTTPException)):
        return f"the connection broke off ({exc})"
    if isinstance(exc, OSError):
        return f"a file or network error occurred ({exc.strerror or exc})"
    return f"an unexpected error occurred ({type(exc).__name__}: {exc})"


def _remove_quietly(path: Path | None) -> None:
    if path is None:
        return
    with contextlib.suppress(OSError):
        path.unlink()


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    expected_size: int | None = None,
    md5: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    xxh128: str | None = None,
    progress_callback: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download ``url`` to ``dest``, verify it, and only then put it in place.

    The data is streamed into a temporary file next to ``dest``
    (``<dest name>.part-<random>``). When all bytes have arrived, the size and
    the given hashes are checked, and the temporary file is renamed to
    ``dest`` in one step (replacing an existing file). On any failure -
    network error, interruption, cancellation, Ctrl+C, size or hash mismatch -
    the temporary file is deleted, ``dest`` is left as it was, and
    :class:`~napari_sam.errors.WeightsDownloadError` is raised with a message
    that names the URL and the path where a manually downloaded copy belongs.

    Parameters
    ----------
    url : str
        ``http://``, ``https://`` or ``file://`` URL.
    dest : str or os.PathLike
        Final path of the file. Its folder is created if needed.
    expected_size : int, optional
        Exact size in bytes. Checked against the server's ``Content-Length``
        before downloading and against the received data afterwards.
    md5, sha256, xxh128 : str, optional
        Expected hex digests (case does not matter; an ``"xxh128:"`` prefix, as
        micro-sam's registry writes it, is allowed). Each one given is checked.
    progress : bool, optional
        Show a ``tqdm`` progress bar on stderr.
    chunk_size : int, optional
        Bytes read per step; also how often ``should_cancel`` and
        ``progress_callback`` are called.
    progress_callback : callable, optional
        Called with a :class:`~napari_sam.runtime.progress.Progress` (bytes) after each
        step (and once before the first), ``total_bytes`` being ``None`` when
        the size is unknown. For GUI progress bars.
    should_cancel : callable, optional
        Called before each step; returning ``True`` stops the download with
        :class:`~napari_sam.errors.Cancelled`.
    timeout : float, optional
        Seconds to wait for the server before giving up.

    Returns
    -------
    pathlib.Path
        ``dest``.

    Raises
    ------
    WeightsDownloadError
        If the download fails or the file does not verify.
    Cancelled
        (a subclass) if ``should_cancel`` returned ``True`` or the user pressed Ctrl+C.
    """
    dest = Path(dest)
    md5 = None if md5 is None else md5.strip().lower()
    sha256 = None if sha256 is None else sha256.strip().lower()
    xxh128 = None if xxh128 is None else xxh128.strip().lower().removeprefix("xxh128:")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive number of bytes, not {chunk_size}.")
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https", "file"):
        raise WeightsDownloadError(
            f"Cannot download {url}: only http, https and file addresses are supported; "
            f"{_manual_hint(dest)}."
        )

    tmp: Path | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        request = urllib.request.Request(url, headers={"User-Agent": "napari-sam"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            announced = _content_length(response)
            if expected_size is not None and announced is not None and announced != expected_size:
                raise _VerificationError(
                    f"the server offers {announced} bytes but the file should have "
                    f"{expected_size} bytes (a different or changed file?)"
                )
            total = announced if announced is not None else expected_size
            fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".part-", dir=dest.parent)
            tmp = Path(tmp_name)
            with os.fdopen(fd, "wb") as out:
                done = _stream(
                    response,
                    out,
                    total=total,
                    desc=dest.name,
                    progress=progress,
                    chunk_size=chunk_size,
                    progress_callback=progress_callback,
                    should_cancel=should_cancel,
                    hashers=_hashers(md5, sha256, xxh128),
                    url=url,
                    dest=dest,
                )
                out.flush()
                os.fsync(out.fileno())
        if announced is not None and done.size < announced:
            raise _TransferError(f"the connection broke off after {done.size} of {announced} bytes")
        if expected_size is not None and done.size != expected_size:
            raise _VerificationError(
                f"only {done.size} of {expected_size} bytes arrived"
                if done.size < expected_size
                else f"{done.size} bytes arrived but the file should have {expected_size}"
            )
        for name, expected in (("MD5", md5), ("SHA-256", sha256), ("xxHash-128", xxh128)):
            if expected is None:
                continue
            actual = done.digests[name]
            if actual != expected:
                raise _VerificationError(
                    f"its {name} checksum is {actual} instead of {expected} "
                    "(the file is corrupt or not the published one)"
                )
        # mkstemp makes the file private (0600); a lab sharing one cache needs the umask's mode
        with contextlib.suppress(OSError):
            os.chmod(tmp, new_file_mode())
        os.replace(tmp, dest)
        tmp = None
        return dest
    except Cancelled:
        raise
    except _VerificationError as exc:
        raise WeightsDownloadError(
            f"The file at {url} failed verification: {exc}; it was not kept - try again, "
            f"or {_manual_hint(dest)}."
        ) from None
    except KeyboardInterrupt as exc:
        raise Cancelled(
            f"The download of {url} was interrupted and the partial file deleted; run it "
            f"again, or {_manual_hint(dest)}."
        ) from exc
    except WeightsDownloadError:
        raise
    except Exception as exc:
        if scheme == "file":
            advice = "check the path"
        elif isinstance(exc, urllib.error.HTTPError):
            advice = "try again later"
        else:
            advice = "check the internet connection and try again"
        raise WeightsDownloadError(
            f"Could not download the model weights from {url}: {_describe_url_error(exc)}; "
            f"{advice}, or {_manual_hint(dest)}."
        ) from exc
    finally:
        _remove_quietly(tmp)


# ``checkpoint_path`` and ``load_model`` have a ``download`` flag that hides the function.
_download_file = download


class _VerificationError(Exception):
    """Internal: the received data does not match what was expected."""


class _TransferError(Exception):
    """Internal: the transfer ended early; the message says how."""


@dataclass
class _Received:
    size: int
    digests: dict[str, str]


def _content_length(response: Any) -> int | None:
    value = response.headers.get("Content-Length") if response.headers else None
    if value is None:
        return None
    try:
        length = int(value)
    except (TypeError, ValueError):
        return None
    return length if length >= 0 else None


def _hashers(md5: str | None, sha256: str | None, xxh128: str | None = None) -> dict[str, Any]:
    hashers: dict[str, Any] = {}
    if md5 is not None:
        hashers["MD5"] = hashlib.md5(usedforsecurity=False)
    if sha256 is not None:
        hashers["SHA-256"] = hashlib.sha256()
    if xxh128 is not None:
        import xxhash

        hashers["xxHash-128"] = xxhash.xxh128()
    return hashers


def file_xxh128(path: str | os.PathLike[str], chunk_size: int = DEFAULT_CHUNK_SIZE) -> str:
    """Hex xxHash-128 digest of a file (micro-sam names its files by it; fast: GB/s)."""
    import xxhash

    hasher = xxhash.xxh128()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def published_decoder(path: str | os.PathLike[str]) -> CheckpointInfo | None:
    """The catalogue's decoder entry whose published file ``path`` is (by its xxHash-128), or None.

    Tells which encoder architecture a decoder file was trained with
    (:attr:`CheckpointInfo.arch`) when the file itself cannot.
    """
    decoders = [i.decoder for i in CHECKPOINTS.values() if i.decoder and i.decoder.xxh128]
    if not decoders:
        return None
    digest = file_xxh128(path)
    return next((d for d in decoders if d.xxh128 == digest), None)


def _stream(
    response: Any,
    out: Any,
    *,
    total: int | None,
    desc: str,
    progress: bool,
    chunk_size: int,
    progress_callback: ProgressCallback | None,
    should_cancel: CancelCheck | None,
    hashers: dict[str, Any],
    url: str,
    dest: Path,
) -> _Received:
    from tqdm import tqdm

    done = 0
    with tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
        leave=True,
    ) as bar:
        notify(progress_callback, 0, total, f"downloading {dest.name}", "bytes")
        while True:
            if should_cancel is not None and should_cancel():
                raise Cancelled(
                    f"The download of {url} was cancelled and the partial file deleted; "
                    f"start it again later, or {_manual_hint(dest)}."
                )
            chunk = response.read(chunk_size)
            if not chunk:
                break
            out.write(chunk)
            for hasher in hashers.values():
                hasher.update(chunk)
            done += len(chunk)
            bar.update(len(chunk))
            notify(progress_callback, done, total, f"downloading {dest.name}", "bytes")
    return _Received(size=done, digests={k: h.hexdigest() for k, h in hashers.items()})
