"""Runner hooks."""
from mmengine.hooks import Hook

from .registry import HOOKS


def _classifier(model):
    model = getattr(model, 'module', model)
    head = getattr(model, 'mask_decoder', None)
    return getattr(head, 'classifier', None)


@HOOKS.register_module()
class CheckVocabularyHook(Hook):
    """Before training/testing, check that every dataset class is in the
    model's vocabulary (same count; same names where the file stores them),
    so labels never index the wrong text embedding silently."""

    def _check(self, runner, loader_name):
        clf = _classifier(runner.model)
        loader = getattr(runner, loader_name, None)
        if clf is None or loader is None:
            return
        dataset = loader.dataset
        classes = list(dataset.metainfo.get('classes', ()))
        if not classes:
            return
        if clf.num_classes != len(classes):
            raise ValueError(f'the vocabulary has {clf.num_classes} classes but {type(dataset).__name__} has '
                             f'{len(classes)}: make text embeddings for this dataset with '
                             'tools/gen_text_embeddings.py')
        if clf.class_names is not None:
            first = [n.split(',')[0].strip().lower().replace('_', ' ') for n in clf.class_names]
            missing = [c for c in classes if c.split(',')[0].strip().lower().replace('_', ' ') not in first]
            if missing:
                raise ValueError(f'dataset classes missing from the vocabulary file: {missing[:10]} '
                                 f'({len(missing)} in all); re-create it with tools/gen_text_embeddings.py')

    def before_train(self, runner) -> None:
        self._check(runner, 'train_dataloader')

    def before_val(self, runner) -> None:
        self._check(runner, 'val_dataloader')

    def before_test(self, runner) -> None:
        self._check(runner, 'test_dataloader')
