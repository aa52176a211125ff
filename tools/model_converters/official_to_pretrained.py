#!/usr/bin/env python
"""The official OV-SAM release's files -> one model folder (``ovsam.pretrained``).

The model is assembled exactly as the README's "Official checkpoints" section
does (``model.checkpoints`` of the config, loaded strictly by
:func:`ovsam.checkpoint.load_official_ovsam`) with the vocabulary file of your
choice, then written by :func:`ovsam.pretrained.save_pretrained`. Afterwards
the folder is all you need::

    python tools/model_converters/official_to_pretrained.py work_dirs/ovsam_coco_rn50x16 \
        --config configs/eval/ovsam_rn50x16_box-prompt_coco-ov.py \
        --clip checkpoints/RN50x16.pt --sam checkpoints/sam_vit_h_4b8939.pth \
        --sam2clip checkpoints/sam2clip_vith_rn50x16.pth --clip2sam checkpoints/clip2sam_coco_rn50x16.pth \
        --vocabulary data/embeddings/rn50x16_coco.pth
    # the LVIS model with the release's bare LVIS embedding tensor (name its rows)
    python tools/model_converters/official_to_pretrained.py work_dirs/ovsam_lvis_rn50x16 \
        --config configs/eval/ovsam_rn50x16_box-prompt_lvis.py --clip2sam checkpoints/clip2sam_lvis_rn50x16.pth \
        --vocabulary checkpoints/RN50x16_LVISV1Dataset.pth --class-names lvis ...

``--config`` is a file or a shipped config name (default: the released
architecture, ``configs/_base_/models/ovsam_rn50x16.py``); its class split
(``base_classes`` / ``novel_classes``, or the LVIS frequency split, read from
its annotation file now) is saved with the vocabulary. File options override
the config's ``model.checkpoints``. ``--sam`` may be left out: the prompt
encoder is then read from the CLIP2SAM file's ``pe.*`` keys (the release stores
SAM's frozen prompt encoder there too).
"""
import argparse
import os.path as osp
import sys

DEFAULT_CONFIG = 'configs/_base_/models/ovsam_rn50x16.py'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('out_dir', help='the model folder to write')
    p.add_argument('--config', default=None,
                   help=f'config file or shipped config name (default: {DEFAULT_CONFIG})')
    p.add_argument('--clip', help='CLIP checkpoint (OpenAI RN50x16.pt or open_clip)')
    p.add_argument('--sam', help='SAM checkpoint (sam_vit_h_4b8939.pth); "none": prompt encoder from --clip2sam')
    p.add_argument('--sam2clip', help='stage-1 release (sam2clip_vith_rn50x16.pth)')
    p.add_argument('--clip2sam', help='stage-2 release (clip2sam_{coco,lvis}_rn50x16.pth)')
    p.add_argument('--vocabulary', help='text-embedding file (tools/gen_text_embeddings.py, or the release\'s)')
    p.add_argument('--class-names', help='names of a bare embedding tensor\'s rows: coco, lvis, a .txt file')
    p.add_argument('--overwrite', action='store_true', help='replace an existing model folder')
    return p.parse_args(argv)


def load_config(name):
    from ovsam.pretrained import as_config
    if name is None:
        here = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
        name = osp.join(here, DEFAULT_CONFIG)
    return as_config(name)


def convert(args):
    """Build the released model from its files and save it as one folder."""
    import torch

    import ovsam  # noqa: F401  (registers modules)
    from mmdet.registry import MODELS

    from ovsam.checkpoint import load_module_from_checkpoint
    from ovsam.pretrained import save_pretrained
    cfg = load_config(args.config)
    files = dict(cfg.model.get('checkpoints') or {})
    for key in ('clip', 'sam', 'sam2clip', 'clip2sam'):
        value = getattr(args, key)
        if value is not None:
            files[key] = None if value.lower() == 'none' else value
    missing = [k for k in ('clip', 'sam2clip', 'clip2sam') if not files.get(k)]
    if missing:
        raise ValueError(f'no file for {missing}: give --{" --".join(missing)} (the config names none)')
    cfg.model.checkpoints = {k: v for k, v in files.items() if v}
    clf = cfg.model.mask_decoder.classifier
    if args.vocabulary is not None:
        clf.vocabulary = args.vocabulary
        clf.num_classes = None  # the config's count belongs to its own vocabulary file
    if args.class_names is not None:
        clf.class_names = args.class_names
    if not clf.get('vocabulary'):
        raise ValueError('no vocabulary: give --vocabulary FILE (tools/gen_text_embeddings.py writes one; the '
                         "release's bare tensors need --class-names)")
    torch.manual_seed(0)  # nothing random survives the strict loads; fixed anyway
    model = MODELS.build(cfg.model)
    if not files.get('sam'):
        load_module_from_checkpoint(model.pe, files['clip2sam'], prefix='pe')
    sources = {k: osp.basename(v) for k, v in files.items() if v}
    if not files.get('sam'):
        sources['pe'] = f'{sources["clip2sam"]} [pe.*]'
    save_pretrained(model.eval(), args.out_dir, config=cfg, overwrite=args.overwrite,
                    metadata=dict(converted_from=sources, vocabulary=osp.basename(clf.vocabulary)))
    return model


def main(argv=None) -> int:
    args = parse_args(argv)
    from ovsam.checkpoint import CheckpointError
    try:
        model = convert(args)
    except (CheckpointError, ValueError, TypeError, OSError) as e:
        print(f'official_to_pretrained: {e}', file=sys.stderr)
        return 1
    clf = model.mask_decoder.classifier
    print(f'wrote {args.out_dir}: {type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M '
          f'parameters, {clf.num_classes} classes; load it with ovsam.pretrained.from_pretrained({args.out_dir!r})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
