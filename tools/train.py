#!/usr/bin/env python
"""Train an ovsam model with mmengine's runner (mmdet-style entry point).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--cfg-options k=v ...]
    bash tools/dist_train.sh CONFIG NUM_PROCS [args...]     # GPU (nccl) or CPU (gloo)
"""
import argparse
import os
import os.path as osp

from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner


def parse_args():
    p = argparse.ArgumentParser(description='Train an ovsam model')
    p.add_argument('config', help='train config file path')
    p.add_argument('--work-dir', help='the dir to save logs and models')
    p.add_argument('--amp', action='store_true', help='enable automatic mixed precision')
    p.add_argument('--auto-scale-lr', action='store_true', help='scale lr by the total batch size')
    p.add_argument('--resume', nargs='?', type=str, const='auto',
                   help='resume from CKPT, or from the latest checkpoint in the work dir')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config settings, e.g. train_cfg.max_iters=100')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = p.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main():
    args = parse_args()
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.auto_scale_lr:
        cfg.setdefault('auto_scale_lr', {})['enable'] = True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    import ovsam  # noqa: F401  (registries)
    from ovsam.engine import enable_safe_mmengine_checkpoints
    enable_safe_mmengine_checkpoints()  # weights-only loading, atomic checkpoint writes
    from ovsam.utils import setup_cpu_distributed
    setup_cpu_distributed(cfg, args.launcher)

    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    runner.train()
    from ovsam.utils import teardown_distributed
    teardown_distributed()


if __name__ == '__main__':
    main()
