"""The model of a viewer: one choice and one copy in memory, shared by every napari-sam dock.

:func:`session_for` gives each napari viewer one :class:`ModelSession`. The
interactive and the automatic dock both read and change its
:class:`ModelRequest` (model, custom checkpoint, device, encoder precision) and
use its :class:`~napari_sam.runtime.loader.LoadedModel`, so choosing a model in
one dock chooses it in the other, and the weights are in memory once. The last
request is remembered between sessions (:mod:`napari_sam.runtime.settings`,
section ``"model"``).

Loading runs as a job (:mod:`napari_sam._widgets.jobs`) in the runner of the
dock that needs the model first; other docks wait for it (:meth:`ModelSession.ensure`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from napari.utils.events import EmitterGroup

from napari_sam._widgets.jobs import Job
from napari_sam._widgets.notices import Notice
from napari_sam.errors import CheckpointError
from napari_sam.runtime import settings as user_settings
from napari_sam.runtime.loader import LoadedModel, is_sam2, load
from napari_sam.runtime.weights import CHECKPOINTS
from napari_sam.workflows.embeddings import EmbeddingStore
from napari_sam.workflows.interactive import install_cancel_hooks

__all__ = [
    "CUSTOM_CHECKPOINT",
    "LOAD_FAILED",
    "MODEL_CHOICES",
    "PRECISIONS",
    "SAM_CHOICES",
    "ModelFactory",
    "ModelRequest",
    "ModelSession",
    "choice_label",
    "default_model_choice",
    "has_decoder",
    "load_sam",
    "model_description",
    "session_for",
]

CUSTOM_CHECKPOINT = "custom checkpoint file…"
#: An interactive dock's status line after a load ended without a model (the reason was
#: notified once, by the job runner).
LOAD_FAILED = "The model could not be loaded; press “Load model” to retry."
#: Meta's SAM and MobileSAM (no instance decoder: automatic segmentation uses the point grid).
SAM_CHOICES = ("vit_t", "vit_b", "vit_l", "vit_h")
#: Model choices offered in the widgets, in this order: "auto" (MobileSAM on a CPU, ViT-B on
#: a GPU), SAM, micro-sam's fine-tuned models (with an AIS decoder), SAM 2.1, a custom file.
MODEL_CHOICES = (
    "auto",
    *SAM_CHOICES,
    *(name for name, info in CHECKPOINTS.items() if info.decoder is not None),
    *(name for name in CHECKPOINTS if is_sam2(name)),
    CUSTOM_CHECKPOINT,
)
#: What micro-sam's model-name suffixes are for, said briefly.
_USES = {"lm": "light microscopy", "em_organelles": "EM organelles",
         "histopathology": "histopathology", "medical_imaging": "medical imaging"}
#: Image-encoder precisions (see napari_sam.model.precision).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: ``factory(choice, checkpoint, device, precision=, progress_callback=, should_cancel=)``.
ModelFactory = Callable[..., LoadedModel]


def has_decoder(choice: str) -> bool:
    """Whether the published model ``choice`` comes with an instance decoder (AIS)."""
    info = CHECKPOINTS.get(choice)
    return info is not None and info.decoder is not None


def choice_label(choice: str) -> str:
    """The short text the model list shows for ``choice``, saying whether it has an AIS
    decoder: ``"vit_b_lm: micro-sam, light microscopy, AIS decoder"``."""
    if choice == "auto":
        return "auto: vit_t on a CPU, vit_b on a GPU"
    if choice == CUSTOM_CHECKPOINT:
        return choice
    if has_decoder(choice):
        arch = CHECKPOINTS[choice].arch
        use = _USES.get(choice.removeprefix(f"{arch}_"), choice.removeprefix(f"{arch}_"))
        return f"{choice}: micro-sam, {use.replace('_', ' ')}, AIS decoder"
    if is_sam2(choice):
        return f"{choice}: SAM 2.1, no AIS decoder, no automatic run"
    return f"{choice}: SAM, no AIS decoder"


def model_description(choice: str) -> str:
    """One sentence on ``choice``: what it is and what automatic segmentation does with it."""
    if choice == "auto":
        return ("MobileSAM (vit_t) on a CPU, SAM ViT-B on a GPU; automatic segmentation uses "
                "the point grid (no AIS decoder).")
    if choice == CUSTOM_CHECKPOINT:
        return ("A SAM, MobileSAM or micro-sam checkpoint file; automatic segmentation uses its "
                "AIS decoder if the file holds one (micro-sam export), else the point grid.")
    info = CHECKPOINTS.get(choice)
    what = info.description if info is not None else choice
    if has_decoder(choice):
        return f"{what}: automatic segmentation uses AIS (or the point grid if you choose it)."
    if is_sam2(choice):
        return (f"{what}: follows clicked objects through stacks; it has no AIS decoder and "
                "cannot run the point grid (choose vit_b_lm or vit_t for automatic runs).")
    return f"{what}: no AIS decoder; automatic segmentation uses the point grid."


@dataclass(frozen=True)
class ModelRequest:
    """The model the user asked for."""

    choice: str = "auto"
    checkpoint: str = ""
    device: str = "auto"
    precision: str = "auto"

    @property
    def custom(self) -> bool:
        return self.choice == CUSTOM_CHECKPOINT

    def key(self) -> tuple[str, str, str, str]:
        """What identifies the loaded model (the checkpoint counts only for a custom file)."""
        return (self.choice, self.checkpoint.strip() if self.custom else "", self.device,
                self.precision)

    def check(self) -> None:
        """Raise :class:`CheckpointError` if a custom checkpoint has no file."""
        if self.custom and not self.checkpoint.strip():
            raise CheckpointError(
                "Choose a checkpoint file (Browse…) or pick one of the published models."
            )


def load_sam(
    choice: str,
    checkpoint: str | None,
    device: str,
    precision: str = "auto",
    progress_callback: Callable[[Any], Any] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> LoadedModel:
    """Load the model the controls describe (runs in a worker); the default factory.

    ``choice`` is one of :data:`MODEL_CHOICES`; with :data:`CUSTOM_CHECKPOINT`
    the model type is detected from the file.
    """
    if choice == CUSTOM_CHECKPOINT:
        ModelRequest(choice, checkpoint or "").check()
        return load("auto", Path(str(checkpoint)).expanduser(), device,
                    precision=precision, progress=False)
    return load(choice, None, device, precision=precision, progress=False,
                progress_callback=progress_callback, should_cancel=should_cancel)


def default_model_choice() -> str:
    """The model a first session loads: one whose weights are on disk, else the smallest.

    Among cached published SAM weights (:data:`SAM_CHOICES`), the one "auto" picks
    for this machine is preferred, then the smallest; with none cached, the smallest
    (MobileSAM, ``vit_t``), which is then downloaded.
    """
    from napari_sam.runtime.loader import resolve_model_type
    from napari_sam.runtime.weights import is_cached

    offered = [name for name in CHECKPOINTS if name in SAM_CHOICES]
    by_size = sorted(offered, key=lambda name: CHECKPOINTS[name].size_bytes or 0)
    cached = [name for name in by_size if is_cached(name)]
    preferred = resolve_model_type("auto", "auto")
    if preferred in cached:
        return preferred
    return cached[0] if cached else by_size[0]


class ModelSession:
    """The model request and the loaded model of one viewer.

    ``events``: ``request`` (the choice changed), ``model`` (a model was set,
    dropped or moved), ``loading`` (a load started or ended).
    """

    def __init__(self, factory: ModelFactory | None = None, remember: bool = True) -> None:
        self.events = EmitterGroup(source=self, request=None, model=None, loading=None)
        self.factory: ModelFactory = factory or load_sam
        self.remember = remember
        self.problem: str | None = None  # why the remembered settings were ignored
        self.request = ModelRequest()
        self.remembered = False  # a request was remembered from an earlier session
        self._said: set[str] = set()
        if remember:
            self.request = self._remembered()
        self._model: LoadedModel | None = None
        self._source: tuple | None = None  # the request key the model was loaded for
        self.failed_key: tuple | None = None
        self._loading: Job | None = None
        self._waiters: list[Callable[[LoadedModel | None], Any]] = []
        self._store: EmbeddingStore | None = None
        self._runners: weakref.WeakSet = weakref.WeakSet()

    def add_runner(self, runner: Any) -> None:
        """A dock of this viewer runs its jobs on ``runner`` (see :meth:`working`)."""
        self._runners.add(runner)

    def working(self) -> bool:
        """Whether a job runs in any napari-sam dock of this viewer (background work, such
        as encoding the slice in view ahead, then waits: it would share the CPU)."""
        return any(runner.running() for runner in list(self._runners))

    @property
    def store(self) -> EmbeddingStore:
        """The viewer's embedding store (made when first asked for), for the docks that
        share embeddings: a plane the automatic dock encoded (e.g. for AIS) is not encoded
        again by the next run, and a dock given this store shares its embeddings too.
        Keys name the weights (``model_id``), so models never mix."""
        if self._store is None:
            self._store = EmbeddingStore()
        return self._store

    def _remembered(self) -> ModelRequest:
        values, self.problem = user_settings.read_section("model")
        request, problem = user_settings.restore(ModelRequest, values)
        self.remembered = bool(values) and problem is None
        if request.choice not in MODEL_CHOICES or request.precision not in PRECISIONS:
            unknown = f"The remembered model {request.choice!r} is unknown; using the default."
            request, problem = ModelRequest(), unknown
        self.problem = self.problem or problem
        return request

    # ------------------------------------------------------------------ state
    @property
    def model(self) -> LoadedModel | None:
        """The loaded model, if it is the one requested."""
        if self._model is not None and self._source == self.request.key():
            return self._model
        return None

    @property
    def loading(self) -> bool:
        return self._loading is not None

    def once(self, text: str | None) -> bool:
        """Whether ``text`` (a settings-file problem) is new to this viewer's docks; the
        docks of a viewer say each such problem once."""
        if not text or text in self._said:
            return False
        self._said.add(text)
        return True

    def describe(self, not_loaded: str) -> str:
        """The model line: ``"Model: vit_b on cpu"``, or ``not_loaded`` (or that the last
        try to load the requested model failed)."""
        if self.loading:
            return f"Model: loading {self._loading_name}…"
        model = self.model
        if model is not None:
            return f"Model: {model.describe()}"
        if self.failed_key is not None and self.failed_key == self.request.key():
            return "Model: not loaded (the last try failed; “Load model” tries again)"
        return not_loaded

    def set_request(self, request: ModelRequest) -> str | None:
        """Ask for another model; the loaded one is dropped if it is not that one.

        Returns None, or why the request could not be remembered.
        """
        if request == self.request:
            return None
        had = self.model
        self.request = request
        self.failed_key = None
        self.events.request(value=request)
        if had is not None and self.model is None:
            self.events.model(value=None)
        if self.remember:
            return user_settings.save_section("model", asdict(request))
        return None

    def update(self, **changes: Any) -> str | None:
        """:meth:`set_request` with some fields changed."""
        return self.set_request(replace(self.request, **changes))

    def set_model(self, sam: Any, model_id: str | None = None, name: str | None = None) -> None:
        """Use a :class:`LoadedModel`, or an already built model (scripting, tests) whose
        weights ``model_id`` names, for the current request."""
        loaded = sam if isinstance(sam, LoadedModel) else LoadedModel.wrap(sam, model_id, name)
        install_cancel_hooks(loaded.sam)  # here, on the main thread, before any job uses it
        self._model, self._source = loaded, self.request.key()
        self.failed_key = None
        self.events.model(value=loaded)

    # ------------------------------------------------------------------ loading
    @property
    def _loading_name(self) -> str:
        return self.request.choice if not self.request.custom else "the checkpoint"

    def ensure(
        self,
        runner: Any,
        waiter: Callable[[LoadedModel | None], Any] | None = None,
        *,
        force: bool = False,
    ) -> LoadedModel | None:
        """The requested model if it is loaded; otherwise start loading it.

        ``waiter(model or None)`` is called when the load ends (None: it failed,
        was cancelled, or another model was chosen meanwhile). A request that
        failed before is not retried unless ``force`` (the user pressed "Load
        model"); a model that moved off its device (out of memory) is loaded
        again only with ``force``.
        """
        model = self.model
        if model is not None and not (force and model.moved):
            return model
        key = self.request.key()
        if self.failed_key == key and not force:
            return None
        if waiter is not None and waiter not in self._waiters:
            self._waiters.append(waiter)
        if self._loading is not None:
            return None
        request = self.request
        job = Job(
            "load",
            f"Loading {self._loading_name}…",
            lambda progress, should_cancel: self.factory(
                request.choice,
                request.checkpoint.strip() or None if request.custom else None,
                request.device,
                precision=request.precision,
                progress_callback=progress,
                should_cancel=should_cancel,
            ),
            done=lambda loaded: self._loaded(loaded, key),
            failed=lambda exc: self._failed(key),
            finished=self._finished,
            unit="bytes",
        )
        self._loading = job
        self.events.loading(value=True)
        runner.start(job)
        return None

    def _loaded(self, loaded: LoadedModel, key: tuple) -> None:
        self.failed_key = None
        if key == self.request.key():  # not if the user chose another model meanwhile
            install_cancel_hooks(loaded.sam)
            self._model, self._source = loaded, key
            self.events.model(value=loaded)

    def _failed(self, key: tuple) -> Notice | None:
        self.failed_key = key
        return None  # the runner shows the error's own sentence

    def _finished(self) -> None:
        self._loading = None
        waiters, self._waiters = self._waiters, []
        self.events.loading(value=False)
        for waiter in waiters:
            waiter(self.model)

    def cancel_waiters(self, owner: Any) -> None:
        """Forget the waiters bound to ``owner`` (a closed dock)."""
        self._waiters = [w for w in self._waiters if getattr(w, "__self__", None) is not owner]


_SESSIONS: weakref.WeakKeyDictionary[Any, ModelSession] = weakref.WeakKeyDictionary()


def session_for(viewer: Any, factory: ModelFactory | None = None) -> ModelSession:
    """The model session of a viewer (made by the first dock that asks).

    A ``factory`` given later replaces the session's (tests inject stand-ins).
    """
    viewer = getattr(viewer, "__wrapped__", viewer)
    session = _SESSIONS.get(viewer)
    if session is None:
        session = _SESSIONS[viewer] = ModelSession(factory)
    elif factory is not None:
        session.factory = factory
    return session
