"""Open-Vocabulary SAM as an MMDetection 3.x plugin.

``import ovsam`` registers every module in mmdet's registries and makes
mmengine's checkpoint loading weights-only safe and its local writes atomic
(see :mod:`ovsam.checkpoint`).
"""
from .version import __version__
from .checkpoint import (allow_mmengine_checkpoints, make_mmengine_local_writes_atomic,
                         patch_mmengine_checkpoint_loader)

allow_mmengine_checkpoints()
patch_mmengine_checkpoint_loader()
make_mmengine_local_writes_atomic()

from . import datasets, evaluation, hooks, models  # noqa: E402,F401  (registers modules)

__all__ = ['__version__']
