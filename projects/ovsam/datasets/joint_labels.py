"""Labels of one co-training source mapped into the joint vocabulary.

Co-training (``docs/large_vocabulary.md``) scores every instance against one
label space: the joint vocabulary of all sources
(:class:`ovsam.vocabulary.joint.JointVocabulary`, made by
``tools/build_vocabulary.py``). A source dataset loads its annotations with its
own classes, then :class:`JointLabelsMixin` maps each label to its joint id and
reports the joint classes as its ``metainfo['classes']``: every source of a
``ConcatDataset`` then has the same metainfo (mmengine requires it), and
``CheckVocabularyHook`` compares the joint classes with the classifier's
vocabulary, which is the joint vocabulary's text embeddings.
"""
from typing import List, Optional, Sequence

import numpy as np


class JointLabelsMixin:
    """Mix into an mmengine ``BaseDataset`` subclass *before* it.

    Args (keywords of the dataset):
        joint_vocabulary: path of a joint vocabulary JSON, or None (labels stay
            the source's own).
        source: the source's name in that vocabulary (required with it).

    The subclass calls :meth:`_init_joint` before ``super().__init__`` and
    :meth:`_to_joint` on each loaded label list; :meth:`_source_class_names`
    is what the dataset's own labels index.
    """

    def _init_joint(self, joint_vocabulary: Optional[str], source: Optional[str]) -> None:
        self.joint_vocabulary_file = joint_vocabulary
        self.source = source
        self.joint = None
        self._joint_ids = None
        if joint_vocabulary is None:
            if source is not None:
                raise ValueError(f'source={source!r} needs joint_vocabulary=PATH (the JSON written by '
                                 'tools/build_vocabulary.py)')
            return
        if not source:
            raise ValueError('joint_vocabulary needs source=NAME: the name this dataset has in the joint '
                             'vocabulary (tools/build_vocabulary.py --source NAME=SPEC)')
        from ..vocabulary.joint import JointVocabulary
        self.joint = JointVocabulary.load(joint_vocabulary)
        if source not in self.joint.sources:
            raise ValueError(f'source {source!r} is not in the joint vocabulary {joint_vocabulary!r} (it has '
                             f'{list(self.joint.sources)}); rebuild it with tools/build_vocabulary.py '
                             f'--source {source}=SPEC ...')
        self._joint_ids = self.joint.source_ids(source)

    @property
    def source_classes(self) -> Optional[List[str]]:
        """The classes the source's own labels index (the joint vocabulary's record)."""
        return None if self.joint is None else list(self.joint.sources[self.source].class_names)

    def _check_source_classes(self, names: Sequence[str], where: str) -> None:
        """The dataset's own classes must be the ones the joint vocabulary was
        built from, in the same order (label i -> joint id of class i)."""
        if self.joint is None:
            return
        from ..vocabulary.names import split_synonyms
        recorded = self.source_classes
        if len(names) != len(recorded):
            raise ValueError(f'{where} has {len(names)} classes but source {self.source!r} of the joint vocabulary '
                             f'{self.joint_vocabulary_file!r} has {len(recorded)}; rebuild the joint vocabulary '
                             'from this data (tools/build_vocabulary.py)')
        bad = [(i, a, b) for i, (a, b) in enumerate(zip(names, recorded))
               if split_synonyms(a)[:1] != split_synonyms(b)[:1]]
        if bad:
            shown = ', '.join(f'label {i}: {a!r} vs {b!r}' for i, a, b in bad[:3])
            raise ValueError(f'{where}: {len(bad)} classes differ from source {self.source!r} of the joint '
                             f'vocabulary {self.joint_vocabulary_file!r} ({shown}); the label order must be the '
                             'one the vocabulary was built from')

    def _to_joint(self, labels: np.ndarray) -> np.ndarray:
        """Source label ids -> joint ids (unchanged without a joint vocabulary)."""
        if self._joint_ids is None:
            return labels
        return self._joint_ids[np.asarray(labels, dtype=np.int64)]

    def _use_joint_metainfo(self) -> None:
        """The dataset's label space becomes the joint one: ``classes`` only
        (source-specific keys such as a palette would make the sources'
        metainfo differ, which mmengine's ``ConcatDataset`` refuses)."""
        if self.joint is not None:
            self._metainfo = dict(classes=tuple(self.joint.class_names))
