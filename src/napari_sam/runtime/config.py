"""Configuration read from the environment, in one place.

=========================  ===============================================================
``NAPARI_SAM_CACHE``       folder for downloaded weights and on-disk embeddings
                           (default: the user's cache folder, see ``napari-sam info``)
``NAPARI_SAM_PRECISION``   image-encoder precision used where "auto" is asked for:
                           ``auto``, ``fp32``, ``bf16`` or ``fp16``
``NAPARI_SAM_COMPILE``     ``1``: compile the image encoder with ``torch.compile``
``NAPARI_SAM_SETTINGS``    the file the napari widgets remember their settings in
                           (default: ``settings.json`` in the user's config folder)
=========================  ===============================================================

Nothing else in the package reads environment variables. The functions read
them at each call, so a test or a long-running session can change them.
"""

from __future__ import annotations

import os
from pathlib import Path

from napari_sam.errors import WeightsDownloadError

__all__ = [
    "CACHE_ENV",
    "COMPILE_ENV",
    "PRECISION_ENV",
    "SETTINGS_ENV",
    "cache_dir",
    "cache_dir_origin",
    "compile_by_default",
    "default_precision",
    "settings_file",
]

#: Environment variable that overrides the cache folder.
CACHE_ENV = "NAPARI_SAM_CACHE"
#: Environment variable that sets the precision used for "auto".
PRECISION_ENV = "NAPARI_SAM_PRECISION"
#: Environment variable that turns ``torch.compile`` of the encoder on (``1``).
COMPILE_ENV = "NAPARI_SAM_COMPILE"
#: Environment variable that names the widgets' settings file.
SETTINGS_ENV = "NAPARI_SAM_SETTINGS"


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def cache_dir(*, create: bool = True) -> Path:
    """Folder where napari-sam keeps downloaded checkpoints (and, below it, embeddings).

    Parameters
    ----------
    create : bool, optional
        Create the folder (and its parents) if it does not exist yet.

    Returns
    -------
    pathlib.Path
        ``$NAPARI_SAM_CACHE`` if that environment variable is set and not
        empty, otherwise ``platformdirs.user_cache_dir("napari-sam")``
        (e.g. ``~/.cache/napari-sam`` on Linux).

    Raises
    ------
    WeightsDownloadError
        If the folder cannot be created.
    """
    override = _env(CACHE_ENV)
    if override:
        path = Path(override).expanduser()
    else:
        import platformdirs

        path = Path(platformdirs.user_cache_dir("napari-sam", appauthor=False))
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WeightsDownloadError(
                f"The napari-sam cache folder {path} cannot be created ({exc.strerror or exc}); "
                f"set {CACHE_ENV} to a folder you can write to."
            ) from exc
    return path


def cache_dir_origin() -> str:
    """Why the cache folder is where it is: ``"set by NAPARI_SAM_CACHE"`` or ``""``."""
    return f"set by {CACHE_ENV}" if _env(CACHE_ENV) else ""


def default_precision() -> str:
    """The precision to use where "auto" is asked for: ``$NAPARI_SAM_PRECISION`` or ``"auto"``.

    The name is returned as written; the loader checks it
    (:func:`napari_sam.model.precision.check_precision`).
    """
    return _env(PRECISION_ENV) or "auto"


def compile_by_default() -> bool:
    """Whether ``NAPARI_SAM_COMPILE=1`` asks for a compiled image encoder."""
    return _env(COMPILE_ENV) == "1"


def settings_file() -> Path:
    """The file the napari widgets remember their settings in (not created here).

    ``$NAPARI_SAM_SETTINGS`` if set and not empty, otherwise ``settings.json`` in
    ``platformdirs.user_config_dir("napari-sam")`` (e.g. ``~/.config/napari-sam``).
    """
    override = _env(SETTINGS_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("napari-sam", appauthor=False)) / "settings.json"
