"""ovsam registers its modules in MMDetection's registries, so any mmdet
config can use them once ``ovsam`` is imported (``custom_imports``)."""
from mmdet.registry import DATASETS, HOOKS, METRICS, MODELS, TASK_UTILS, TRANSFORMS

__all__ = ['DATASETS', 'HOOKS', 'METRICS', 'MODELS', 'TASK_UTILS', 'TRANSFORMS']


def build_data_preprocessor(cfg):
    """Build a data preprocessor config in mmdet's registry.

    mmengine's ``BaseModel`` builds it in mmengine's own registry unless the
    default scope is ``mmdet``; building it here lets the models be used
    without a runner (tests, predictor) too.
    """
    if cfg is None or not isinstance(cfg, dict):
        return cfg
    cfg = dict(cfg)
    cfg.setdefault('type', 'DetDataPreprocessor')
    return MODELS.build(cfg)
