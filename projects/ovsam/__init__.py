"""Open-Vocabulary SAM as an MMDetection 3.x plugin.

``import ovsam`` registers every module in mmdet's registries and changes no
global state of other libraries. Weights-only checkpoint loading and atomic
checkpoint writes for mmengine's runner are an explicit opt-in: see
:mod:`ovsam.engine`.
"""
from .version import __version__
from . import datasets, engine, evaluation, hooks, models  # noqa: F401  (registers modules)

__all__ = ['__version__']
