#!/usr/bin/env python
"""Evaluate an ovsam model (mmdet-style entry point).

    python tools/test.py CONFIG CHECKPOINT [--out results.pkl] [--cfg-options k=v ...]
    bash tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCS [args...]
"""
import argparse
import os
import os.path as osp

from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner


def parse_args():
    p = argparse.ArgumentParser(description='Test (and evaluate) an ovsam model')
    p.add_argument('config', help='test config file path')
    p.add_argument('checkpoint', nargs='?', default=None,
                   help="checkpoint file; 'none' when the config assembles the weights itself")
    p.add_argument('--work-dir', help='the directory to save evaluation results')
    p.add_argument('--out', help='dump predictions to a pickle file')
    p.add_argument('--show-dir', help='directory where painted images are saved')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
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
    if args.checkpoint and args.checkpoint.lower() != 'none':
        cfg.load_from = args.checkpoint
    if args.show_dir:
        vis = cfg.default_hooks.setdefault('visualization', dict(type='DetVisualizationHook'))
        vis['draw'] = True
        vis['test_out_dir'] = args.show_dir

    import ovsam  # noqa: F401  (registries)
    from ovsam.engine import enable_safe_mmengine_checkpoints
    enable_safe_mmengine_checkpoints()  # weights-only loading, atomic checkpoint writes
    from ovsam.utils import setup_cpu_distributed
    setup_cpu_distributed(cfg, args.launcher)

    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    if cfg.get('load_from') is None:
        # mmengine only initialises weights for training; without a checkpoint
        # the config's own pretrained files (init_cfg, sam_checkpoint, ...) must
        # be loaded here, or the test would silently run random weights.
        runner.model.init_weights()
    if args.out is not None:
        from mmdet.evaluation import DumpDetResults
        if not args.out.endswith(('.pkl', '.pickle')):
            raise SystemExit('--out must be a .pkl file')
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    runner.test()
    from ovsam.utils import teardown_distributed
    teardown_distributed()


if __name__ == '__main__':
    main()
