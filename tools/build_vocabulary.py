#!/usr/bin/env python
"""Merge several sources' class lists into a joint vocabulary and embed it.

Examples::

    # LVIS + V3Det + ImageNet-21k: the joint vocabulary (JSON) and its embeddings
    python tools/build_vocabulary.py \
        --source lvis=lvis \
        --source v3det=data/v3det/annotations/v3det_2023_v1_train.json \
        --source in21k=data/imagenet21k/classes.txt \
        --vocab-out data/embeddings/lvis_v3det_in21k.json \
        --clip-model RN50x16 --clip-checkpoint checkpoints/RN50x16.pt \
        --out data/embeddings/rn50x16_lvis_v3det_in21k.pth
    # embed an existing joint vocabulary (or any class list) again
    python tools/build_vocabulary.py --vocab data/embeddings/lvis_v3det_in21k.json --out ... --clip-checkpoint ...

A source is ``NAME=SPEC``: a built-in vocabulary (``lvis``, ``coco``, ...), a
class file (one class per line), a COCO/LVIS annotation file (its categories)
or an ImageNet-21k list (``n01440764 tench,Tinca tinca`` per line). Merging
rules: ``ovsam.vocabulary.joint``.

Embedding is resumable: finished chunks of synonyms are written atomically to
``--work-dir`` (default: ``OUT.parts``); after an interruption the same command
continues where it stopped (chunks made for other names or another text tower
are refused). The output is written atomically, without padding (one row per
synonym, ``ovsam.vocabulary.table``), and the chunks are removed.
"""
import argparse
import json
import os.path as osp
import sys


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a whole number') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'{text!r}: must be at least 1')
    return value


def source_arg(text: str):
    name, sep, spec = text.partition('=')
    if not sep or not name.strip() or not spec.strip():
        raise argparse.ArgumentTypeError(f'{text!r}: write a source as NAME=SPEC, e.g. lvis=lvis or '
                                         'in21k=data/imagenet21k/classes.txt')
    return name.strip(), spec.strip()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--source', type=source_arg, action='append', metavar='NAME=SPEC',
                     help='a source of classes (repeat; merged in the order given)')
    src.add_argument('--vocab', help='an existing joint vocabulary .json, or any class list spec, to embed')
    p.add_argument('--vocab-out', help='write the joint vocabulary (JSON) here')
    p.add_argument('--out', help='write the text embeddings (.pth) here')
    p.add_argument('--clip-model', default='RN50x16', help='open_clip model name')
    p.add_argument('--clip-cfg', help='json file with a custom open_clip model config (tiny models)')
    p.add_argument('--clip-checkpoint', help='local CLIP weights (.pt TorchScript, open_clip file)')
    p.add_argument('--allow-random-weights', action='store_true', help='no checkpoint: random text tower (tests)')
    p.add_argument('--batch-size', type=positive_int, default=256, help='prompts per text-tower batch')
    p.add_argument('--chunk-size', type=positive_int, default=1024, help='synonyms per resumable chunk')
    p.add_argument('--work-dir', help='folder for finished chunks (default: OUT.parts)')
    p.add_argument('--half', action='store_true', help='store the embeddings as float16 (half the file)')
    p.add_argument('--keep-work-dir', action='store_true', help='keep the chunks after writing OUT')
    return p.parse_args(argv)


def load_names(args):
    """``(class names, JointVocabulary or None)`` from --source / --vocab."""
    from ovsam.vocabulary import JointVocabulary, resolve_vocabulary
    try:
        if args.source:
            names = [n for n, _ in args.source]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise SystemExit(f'--source names {dup} are given twice; every source needs its own name')
            joint = JointVocabulary.build(dict(args.source))
            return joint.class_names, joint
        if args.vocab.lower().endswith('.json') and osp.isfile(args.vocab):
            with open(args.vocab, encoding='utf-8') as f:
                data = json.load(f)
            if isinstance(data, dict) and 'sources' in data:
                joint = JointVocabulary.from_dict(data, repr(args.vocab))
                return joint.class_names, joint
        vocab = resolve_vocabulary(args.vocab)
        if vocab.class_names is None:
            raise SystemExit(f'--vocab {args.vocab!r} is an embedding file; give class names')
        return vocab.class_names, None
    except (ValueError, TypeError, OSError) as e:
        raise SystemExit(str(e))


def main(argv=None, on_chunk=None):
    args = parse_args(argv)
    if args.out is None and args.vocab_out is None:
        raise SystemExit('nothing to write: give --out (embeddings) and/or --vocab-out (joint vocabulary)')
    if args.out is not None and not args.out.lower().endswith(('.pth', '.pt')):
        raise SystemExit(f'--out {args.out!r}: a text-embedding file ends in .pth or .pt')
    if args.vocab_out is not None and not args.vocab_out.lower().endswith('.json'):
        raise SystemExit(f'--vocab-out {args.vocab_out!r}: the joint vocabulary is a .json file')
    if args.out is not None and args.clip_checkpoint is None and not args.allow_random_weights:
        raise SystemExit('--clip-checkpoint is required to embed (or --allow-random-weights for tests)')
    names, joint = load_names(args)
    if joint is not None:
        srcs = ', '.join(f'{k} {len(s.class_names)}' for k, s in joint.sources.items())
        print(f'joint vocabulary: {joint.num_classes} classes from {srcs} ({len(joint.conflicts)} merge conflicts '
              'resolved; see "conflicts" in the JSON)')
        if args.vocab_out:
            joint.dump_json(args.vocab_out)
            print(f'wrote {args.vocab_out}')
    if args.out is None:
        return 0
    cfg = None
    if args.clip_cfg:
        try:
            with open(args.clip_cfg) as f:
                cfg = json.load(f)
        except (OSError, ValueError) as e:
            raise SystemExit(f'--clip-cfg {args.clip_cfg!r}: cannot read it as a JSON model config ({e})')
    from ovsam.checkpoint import CheckpointError
    from ovsam.vocabulary import TextEncoder, save_text_embeddings
    from ovsam.vocabulary.resumable import clear_work_dir, embed_resumable, synonym_table, unique_synonyms
    import torch
    encoder = TextEncoder(args.clip_model, cfg, args.clip_checkpoint, allow_random=args.allow_random_weights,
                          batch_size=args.batch_size)
    synonyms = unique_synonyms(names)
    work_dir = args.work_dir or args.out + '.parts'
    print(f'{len(names)} classes, {len(synonyms)} distinct synonyms; chunks in {work_dir}')
    try:
        emb = embed_resumable(encoder, synonyms, work_dir, args.chunk_size, progress=True, on_chunk=on_chunk)
    except (ValueError, CheckpointError, NotADirectoryError) as e:
        raise SystemExit(str(e))
    table = synonym_table(names, synonyms, emb)
    meta = dict(clip_model=args.clip_model, clip_checkpoint=args.clip_checkpoint, identity=encoder.identity())
    save_text_embeddings(args.out, table, names, meta=meta, dtype=torch.float16 if args.half else None)
    if not args.keep_work_dir:
        clear_work_dir(work_dir)
    print(f'wrote {args.out}: {table.num_classes} classes, {table.num_rows} synonym rows x {table.dim} dims '
          f'(padded, the released layout would hold {table.padded_size()} rows)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
