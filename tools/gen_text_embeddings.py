#!/usr/bin/env python
"""Write CLIP text embeddings of a vocabulary to an explicit file.

Examples::

    # COCO's 80 classes with OpenAI's RN50x16 (downloaded by you beforehand)
    python tools/gen_text_embeddings.py --classes coco \
        --clip-model RN50x16 --clip-checkpoint checkpoints/RN50x16.pt \
        --out data/embeddings/rn50x16_coco.pth
    # any names (one class per argument; commas separate synonyms of one class)
    python tools/gen_text_embeddings.py --names "cup,mug" dog --clip-checkpoint ... --out my.pth
    # a text file with one class per line ('#' lines are comments)
    python tools/gen_text_embeddings.py --classes my_classes.txt ...

The classes are validated (no duplicates, ignoring case and spaces) and kept in
the given order: label i of a dataset must be class i of its vocabulary.

The file is padded to the longest synonym list (the released layout). For
tens of thousands of classes use ``tools/build_vocabulary.py --vocab CLASSES``:
one row per synonym, resumable after an interruption.
"""
import argparse
import json
import os.path as osp
import sys


def read_classes(spec: str):
    """Class names of ``--classes``: a built-in dataset name or a class file."""
    from ovsam.vocabulary import BUILTIN_VOCABULARIES, is_builtin, resolve_vocabulary
    if not (osp.isfile(spec) or is_builtin(spec)):
        raise SystemExit(f'--classes {spec!r}: not a file and not one of {", ".join(BUILTIN_VOCABULARIES)}')
    try:
        vocab = resolve_vocabulary(spec)
    except (ValueError, TypeError, OSError) as e:
        raise SystemExit(f'--classes {spec!r}: {e}')
    if vocab.class_names is None:
        raise SystemExit(f'--classes {spec!r} is an embedding file; give class names')
    return vocab.class_names


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a whole number') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'{text!r}: must be at least 1')
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--classes', help='coco | coco-ov | lvis | shapes | classes.txt (one class per line) | '
                                       'COCO annotations .json')
    src.add_argument('--names', nargs='+', help='class names, one per argument (commas separate synonyms)')
    p.add_argument('--clip-model', default='RN50x16', help='open_clip model name')
    p.add_argument('--clip-cfg', help='json file with a custom open_clip model config (tiny models)')
    p.add_argument('--clip-checkpoint', help='local CLIP weights (.pt TorchScript, open_clip file)')
    p.add_argument('--allow-random-weights', action='store_true',
                   help='no checkpoint: random text tower (tests only)')
    p.add_argument('--out', required=True, help='output .pth path')
    p.add_argument('--batch-size', type=positive_int, default=256, help='prompts per text-tower batch (>= 1)')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if osp.isdir(args.out):
        raise SystemExit(f'--out {args.out!r} is a directory; give a file name such as {osp.join(args.out, "vocab.pth")}')
    if not args.out.lower().endswith(('.pth', '.pt')):
        raise SystemExit(f'--out {args.out!r}: a text-embedding file must end in .pth or .pt (that is how '
                         'vocabulary specs recognise it; a .txt or .json name would be read as a class list)')
    from ovsam.vocabulary import VILD_TEMPLATES, TextEncoder, check_class_names, save_text_embeddings
    names = args.names if args.names else read_classes(args.classes)
    try:
        names = check_class_names(names)
    except (ValueError, TypeError) as e:
        raise SystemExit(str(e))
    if args.clip_checkpoint is None and not args.allow_random_weights:
        raise SystemExit('--clip-checkpoint is required (or --allow-random-weights for tests)')
    cfg = None
    if args.clip_cfg:
        try:
            with open(args.clip_cfg) as f:
                cfg = json.load(f)
        except (OSError, ValueError) as e:
            raise SystemExit(f'--clip-cfg {args.clip_cfg!r}: cannot read it as a JSON model config ({e})')
        if not isinstance(cfg, dict):
            raise SystemExit(f'--clip-cfg {args.clip_cfg!r}: a model config is a JSON object, got {type(cfg).__name__}')
    encoder = TextEncoder(args.clip_model, cfg, args.clip_checkpoint, allow_random=args.allow_random_weights,
                          batch_size=args.batch_size)
    from ovsam.checkpoint import CheckpointError
    try:
        emb = encoder.encode(names, progress=True)
    except (ValueError, CheckpointError) as e:  # a name longer than the text tower's context, a bad checkpoint
        raise SystemExit(str(e))
    save_text_embeddings(args.out, emb, names, meta=dict(clip_model=args.clip_model,
                                                         clip_checkpoint=args.clip_checkpoint,
                                                         templates=len(VILD_TEMPLATES)))
    print(f'wrote {args.out}: {emb.shape[0]} classes x {emb.shape[1]} synonyms x {emb.shape[2]} dims')


if __name__ == '__main__':
    sys.exit(main())
