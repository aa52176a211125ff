#!/usr/bin/env python
"""Dump SAM image embeddings (the SAM2CLIP distillation targets) to disk.

    python tools/dump_sam_features.py configs/sam2clip_rn50x16_vith-distill_24e_sa1b.py \
        [--sam-checkpoint checkpoints/sam_vit_h_4b8939.pth] [--shard 0/4]

Reads the training set of the config (``SA1BDataset`` with ``feat_dir``) and the
teacher from ``sam_teacher`` in the config. Resumable: a feature already on
disk with the right shape is skipped; each file is written to a temporary name
and renamed, so an interrupted run leaves no half-written feature.
"""
import argparse
import os
import os.path as osp

import torch
from mmengine.config import Config, DictAction


def parse_args():
    p = argparse.ArgumentParser(description='Dump SAM image embeddings for SAM2CLIP distillation')
    p.add_argument('config')
    p.add_argument('--sam-checkpoint', help='override sam_teacher.checkpoint')
    p.add_argument('--shard', default='0/1', help='i/n: process every n-th image starting at i')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    return p.parse_args()


def valid_feature(path, shape):
    try:
        t = torch.load(path, map_location='cpu', weights_only=True)
        return torch.is_tensor(t) and tuple(t.shape) == tuple(shape)
    except Exception:
        return False


def main():
    args = parse_args()
    import ovsam  # noqa: F401
    from mmengine.registry import init_default_scope
    from tqdm import tqdm
    from ovsam.registry import DATASETS, MODELS, build_data_preprocessor
    cfg = Config.fromfile(args.config)
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
    i, n = (int(x) for x in args.shard.split('/'))
    size = cfg.model.neck.input_size // 16
    shape = (teacher.encoder.neck[0].out_channels, size, size)
    os.makedirs(osp.join(dataset.data_root, ds_cfg['feat_dir']), exist_ok=True)
    written = skipped = 0
    for idx in tqdm(range(i, len(dataset), n), desc='SAM features', unit='img'):
        info = dataset.get_data_info(idx)
        out = info['feat_path']
        if osp.exists(out) and valid_feature(out, shape):
            skipped += 1
            continue
        data = preprocessor(dict(inputs=[dataset[idx]['inputs']], data_samples=[dataset[idx]['data_samples']]))
        with torch.no_grad():
            feat = teacher(data['inputs'])[0].cpu()
        if tuple(feat.shape) != shape:
            raise SystemExit(f'teacher output {tuple(feat.shape)} != expected {shape}: check the input size')
        tmp = f'{out}.tmp{os.getpid()}'
        torch.save(feat.clone(), tmp)
        os.replace(tmp, out)
        written += 1
    print(f'{written} features written, {skipped} already present, in {osp.join(dataset.data_root, ds_cfg["feat_dir"])}')


if __name__ == '__main__':
    main()
