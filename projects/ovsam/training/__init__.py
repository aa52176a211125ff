"""Training utilities that are not mmengine runner configs (toy CLIP pre-training)."""
from .clip_pretrain import train_clip_on_crops
from .region_pretrain import train_clip_on_regions

__all__ = ['train_clip_on_crops', 'train_clip_on_regions']
