"""OV-SAM with its seen / unseen split taken from LVIS category frequencies.

The released LVIS model treats frequent + common classes as seen (``alpha``)
and rare classes as unseen (``beta``) in the open-vocabulary ensemble. Which
of the 1203 classes are rare is stated in the annotation file, so the split
is read from there (lazily, at the first prediction) instead of being pasted
into configs. Only :meth:`OVSAM.class_split` is overridden: every entry point
(``tools/test.py``, the predictor, the ONNX export, the benchmark) asks the
model for its split, so all of them follow.
"""
from typing import Sequence

from ..datasets.ann_index import labels_of_frequencies
from ..registry import MODELS
from .ovsam import OVSAM


@MODELS.register_module()
class OVSAMFrequencySplit(OVSAM):
    """:class:`OVSAM` whose ``base_classes`` / ``novel_classes`` come from an LVIS file.

    Args:
        split_ann_file: LVIS annotation file (categories with ``frequency``);
            label indices follow ``LVISV1Dataset`` (categories in file order).
        base_frequencies / novel_frequencies: default ``('f', 'c')`` / ``('r',)``.
        Other arguments: see :class:`OVSAM` (``base_classes`` and
        ``novel_classes`` must not be given).
    """

    def __init__(self,
                 split_ann_file: str,
                 base_frequencies: Sequence[str] = ('f', 'c'),
                 novel_frequencies: Sequence[str] = ('r', ),
                 **kwargs) -> None:
        if kwargs.get('base_classes') is not None or kwargs.get('novel_classes') is not None:
            raise ValueError('OVSAMFrequencySplit reads base/novel classes from split_ann_file; '
                             'do not give base_classes / novel_classes')
        super().__init__(**kwargs)
        self.split_ann_file = split_ann_file
        self.base_frequencies = tuple(base_frequencies)
        self.novel_frequencies = tuple(novel_frequencies)
        self._split_resolved = False  # read from the file at the first use

    def set_class_split(self, base_classes=None, novel_classes=None) -> None:
        """An explicit split (e.g. for another vocabulary) replaces the file's."""
        super().set_class_split(base_classes, novel_classes)
        self._split_resolved = True

    def class_split(self, num_classes: int, device=None):
        """The frequency split of ``split_ann_file`` (read once), then as :class:`OVSAM`."""
        if not self._split_resolved:
            self.set_class_split(labels_of_frequencies(self.split_ann_file, self.base_frequencies),
                                 labels_of_frequencies(self.split_ann_file, self.novel_frequencies))
        return super().class_split(num_classes, device)
