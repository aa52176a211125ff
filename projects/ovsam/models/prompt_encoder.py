"""SAM's prompt encoder, registered for mmdet configs.

A thin subclass of ``segment_anything``'s ``PromptEncoder`` (same parameters and
state-dict keys as SAM's ``prompt_encoder.*``); it adds freezing and an optional
load from a SAM checkpoint.
"""
from typing import Optional

from segment_anything.modeling import PromptEncoder

from ..registry import MODELS
from .common import FrozenMixin


@MODELS.register_module()
class SAMPromptEncoder(FrozenMixin, PromptEncoder):
    """Encode points, boxes and low-res masks into sparse/dense embeddings.

    Args:
        embed_dim: prompt embedding width (256).
        image_size: side of SAM's (square) input frame in pixels (1024).
        embedding_size: side of the image embedding (64).
        mask_in_chans: hidden channels of the mask downscaler (16).
        frozen: freeze (the paper never trains it).
        sam_checkpoint: SAM ``.pth``; ``prompt_encoder.*`` is loaded strictly.
    """

    def __init__(self,
                 embed_dim: int = 256,
                 image_size: int = 1024,
                 embedding_size: int = 64,
                 mask_in_chans: int = 16,
                 frozen: bool = True,
                 sam_checkpoint: Optional[str] = None) -> None:
        super().__init__(embed_dim=embed_dim,
                         image_embedding_size=(embedding_size, embedding_size),
                         input_image_size=(image_size, image_size),
                         mask_in_chans=mask_in_chans)
        self.sam_checkpoint = sam_checkpoint
        self._freeze(frozen)

    def init_weights(self) -> None:
        if self.sam_checkpoint is not None:
            from ..checkpoint import load_module_from_checkpoint
            load_module_from_checkpoint(self, self.sam_checkpoint, 'prompt_encoder')
        self._is_init = True
