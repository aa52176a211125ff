#!/usr/bin/env python
"""A model you trained (config + mmengine checkpoint) -> one model folder (``ovsam.pretrained``).

Example::

    python tools/model_converters/checkpoint_to_pretrained.py configs/ovsam_coco.py \
        work_dirs/ovsam_coco/epoch_12.pth work_dirs/ovsam_coco_folder

The checkpoint is read weights-only and loaded strictly; nothing else is read
(the config's official ``model.checkpoints`` and ``init_cfg`` files are not
needed: the checkpoint holds every weight). The vocabulary is the config's
classifier file unless ``--vocabulary`` names another (``--class-names`` for the
release's bare tensors); the class split is the config's.
"""
import argparse
import os.path as osp
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', help='config file or shipped config name the checkpoint was trained with')
    p.add_argument('checkpoint', help='mmengine checkpoint (epoch_12.pth) or a plain state dict')
    p.add_argument('out_dir', help='the model folder to write')
    p.add_argument('--vocabulary', help='text-embedding file (default: the config\'s)')
    p.add_argument('--class-names', help='names of a bare embedding tensor\'s rows: coco, lvis, a .txt file')
    p.add_argument('--overwrite', action='store_true', help='replace an existing model folder')
    return p.parse_args(argv)


def convert(args):
    import ovsam  # noqa: F401  (registers modules)
    from mmdet.registry import MODELS

    from ovsam.checkpoint import load_state_dict_strict, safe_load, unwrap_state_dict
    from ovsam.pretrained import as_config, save_pretrained
    cfg = as_config(args.config)
    cfg.model.pop('checkpoints', None)  # the trained checkpoint holds every weight
    clf = cfg.model.mask_decoder.classifier
    if args.vocabulary is not None:
        clf.vocabulary = args.vocabulary
        clf.num_classes = None
    if args.class_names is not None:
        clf.class_names = args.class_names
    if not clf.get('vocabulary'):
        raise ValueError('no vocabulary: the config names no classifier file; give --vocabulary FILE '
                         '(tools/gen_text_embeddings.py writes one)')
    model = MODELS.build(cfg.model)
    load_state_dict_strict(model, unwrap_state_dict(safe_load(args.checkpoint), repr(args.checkpoint)),
                           repr(args.checkpoint))
    save_pretrained(model.eval(), args.out_dir, config=cfg, overwrite=args.overwrite,
                    metadata=dict(converted_from=osp.basename(args.checkpoint),
                                  vocabulary=osp.basename(clf.vocabulary)))
    return model


def main(argv=None) -> int:
    args = parse_args(argv)
    from ovsam.checkpoint import CheckpointError
    try:
        model = convert(args)
    except (CheckpointError, ValueError, TypeError, OSError) as e:
        print(f'checkpoint_to_pretrained: {e}', file=sys.stderr)
        return 1
    print(f'wrote {args.out_dir}: {type(model).__name__}, {model.mask_decoder.classifier.num_classes} classes; load it '
          f'with ovsam.pretrained.from_pretrained({args.out_dir!r})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
