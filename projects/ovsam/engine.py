"""The one place where ovsam changes how mmengine reads and writes checkpoints.

``import ovsam`` (and every submodule) leaves other libraries as they are:
torch's global allow-list of safe globals, mmengine's checkpoint loaders and
its file backends. Runs through mmengine's ``Runner`` opt in to two changes:

* **weights-only loading**: mmengine's local checkpoint loader (used by
  ``load_from``, ``resume`` and ``mmengine.runner.load_checkpoint``) becomes
  :func:`ovsam.checkpoint.safe_load`. mmengine 0.10.7 calls ``torch.load``
  without ``weights_only``; on torch >= 2.6 that refuses the few objects
  mmengine itself stores (message hub, numpy scalars), so resuming fails.
  :func:`~ovsam.checkpoint.safe_load` allows exactly those objects for its own
  call and refuses any other pickled object with a ``CheckpointError``.
* **atomic local writes**: local files written through mmengine's file
  backend (checkpoints, ``last_checkpoint``) go to a temporary name and are
  renamed, so a run killed mid-save leaves the previous checkpoint intact
  instead of a truncated file that ``--resume`` would pick up.

How to opt in:

* tools call :func:`enable_safe_mmengine_checkpoints` before building the
  runner (``tools/train.py``, ``tools/test.py``, the toy pipeline);
* configs list the hook, which applies it when the runner builds its hooks,
  i.e. before any checkpoint is loaded (all of this project's configs do,
  through ``configs/_base_/ovsam_runtime.py`` or ``tiny_runtime.py``)::

      default_hooks = dict(safe_checkpoints=dict(type='SafeCheckpointsHook'))

:func:`disable_safe_mmengine_checkpoints` restores mmengine's own loader and
backend.
"""
import os.path as osp
from typing import Optional

from mmengine.hooks import Hook

from .registry import HOOKS

__all__ = ['SafeCheckpointsHook', 'disable_safe_mmengine_checkpoints', 'enable_safe_mmengine_checkpoints']

# What enable_safe_mmengine_checkpoints replaced: (mmengine's checkpoint
# loader of the '' scheme, its 'local' file backend class); None when off.
_saved: Optional[tuple] = None


def _local_checkpoint_loader(filename, map_location):
    from .checkpoint import safe_load
    return safe_load(osp.expanduser(filename), map_location)


def _atomic_write(data: bytes, filepath: str) -> None:
    from .fileio import atomic_save_bytes
    atomic_save_bytes(filepath, data)


def _atomic_local_backend():
    from mmengine.fileio import LocalBackend

    class AtomicLocalBackend(LocalBackend):
        """mmengine's ``LocalBackend`` writing through a temporary file + rename."""

        def put(self, obj: bytes, filepath) -> None:
            _atomic_write(obj, str(filepath))

        def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
            _atomic_write(obj.encode(encoding), str(filepath))

    return AtomicLocalBackend


def _set_local_backend(backend_cls) -> None:
    """Register ``backend_cls`` as mmengine's local backend and drop cached
    instances of the previous one (``get_file_backend`` caches them)."""
    from mmengine.fileio import LocalBackend, register_backend
    from mmengine.fileio import io as mmengine_io
    register_backend('local', backend_cls, force=True, prefixes='')
    cached = mmengine_io.backend_instances
    for key in [k for k, v in cached.items() if isinstance(v, LocalBackend) and type(v) is not backend_cls]:
        del cached[key]


def enable_safe_mmengine_checkpoints() -> None:
    """Route mmengine's local checkpoint loading through
    :func:`ovsam.checkpoint.safe_load` and make its local writes atomic.

    Idempotent; :func:`disable_safe_mmengine_checkpoints` undoes it.
    """
    global _saved
    if _saved is not None:
        return
    from mmengine.fileio.backends import registry_utils
    from mmengine.runner.checkpoint import CheckpointLoader
    saved = (CheckpointLoader._schemes.get(''), registry_utils.backends['local'])
    CheckpointLoader.register_scheme(prefixes='', loader=_local_checkpoint_loader, force=True)
    _set_local_backend(_atomic_local_backend())
    _saved = saved


def disable_safe_mmengine_checkpoints() -> None:
    """Give mmengine back the loader and local backend it had before
    :func:`enable_safe_mmengine_checkpoints`."""
    global _saved
    if _saved is None:
        return
    from mmengine.runner.checkpoint import CheckpointLoader
    loader, backend = _saved
    if loader is None:
        CheckpointLoader._schemes.pop('', None)
    else:
        CheckpointLoader.register_scheme(prefixes='', loader=loader, force=True)
    _set_local_backend(backend)
    _saved = None


@HOOKS.register_module()
class SafeCheckpointsHook(Hook):
    """A config's opt-in to :func:`enable_safe_mmengine_checkpoints`.

    Applied when the hook is built (the runner builds its hooks in its
    constructor, before ``load_from`` / ``resume`` are read) and again in
    ``before_run``, which mmengine 0.10.7 calls before ``load_or_resume`` in
    ``train``, ``val`` and ``test``.
    """

    priority = 'VERY_HIGH'

    def __init__(self) -> None:
        enable_safe_mmengine_checkpoints()

    def before_run(self, runner) -> None:
        enable_safe_mmengine_checkpoints()
