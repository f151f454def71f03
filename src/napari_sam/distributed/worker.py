"""The model on a Dask worker: loaded once per worker process, kept for all its tasks.

:class:`ModelPlugin` is registered on every worker of the cluster
(``client.register_plugin``; workers that join later get it too). It loads
nothing when it arrives: the first task that needs the model loads it (in the
worker's task thread, not its event loop, so heartbeats go on during a long
load) and every later task of that worker reuses it. On a machine with
several GPUs, workers named ``0, 1, 2, ...`` (a ``LocalCluster``) each take
their own GPU; on a cluster whose jobs see one GPU each (SLURM with
``--gres=gpu:1``) every worker uses the GPU it sees.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from distributed import WorkerPlugin, get_worker

__all__ = [
    "ModelPlugin",
    "ModelSpec",
    "load_stats",
    "register_model",
    "worker_device",
    "worker_model",
]


@dataclass(frozen=True)
class ModelSpec:
    """Which model each worker loads (the arguments of :func:`napari_sam.runtime.loader.load`)."""

    model: str = "auto"
    checkpoint: str | None = None
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    decoder: str | None = None  # an AIS decoder file

    def load(self, device: str | None = None) -> Any:
        """Load the model (a :class:`~napari_sam.runtime.loader.LoadedModel`) on ``device``."""
        from napari_sam.runtime.loader import load

        return load(
            self.model,
            self.checkpoint,
            device=device or self.device,
            progress=False,
            precision=self.precision,
            compile=self.compile or None,
            decoder=self.decoder,
        )

    def plugin_name(self) -> str:
        """A name for this spec's worker plugin (one per distinct spec on a shared cluster)."""
        import hashlib
        import json

        text = json.dumps(asdict(self), sort_keys=True)
        return "napari-sam-model-" + hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def worker_device(device: str, worker_name: Any, n_gpus: int) -> str:
    """The device one worker uses: its own GPU when a machine's workers share several.

    ``"auto"`` or ``"cuda"`` with ``n_gpus > 1`` and a numeric worker name
    (a ``LocalCluster`` names its workers 0, 1, ...) -> ``"cuda:<name mod n_gpus>"``;
    anything else is returned as given.
    """
    if device in ("auto", "cuda") and n_gpus > 1:
        try:
            index = int(str(worker_name))
        except ValueError:
            return device
        return f"cuda:{index % n_gpus}"
    return device


class ModelPlugin(WorkerPlugin):
    """Keeps one loaded model per worker (see the module docstring).

    Parameters
    ----------
    spec : ModelSpec
    torch_threads : int, optional
        Threads each worker's torch uses (a ``LocalCluster`` splits the
        machine's cores between its workers); default: torch's own choice.
    cpu_bf16 : (str, dict), optional
        The client's CPU bf16 assessment
        (:func:`~napari_sam.runtime.precision.cpu_bf16_for_workers`): a worker on the same
        kind of machine adopts it before loading, so that its encoder computes as the
        client's would (same precision, same attention kernel).
    """

    def __init__(self, spec: ModelSpec, torch_threads: int | None = None,
                 cpu_bf16: tuple[str, dict] | None = None) -> None:
        self.spec = spec
        self.torch_threads = torch_threads
        self.cpu_bf16 = cpu_bf16
        self.name = spec.plugin_name()
        self.loaded: Any = None
        self.load_seconds: float | None = None
        self.device: str | None = None
        self._lock = threading.Lock()
        self._worker_name: Any = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_lock"] = None
        state["loaded"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def setup(self, worker: Any) -> None:
        self._worker_name = worker.name
        if self.torch_threads:
            import torch

            torch.set_num_threads(int(self.torch_threads))
        if self.cpu_bf16 is not None:
            from napari_sam.runtime.precision import adopt_cpu_bf16

            adopt_cpu_bf16(*self.cpu_bf16)

    def model(self) -> Any:
        """The loaded model, loading it on first use."""
        with self._lock:
            if self.loaded is None:
                import torch

                n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
                self.device = worker_device(self.spec.device, self._worker_name, n_gpus)
                t0 = time.perf_counter()
                self.loaded = self.spec.load(self.device)
                self.load_seconds = time.perf_counter() - t0
            return self.loaded


#: Models of tasks run outside a worker (tests calling task functions directly).
_LOCAL: dict[ModelSpec, ModelPlugin] = {}


def _plugin(spec: ModelSpec) -> ModelPlugin:
    try:
        worker = get_worker()
    except ValueError:  # not in a worker
        return _LOCAL.setdefault(spec, ModelPlugin(spec))
    plugin = worker.plugins.get(spec.plugin_name())
    if plugin is None:  # registered after this task started: add it here
        plugin = ModelPlugin(spec)
        plugin.setup(worker)
        worker.plugins[plugin.name] = plugin
    return plugin


def worker_model(spec: ModelSpec) -> Any:
    """The :class:`~napari_sam.runtime.loader.LoadedModel` of ``spec`` on this worker."""
    return _plugin(spec).model()


def load_stats(dask_worker: Any, name: str) -> dict[str, Any]:
    """For ``client.run``: whether and how fast this worker loaded the model, and on what."""
    plugin = dask_worker.plugins.get(name)
    if plugin is None or plugin.loaded is None:
        return {"loaded": False}
    return {"loaded": True, "seconds": plugin.load_seconds, "device": plugin.device}


def register_model(client: Any, spec: ModelSpec, torch_threads: int | None = None) -> ModelPlugin:
    """Hand ``spec``'s :class:`ModelPlugin` to every worker of ``client``'s cluster, once.

    A plugin of the same spec already registered (an earlier run on the same
    cluster) is kept: registering it again would make every worker load the
    model again.
    """
    plugin = ModelPlugin(spec, torch_threads, _cpu_bf16_for(spec))
    if not _registered(client, plugin.name):
        client.register_plugin(plugin, name=plugin.name)
    return plugin


def _cpu_bf16_for(spec: ModelSpec) -> tuple[str, dict] | None:
    """The client's CPU assessment for workers that may run ``spec`` on a CPU."""
    if spec.device not in ("auto", "cpu") or spec.precision not in ("auto", "bf16"):
        return None
    from napari_sam.runtime.precision import cpu_bf16_for_workers

    return cpu_bf16_for_workers()


def _registered(client: Any, name: str) -> bool:
    """Whether the scheduler already hands the worker plugin ``name`` to its workers."""

    def has(dask_scheduler: Any, name: str) -> bool:
        return name in getattr(dask_scheduler, "worker_plugins", {})

    try:
        return bool(client.run_on_scheduler(has, name=name))
    except Exception:  # an older scheduler: register (at worst, models load again)
        return False
