"""Evaluation metrics of ovsam (registered in mmdet's ``METRICS``)."""
from .lvis_metric import LVISMetricNumpy2, LVISPromptSegMetric, numpy_float_alias
from .prompt_metric import PromptSegMetric

__all__ = ['PromptSegMetric', 'LVISMetricNumpy2', 'LVISPromptSegMetric', 'numpy_float_alias']
