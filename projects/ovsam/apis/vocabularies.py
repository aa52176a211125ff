"""Deprecated: vocabulary specs moved to :mod:`ovsam.vocabulary`.

Kept only so that ``from .vocabularies import ...`` in modules not yet switched
keeps working; import from :mod:`ovsam.vocabulary` instead.
"""
from ..vocabulary import (BUILTIN_VOCABULARIES, builtin_class_names, match_class, read_class_file,  # noqa: F401
                          resolve_vocabulary, short_name)
