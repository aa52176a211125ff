"""Vocabularies: the one home for class names and their CLIP text embeddings.

- :mod:`.names`: the synonym syntax (one class per list item / line; commas
  inside a class separate synonyms), validation, built-in vocabularies and the
  spec parser :func:`resolve_vocabulary`.
- :mod:`.files`: the text-embedding file writer and loader (this project's
  dict files and the official release's bare tensors).
- :mod:`.encoder`: the recipe (ViLD templates, synonym averaging) and the
  cached :class:`TextEncoder`.
- :mod:`.table`: :class:`SynonymTable`, embeddings without padding (large vocabularies).
- :mod:`.joint`: the joint vocabulary of several sources (co-training).
- :mod:`.resumable`: chunked, resumable embedding of tens of thousands of names.
"""
from .encoder import (NO_TEXT_WEIGHTS, VILD_TEMPLATES, TextEncoder, build_text_model, embed_synonyms,
                      encode_class_names, pad_synonyms)
from .files import load_text_embeddings, save_text_embeddings
from .joint import JointVocabulary, SourceClasses, source_classes
from .table import SynonymTable
from .names import (BUILTIN_VOCABULARIES, MAKE_COMMAND, Vocabulary, builtin_class_names, check_class_names,
                    class_key, is_builtin, match_class, parse_class_lines, read_class_file, resolve_vocabulary,
                    short_name, split_synonyms, vocabulary_hash)

__all__ = [
    'BUILTIN_VOCABULARIES', 'JointVocabulary', 'MAKE_COMMAND', 'NO_TEXT_WEIGHTS', 'SourceClasses', 'SynonymTable',
    'TextEncoder', 'VILD_TEMPLATES', 'Vocabulary', 'build_text_model', 'builtin_class_names', 'check_class_names',
    'class_key', 'embed_synonyms', 'encode_class_names', 'is_builtin', 'load_text_embeddings', 'match_class',
    'pad_synonyms', 'parse_class_lines', 'read_class_file', 'resolve_vocabulary', 'save_text_embeddings',
    'short_name', 'source_classes', 'split_synonyms', 'vocabulary_hash'
]
