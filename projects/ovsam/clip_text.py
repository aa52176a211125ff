"""CLIP text towers from local files, for vocabularies (no downloads)."""
from typing import Dict, Optional

from .checkpoint import CheckpointError, load_clip_state_dict, load_state_dict_strict
from .models.clip_backbone import clip_text_tower, resolve_clip_config


def build_text_model(model_name: str = 'RN50x16',
                     model_cfg: Optional[Dict] = None,
                     checkpoint: Optional[str] = None):
    """Return ``(model, tokenizer)``: an open_clip CLIP without its image tower.

    ``checkpoint`` is an OpenAI TorchScript ``.pt``, an open_clip state dict or
    safetensors file, or a checkpoint saved by this project; None keeps random
    weights (tests only).
    """
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer
    cfg = resolve_clip_config(model_name, model_cfg)
    model = clip_text_tower(model_name, cfg)
    if checkpoint is not None:
        sd = load_clip_state_dict(checkpoint)
        sd = {k: v.float() for k, v in sd.items()
              if not k.startswith('visual.') and k not in ('input_resolution', 'context_length', 'vocab_size')}
        if not sd:
            raise CheckpointError(f'{checkpoint!r} has no text tower')
        load_state_dict_strict(model, sd, f'CLIP text tower {checkpoint!r}')
    model.eval()
    if model_cfg is None:
        tokenizer = open_clip.get_tokenizer(model_name)
    else:
        tokenizer = SimpleTokenizer(context_length=cfg['text_cfg'].get('context_length', 77))
    return model, tokenizer
