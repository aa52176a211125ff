#!/usr/bin/env python
"""The whole OV-SAM recipe at toy scale on CPU, on data generated here.

    python tools/tiny_pipeline.py [--work-dir work_dirs/tiny_pipeline] [--force]

Stages (each cached in the work dir; re-running skips finished stages):
  data   generate the shapes data set (COCO format + SA-1B layout)
  sam    stage -1: a tiny SAM trained class-agnostically (no pretrained SAM exists here)
  clip   stage 0: a tiny CLIP trained contrastively on object crops and class names
  vocab  text embeddings of the class names with the tiny CLIP (tools/gen_text_embeddings.py path)
  sam2clip  stage 1: distil the tiny SAM's image embedding into frozen CLIP + SAM2CLIP
  clip2sam  stage 2: CLIP2SAM (decoder, FPN, recognition) on the COCO-format data
  eval   held-out images, box and centre-point prompts: mIoU, accuracy, COCO mask AP
  show   a PNG of predictions with labels
"""
import argparse
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CFG_DIR = osp.join(ROOT, 'configs', 'tiny')


def log(msg):
    print(f'[tiny-pipeline] {msg}', flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--work-dir', default='work_dirs/tiny_pipeline')
    p.add_argument('--num-train', type=int, default=400)
    p.add_argument('--num-val', type=int, default=60)
    p.add_argument('--num-sa1b', type=int, default=300)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--sam-iters', type=int, default=600)
    p.add_argument('--clip-steps', type=int, default=300)
    p.add_argument('--sam2clip-iters', type=int, default=300)
    p.add_argument('--clip2sam-iters', type=int, default=800)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--force', action='store_true', help='re-run every stage')
    return p.parse_args()


class Pipeline:

    def __init__(self, args):
        self.args = args
        self.wd = osp.abspath(args.work_dir)
        self.data = osp.join(self.wd, 'data')
        self.times = {}
        os.makedirs(self.wd, exist_ok=True)

    # ------------------------------------------------------------ utilities
    def done(self, path):
        return osp.exists(path) and not self.args.force

    def config(self, name, out_name, **updates):
        """Write a copy of a tiny config with this run's paths and lengths."""
        from mmengine.config import Config
        cfg = Config.fromfile(osp.join(CFG_DIR, name))
        cfg.merge_from_dict(updates)
        path = osp.join(self.wd, 'configs', out_name)
        os.makedirs(osp.dirname(path), exist_ok=True)
        cfg.dump(path)
        return path

    def train(self, cfg_path, work_dir):
        env = dict(os.environ, OMP_NUM_THREADS=str(self.args.threads), PYTHONUNBUFFERED='1')
        cmd = [sys.executable, osp.join(ROOT, 'tools', 'train.py'), cfg_path, '--work-dir', work_dir]
        with open(osp.join(self.wd, 'train_logs.txt'), 'a') as logf:
            logf.write(f'\n$ {" ".join(cmd)}\n')
            logf.flush()
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
            for line in proc.stdout:
                logf.write(line)
                if 'Iter(train)' in line or 'Iter(val)' in line and 'prompt/' in line:
                    log('  ' + line.split(' - mmengine - INFO - ')[-1].strip()[:160])
                elif 'Error' in line or 'Traceback' in line:
                    log('  ' + line.rstrip())
            if proc.wait() != 0:
                raise SystemExit(f'training failed: {" ".join(cmd)} (log: {osp.join(self.wd, "train_logs.txt")})')

    def stage(self, name, fn):
        t0 = time.time()
        log(f'stage {name} ...')
        fn()
        self.times[name] = round(time.time() - t0, 1)
        log(f'stage {name} done in {self.times[name]:.0f} s')

    def data_paths(self):
        return {
            'train_dataloader.dataset.data_root': self.data + '/',
            'val_dataloader.dataset.data_root': self.data + '/',
            'test_dataloader.dataset.data_root': self.data + '/',
        }

    def schedule(self, iters, warmup):
        warmup = min(warmup, max(iters // 4, 1))
        return {
            'train_cfg.max_iters': iters,
            'train_cfg.val_interval': iters + 1,
            'param_scheduler': [
                dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=warmup),
                dict(type='CosineAnnealingLR', by_epoch=False, begin=warmup, end=iters, eta_min_ratio=0.01),
            ],
            'default_hooks.checkpoint.interval': iters,
            'default_hooks.logger.interval': max(iters // 6, 10),
        }

    # ------------------------------------------------------------ stages
    def run_data(self):
        if self.done(osp.join(self.data, 'annotations', 'instances_val.json')):
            return log('  cached')
        from ovsam.datasets import generate_shapes_dataset
        info = generate_shapes_dataset(self.data, num_train=self.args.num_train, num_val=self.args.num_val,
                                       num_sa1b=self.args.num_sa1b, seed=self.args.seed)
        log(f"  train {info['train']['num_images']} images / {info['train']['num_instances']} objects, "
            f"val {info['val']['num_images']} / {info['val']['num_instances']}, sa1b {info['sa1b']['num_images']}")

    @property
    def sam_ckpt(self):
        return osp.join(self.wd, 'sam', 'sam_tiny.pth')

    def run_sam(self):
        if self.done(self.sam_ckpt):
            return log('  cached')
        import torch
        it = self.args.sam_iters
        cfg = self.config('sam_tiny_shapes.py', 'sam_tiny_shapes.py', **self.data_paths(), **self.schedule(it, 50))
        wd = osp.join(self.wd, 'sam')
        self.train(cfg, wd)
        # Export in SAM's release layout (a plain state dict).
        from ovsam.checkpoint import safe_load, unwrap_state_dict
        sd = unwrap_state_dict(safe_load(osp.join(wd, f'iter_{it}.pth')))
        torch.save(dict(sd), self.sam_ckpt)

    @property
    def clip_ckpt(self):
        return osp.join(self.wd, 'clip', 'tiny_clip.pt')

    def run_clip(self):
        if self.done(self.clip_ckpt):
            return log('  cached')
        from mmengine.config import Config
        from ovsam.training import train_clip_on_crops
        cfg = Config.fromfile(osp.join(ROOT, 'configs', '_base_', 'models', 'ovsam_tiny.py'))
        res = train_clip_on_crops(cfg.tiny_clip_cfg.to_dict(), osp.join(self.data, 'annotations', 'instances_train.json'),
                                  osp.join(self.data, 'train'), self.clip_ckpt, steps=self.args.clip_steps,
                                  seed=self.args.seed, log_every=max(self.args.clip_steps // 5, 1))
        log(f"  tiny CLIP: loss {res['loss']:.3f}, zero-shot crop accuracy {res['crop_accuracy']:.3f} "
            f"on {res['num_crops']} training crops")

    @property
    def vocab(self):
        return osp.join(self.wd, 'clip', 'shapes_vocabulary.pth')

    def run_vocab(self):
        if self.done(self.vocab):
            return log('  cached')
        cmd = [sys.executable, osp.join(ROOT, 'tools', 'gen_text_embeddings.py'), '--classes',
               osp.join(self.data, 'annotations', 'instances_train.json'), '--clip-model', 'tiny', '--clip-cfg',
               osp.splitext(self.clip_ckpt)[0] + '.json', '--clip-checkpoint', self.clip_ckpt, '--out', self.vocab]
        subprocess.run(cmd, cwd=ROOT, check=True)

    @property
    def sam2clip_ckpt(self):
        return osp.join(self.wd, 'sam2clip', 'sam2clip_tiny.pth')

    def run_sam2clip(self):
        if self.done(self.sam2clip_ckpt):
            return log('  cached')
        it = self.args.sam2clip_iters
        cfg = self.config(
            'sam2clip_tiny_shapes.py', 'sam2clip_tiny_shapes.py', **{
                'train_dataloader.dataset.data_root': osp.join(self.data, 'sa1b'),
                'model.backbone.init_cfg.checkpoint': self.clip_ckpt,
                'model.neck.sam_checkpoint': self.sam_ckpt,
                'model.teacher.checkpoint': self.sam_ckpt,
            }, **self.schedule(it, 30))
        wd = osp.join(self.wd, 'sam2clip')
        self.train(cfg, wd)
        shutil.copy(osp.join(wd, f'iter_{it}.pth'), self.sam2clip_ckpt)

    @property
    def ovsam_ckpt(self):
        return osp.join(self.wd, 'clip2sam', 'ovsam_tiny_shapes.pth')

    def clip2sam_cfg(self, out_name='clip2sam_tiny_shapes.py', **extra):
        it = self.args.clip2sam_iters
        return self.config(
            'clip2sam_tiny_shapes.py', out_name, **self.data_paths(), **{
                'model.backbone.init_cfg.checkpoint': self.clip_ckpt,
                'model.neck.init_cfg.checkpoint': self.sam2clip_ckpt,
                'model.prompt_encoder.sam_checkpoint': self.sam_ckpt,
                'model.mask_decoder.sam_checkpoint': self.sam_ckpt,
                'model.mask_decoder.classifier.vocabulary': self.vocab,
                'val_evaluator.1.ann_file': osp.join(self.data, 'annotations', 'instances_val.json'),
                'test_evaluator.1.ann_file': osp.join(self.data, 'annotations', 'instances_val.json'),
            }, **self.schedule(it, 50), **extra)

    def run_clip2sam(self):
        if self.done(self.ovsam_ckpt):
            return log('  cached')
        cfg = self.clip2sam_cfg()
        wd = osp.join(self.wd, 'clip2sam')
        self.train(cfg, wd)
        shutil.copy(osp.join(wd, f'iter_{self.args.clip2sam_iters}.pth'), self.ovsam_ckpt)

    def run_eval(self):
        import torch
        from mmengine.config import Config
        from mmengine.runner import Runner
        torch.set_num_threads(self.args.threads)
        self.metrics = {}
        for prompt in ('box', 'point'):
            cfg = Config.fromfile(self.clip2sam_cfg(f'eval_{prompt}.py'))
            cfg.model.data_preprocessor.eval_prompt = prompt
            cfg.work_dir = osp.join(self.wd, f'eval_{prompt}')
            cfg.load_from = self.ovsam_ckpt
            cfg.default_hooks.logger.interval = 1000
            runner = Runner.from_cfg(cfg)
            m = runner.test()
            self.metrics[prompt] = {k: round(float(v), 4) for k, v in m.items()
                                    if isinstance(v, (int, float)) and ('prompt/' in k or k == 'coco/segm_mAP')}
            log(f'  {prompt} prompts: ' + ', '.join(f'{k} {v}' for k, v in self.metrics[prompt].items()))

    def run_show(self):
        import cv2
        import numpy as np
        import torch
        from mmdet.visualization import DetLocalVisualizer
        from mmengine.config import Config
        from mmengine.runner import Runner
        cfg = Config.fromfile(self.clip2sam_cfg('show.py'))
        cfg.work_dir = osp.join(self.wd, 'show')
        cfg.load_from = self.ovsam_ckpt
        cfg.test_dataloader.dataset.indices = 4
        runner = Runner.from_cfg(cfg)
        runner.load_checkpoint(self.ovsam_ckpt)
        model = runner.model.eval()
        names = [c.split(',')[0] for c in cfg.classes]
        vis = DetLocalVisualizer()
        vis.dataset_meta = dict(classes=names, palette='random')
        panels = []
        for data in runner.test_dataloader:
            with torch.no_grad():
                sample = model.test_step(data)[0]
            img = cv2.cvtColor(cv2.imread(sample.img_path), cv2.COLOR_BGR2RGB)
            vis.add_datasample('pred', img, sample, draw_gt=False, pred_score_thr=0.0, show=False)
            panels.append(vis.get_image())
        out = osp.join(self.wd, 'predictions.png')
        cv2.imwrite(out, cv2.cvtColor(np.concatenate(panels, axis=1), cv2.COLOR_RGB2BGR))
        log(f'  wrote {out}')
        self.png = out

    def run(self):
        t0 = time.time()
        for name in ('data', 'sam', 'clip', 'vocab', 'sam2clip', 'clip2sam', 'eval', 'show'):
            self.stage(name, getattr(self, f'run_{name}'))
        total = round(time.time() - t0, 1)
        summary = dict(metrics=self.metrics, seconds=self.times, total_seconds=total, png=self.png,
                       checkpoint=self.ovsam_ckpt)
        with open(osp.join(self.wd, 'summary.json'), 'w') as f:
            json.dump(summary, f, indent=1)
        log(f'finished in {total:.0f} s; summary: {osp.join(self.wd, "summary.json")}')
        for prompt, m in self.metrics.items():
            log(f"  {prompt:5s} prompts: mIoU {m.get('prompt/miou', float('nan')):.3f}  "
                f"accuracy {m.get('prompt/accuracy', float('nan')):.3f}  "
                f"mask AP {m.get('coco/segm_mAP', float('nan')):.3f}")


def main():
    args = parse_args()
    import torch
    torch.set_num_threads(args.threads)
    import ovsam  # noqa: F401
    Pipeline(args).run()


if __name__ == '__main__':
    main()
