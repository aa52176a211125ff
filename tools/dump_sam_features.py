#!/usr/bin/env python
"""Dump SAM image embeddings (the SAM2CLIP distillation targets) to disk.

    python tools/dump_sam_features.py configs/sam2clip_rn50x16_vith-distill_24e_sa1b.py \
        [--sam-checkpoint checkpoints/sam_vit_h_4b8939.pth] [--shard 0/4]

Reads the training set of the config (``SA1BDataset`` with ``feat_dir``) and the
teacher from ``sam_teacher`` in the config. Resumable: a feature already on
disk with the right shape is skipped; each file is written atomically
(:mod:`ovsam.fileio`), so an interrupted run leaves no half-written feature.
Features mirror the split list: ``sub/sa_1.jpg`` -> ``<feat_dir>/sub/sa_1.pth``;
entries outside the image folder (``..``, absolute paths) are refused.
"""
import argparse
import os
import os.path as osp

import torch
from mmengine.config import Config, DictAction


def shard_arg(text: str):
    """``'i/n'`` -> ``(i, n)`` with ``n >= 1`` and ``0 <= i < n``."""
    parts = text.split('/')
    try:
        if len(parts) != 2:
            raise ValueError
        i, n = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not i/n with whole numbers (e.g. 0/4)') from None
    if n < 1:
        raise argparse.ArgumentTypeError(f'{text!r}: the number of shards n must be at least 1 (e.g. 0/1)')
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f'{text!r}: the shard index i must be in 0..{n - 1} for {n} shards')
    return i, n


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Dump SAM image embeddings for SAM2CLIP distillation')
    p.add_argument('config')
    p.add_argument('--sam-checkpoint', help='override sam_teacher.checkpoint')
    p.add_argument('--shard', default=(0, 1), type=shard_arg,
                   help='i/n: process every n-th image starting at i (0 <= i < n)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    return p.parse_args(argv)


def valid_feature(path, shape):
    try:
        t = torch.load(path, map_location='cpu', weights_only=True)
        return torch.is_tensor(t) and tuple(t.shape) == tuple(shape) and bool(torch.isfinite(t).all())
    except Exception:
        return False


def feature_path_inside(path: str, folder: str) -> str:
    """``path`` if it lies inside ``folder`` (symbolic links resolved), else an error."""
    real_dir = osp.realpath(folder)
    real = osp.realpath(path)
    if osp.commonpath([real, real_dir]) != real_dir or real == real_dir:
        raise SystemExit(f'refusing to write {path!r}: it resolves to {real!r}, outside the feature folder '
                         f'{real_dir!r}; fix the split list entry (or the link that leads outside)')
    return path


def main(argv=None):
    args = parse_args(argv)
    import ovsam  # noqa: F401
    from mmengine.registry import init_default_scope
    from tqdm import tqdm
    from ovsam.fileio import atomic_save_torch
    from ovsam.registry import DATASETS, MODELS, build_data_preprocessor
    if osp.isdir(args.config):
        raise SystemExit(f'config {args.config!r} is a directory; give the .py config file')
    if not osp.isfile(args.config):
        raise SystemExit(f'config {args.config!r} does not exist')
    try:
        cfg = Config.fromfile(args.config)
    except (SyntaxError, ValueError, TypeError, ImportError, KeyError) as e:
        raise SystemExit(f'config {args.config!r} cannot be read as an mmengine config ({type(e).__name__}: {e})')
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope('mmdet')
    teacher_cfg = dict(cfg.sam_teacher)
    if args.sam_checkpoint:
        teacher_cfg['checkpoint'] = args.sam_checkpoint
    teacher = MODELS.build(teacher_cfg)
    teacher.init_weights()
    teacher.to(args.device).eval()
    ds_cfg = dict(cfg.train_dataloader.dataset)
    if not ds_cfg.get('feat_dir'):
        raise SystemExit('the dataset config has no feat_dir: set where features go')
    # Same image pipeline as training, minus the feature loading.
    ds_cfg['pipeline'] = [t for t in ds_cfg['pipeline'] if t['type'] != 'LoadTeacherFeature']
    dataset = DATASETS.build(ds_cfg)
    preprocessor = build_data_preprocessor(cfg.model.data_preprocessor).to(args.device)
    i, n = args.shard
    size = cfg.model.neck.input_size // 16
    shape = (teacher.encoder.neck[0].out_channels, size, size)
    feat_dir = osp.join(dataset.data_root, ds_cfg['feat_dir'])
    os.makedirs(feat_dir, exist_ok=True)
    written = skipped = 0
    for idx in tqdm(range(i, len(dataset), n), desc='SAM features', unit='img'):
        info = dataset.get_data_info(idx)
        out = feature_path_inside(info['feat_path'], feat_dir)
        if osp.exists(out) and valid_feature(out, shape):
            skipped += 1
            continue
        sample = dataset[idx]
        data = preprocessor(dict(inputs=[sample['inputs']], data_samples=[sample['data_samples']]))
        with torch.no_grad():
            feat = teacher(data['inputs'])[0].cpu()
        if tuple(feat.shape) != shape:
            raise SystemExit(f'teacher output {tuple(feat.shape)} != expected {shape}: check the input size')
        if not torch.isfinite(feat).all():
            raise SystemExit(f'teacher output for {info["img_path"]!r} holds NaN or Inf: check the SAM '
                             'checkpoint and the image; nothing was written for it')
        atomic_save_torch(out, feat.clone())  # creates sub-folders of entries in sub-folders
        written += 1
    print(f'{written} features written, {skipped} already present, in {feat_dir}')


if __name__ == '__main__':
    main()
