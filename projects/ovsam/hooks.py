"""Runner hooks."""
from typing import List, Sequence, Tuple

from mmengine.hooks import Hook

from .registry import HOOKS
from .vocabulary import MAKE_COMMAND, split_synonyms


def _classifier(model):
    model = getattr(model, 'module', model)
    head = getattr(model, 'mask_decoder', None)
    return getattr(head, 'classifier', None)


def _synonyms(name) -> List[str]:
    try:
        return split_synonyms(name)
    except (TypeError, ValueError):
        return [str(name).strip().lower()]


def vocabulary_mismatches(dataset_classes: Sequence[str],
                          vocabulary: Sequence[str]) -> List[Tuple[int, str, str]]:
    """``(index, dataset class, vocabulary class)`` wherever dataset class i
    does not share its first synonym with vocabulary class i (case- and
    space-insensitive)."""
    return [(i, c, v) for i, (c, v) in enumerate(zip(dataset_classes, vocabulary))
            if _synonyms(c)[0] not in _synonyms(v)]


@HOOKS.register_module()
class CheckVocabularyHook(Hook):
    """Before training/testing, check that the model's vocabulary is the
    dataset's classes *in the dataset's order*: label i indexes text embedding
    i, so the same classes in another order would name every object wrongly
    and silently. Checks the count always, and position by position where the
    vocabulary has class names (dataset class i must share its first synonym
    with vocabulary class i)."""

    def _check(self, runner, loader_name):
        clf = _classifier(runner.model)
        loader = getattr(runner, loader_name, None)
        if clf is None or loader is None:
            return
        dataset = loader.dataset
        raw = dataset.metainfo.get('classes')
        name = type(dataset).__name__
        if raw is None:
            return
        if isinstance(raw, (str, bytes)):
            raise TypeError(f"{name}'s metainfo['classes'] is the string {raw!r}"[:200] + ', not a list of class '
                            f'names (it would be read letter by letter): set classes=({raw!r},) for one class')
        classes = list(raw)
        if not classes:
            return
        bad = [(i, c) for i, c in enumerate(classes) if not isinstance(c, str)]
        if bad:
            raise TypeError(f"{name}'s metainfo['classes'] must be class names (strings); item {bad[0][0]} is "
                            f'{type(bad[0][1]).__name__} {bad[0][1]!r}'[:200])
        firsts = [_synonyms(c)[0] for c in classes]
        dups = sorted({c for c in firsts if firsts.count(c) > 1})
        if dups:
            raise ValueError(f"{name}'s classes name {dups[:5]} more than once: label i must be one class, so "
                             'every class must appear once; fix the dataset metainfo')
        source = getattr(clf, 'vocabulary_path', None)
        source = f'the vocabulary file {source!r}' if source else 'the vocabulary'
        if clf.num_classes != len(classes):
            raise ValueError(f'the vocabulary has {clf.num_classes} classes but {type(dataset).__name__} has '
                             f'{len(classes)}: make text embeddings for this dataset with '
                             'tools/gen_text_embeddings.py')
        if clf.class_names is None:
            return
        bad = vocabulary_mismatches(classes, clf.class_names)
        if not bad:
            return
        known = {s for v in clf.class_names for s in _synonyms(v)}
        missing = [c for c in classes if _synonyms(c)[0] not in known]
        if missing:
            what = (f'dataset classes missing from the vocabulary file: {missing[:10]} '
                    f'({len(missing)} in all)')
        else:
            what = "the vocabulary holds the dataset's classes but in another order"
        raise ValueError(
            f'{source} does not match the classes of {type(dataset).__name__} position by position '
            f'(label i must be vocabulary class i): {what}. First mismatching positions '
            f'(index, dataset, vocabulary): {bad[:5]} ({len(bad)} in all). Re-create the file from the '
            "dataset's classes in the dataset's order (--classes with the dataset's name, or a .txt file "
            f'with one class per line in that order):\n  {MAKE_COMMAND}\nor, for an official bare-tensor '
            "file, give the classifier class_names in the file's order.")

    def before_train(self, runner) -> None:
        self._check(runner, 'train_dataloader')

    def before_val(self, runner) -> None:
        self._check(runner, 'val_dataloader')

    def before_test(self, runner) -> None:
        self._check(runner, 'test_dataloader')
