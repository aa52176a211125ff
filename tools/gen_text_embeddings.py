#!/usr/bin/env python
"""Write CLIP text embeddings of a vocabulary to an explicit file.

Examples::

    # COCO's 80 classes with OpenAI's RN50x16 (downloaded by you beforehand)
    python tools/gen_text_embeddings.py --classes coco \
        --clip-model RN50x16 --clip-checkpoint checkpoints/RN50x16.pt \
        --out data/embeddings/rn50x16_coco.pth
    # any names, or a text file with one class per line
    python tools/gen_text_embeddings.py --names "cup,mug" dog --clip-checkpoint ... --out my.pth
    python tools/gen_text_embeddings.py --classes my_classes.txt ...
"""
import argparse
import json
import os.path as osp
import sys


def read_classes(spec: str):
    """A dataset name (coco, coco-ov, lvis, shapes), a .txt (one per line) or a COCO .json."""
    if osp.isfile(spec):
        if spec.endswith('.json'):
            with open(spec) as f:
                cats = sorted(json.load(f)['categories'], key=lambda c: c['id'])
            return [c['name'] for c in cats]
        with open(spec) as f:
            return [line.strip() for line in f if line.strip()]
    name = spec.lower()
    if name == 'coco':
        from mmdet.datasets import CocoDataset
        return list(CocoDataset.METAINFO['classes'])
    if name == 'coco-ov':
        from ovsam.datasets.coco_ov import COCO_OV_CLASSES, with_synonyms
        return with_synonyms(COCO_OV_CLASSES)
    if name == 'lvis':
        from mmdet.datasets import LVISV1Dataset
        return list(LVISV1Dataset.METAINFO['classes'])
    if name == 'shapes':
        from ovsam.datasets.shapes import SHAPE_CLASSES
        return list(SHAPE_CLASSES)
    raise SystemExit(f'--classes {spec!r}: not a file and not one of coco, coco-ov, lvis, shapes')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--classes', help='coco | coco-ov | lvis | shapes | classes.txt | COCO annotations .json')
    src.add_argument('--names', nargs='+', help='class names (synonyms separated by commas)')
    p.add_argument('--clip-model', default='RN50x16', help='open_clip model name')
    p.add_argument('--clip-cfg', help='json file with a custom open_clip model config (tiny models)')
    p.add_argument('--clip-checkpoint', help='local CLIP weights (.pt TorchScript, open_clip file)')
    p.add_argument('--allow-random-weights', action='store_true',
                   help='no checkpoint: random text tower (tests only)')
    p.add_argument('--out', required=True, help='output .pth path')
    p.add_argument('--batch-size', type=int, default=256)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from ovsam.clip_text import build_text_model
    from ovsam.vocabulary import VILD_TEMPLATES, encode_class_names, save_text_embeddings
    names = args.names if args.names else read_classes(args.classes)
    if not names:
        raise SystemExit('empty vocabulary: no class names given')
    if args.clip_checkpoint is None and not args.allow_random_weights:
        raise SystemExit('--clip-checkpoint is required (or --allow-random-weights for tests)')
    cfg = None
    if args.clip_cfg:
        with open(args.clip_cfg) as f:
            cfg = json.load(f)
    model, tokenizer = build_text_model(args.clip_model, cfg, args.clip_checkpoint)
    emb = encode_class_names(model, tokenizer, names, batch_size=args.batch_size)
    save_text_embeddings(args.out, emb, names, meta=dict(clip_model=args.clip_model,
                                                         clip_checkpoint=args.clip_checkpoint,
                                                         templates=len(VILD_TEMPLATES)))
    print(f'wrote {args.out}: {emb.shape[0]} classes x {emb.shape[1]} synonyms x {emb.shape[2]} dims')


if __name__ == '__main__':
    sys.exit(main())
