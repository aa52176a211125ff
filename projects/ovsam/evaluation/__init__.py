"""Evaluation metrics of ovsam (registered in mmdet's ``METRICS``)."""
from .prompt_metric import PromptSegMetric

__all__ = ['PromptSegMetric']
