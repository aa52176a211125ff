#!/usr/bin/env python
"""Large-vocabulary co-training at toy scale (the paper's Tables 5 and 10).

    python tools/toy/cotrain.py [--colour-mode class] [--clip-classes all] [--work-dir DIR]

Reuses the main job's data and stage -1 (tiny SAM) from its work dir when
present (``work_dirs/tiny_pipeline``; with ``--colour-mode class``,
``work_dirs/tiny_pipeline_class-colour``), else trains them there
(tools/toy/pipeline.py). Stage 0 (the frozen tiny CLIP) and stage 1
(SAM2CLIP) are trained again under ``<work dir>/cotrain`` on the same scenes
with the image-level-only classes left out: the frozen CLIP never learns those
classes, as a web-scale CLIP knows much of ImageNet-21k's long tail poorly,
which is what co-training on image labels is for (``--clip-classes all``
reuses the main job's CLIP, which has seen every class). Then, on another
generated data set whose classes come in three groups:

  segmentation   circle, square, triangle, ring, cross, ellipse: scenes with masks
  box-only       hexagon, crescent: scenes with boxes and labels only
  image-level    star, heart: single-object images with a class label only

CLIP2SAM (stage 2) is trained twice for the same number of iterations:
without co-training (the segmentation scenes only: the other classes are
unseen) and with co-training (the three sources through one joint vocabulary,
4 : 1 : 1 images per batch, ``configs/tiny/clip2sam_tiny_300it_shapes-cotrain.py``).
Both are measured on held-out scenes of all ten classes with ground-truth box
prompts: accuracy per group, CLIP2SAM's head alone and with the frozen-CLIP
ensemble, and mask IoU. Nothing is tuned on those scenes.
Outputs under ``<work dir>/cotrain/``: ``cotrain_table.md`` / ``.json``.
"""
import contextlib
import io
import json
import math
import os
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # tools/, home of the toy package

from toy.pipeline import ROOT, Pipeline, log, pipeline_arg_parser  # noqa: E402

from ovsam.fileio import atomic_save_json, atomic_save_text  # noqa: E402

COTRAIN_CFG = 'clip2sam_tiny_300it_shapes-cotrain.py'


def _detach_log_handlers(stream):
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    for h in list(logger.handlers):
        if getattr(h, 'stream', None) is stream:
            logger.removeHandler(h)


def _fmt(v):
    return 'n/a' if v is None else f'{v:.3f}'


class CoTrainDemo(Pipeline):
    """Stages: the main job's data, sam, clip, vocab, sam2clip (cached), then
    cotrain_data, joint_vocab, clip2sam_seg, clip2sam_cotrain, compare."""

    def __init__(self, args):
        super().__init__(args)
        from mmengine.config import Config
        self.cfg0 = Config.fromfile(osp.join(ROOT, 'configs', 'tiny', COTRAIN_CFG))
        self.out = osp.join(self.wd, 'cotrain')
        self.cdata = osp.join(self.out, 'data')
        os.makedirs(self.out, exist_ok=True)

    # ------------------------------------------------------------ stage 0 that has not seen some classes
    @property
    def own_clip(self) -> bool:
        """Whether this demo trains its own stage 0 (one that never saw the
        image-level-only classes) instead of reusing the main job's."""
        return self.args.clip_classes == 'no-image-level'

    @property
    def clip_ckpt(self):
        return osp.join(self.out, 'clip', 'tiny_clip.pt') if self.own_clip else super().clip_ckpt

    @property
    def vocab(self):
        return osp.join(self.out, 'clip', 'shapes_vocabulary.pth') if self.own_clip else super().vocab

    @property
    def sam2clip_ckpt(self):
        return osp.join(self.out, 'sam2clip', 'sam2clip_tiny.pth') if self.own_clip else super().sam2clip_ckpt

    def run_clip(self):
        """Stage 0 on the main job's training scenes with the image-level-only
        classes' objects unlabelled and their names absent: the tiny CLIP
        never learns them (classes a CLIP knows poorly, as much of
        ImageNet-21k's long tail), so only co-training can teach them."""
        if not self.own_clip:
            return super().run_clip()
        root = osp.join(self.out, 'clip_data')
        ann_src = osp.join(self.data, 'annotations', 'instances_train.json')
        ann = osp.join(root, 'annotations', 'instances_train.json')
        if not self.done(ann, ann_src):
            with open(ann_src) as f:
                coco = json.load(f)
            from ovsam.datasets.shapes import SHAPE_CLASSES
            names = {SHAPE_CLASSES[i] for i in self.cfg0.image_level_classes}  # the config holds class indices
            hidden = {c['id'] for c in coco['categories'] if c['name'] in names}
            if len(hidden) != len(names):
                raise ValueError(f'{ann_src} lacks the image-level-only classes {sorted(names)} to leave out')
            coco['categories'] = [c for c in coco['categories'] if c['id'] not in hidden]
            coco['annotations'] = [a for a in coco['annotations'] if a['category_id'] not in hidden]
            os.makedirs(osp.dirname(ann), exist_ok=True)
            atomic_save_json(ann, coco)
        if not osp.exists(osp.join(root, 'train')):
            os.symlink(osp.join(self.data, 'train'), osp.join(root, 'train'))
        data, self.data = self.data, root
        try:
            super().run_clip()
        finally:
            self.data = data

    # ------------------------------------------------------------ data and vocabulary
    def run_cotrain_data(self):
        a = self.args
        params = dict(num_train=a.num_train, num_val=a.num_val, seed=a.seed + 2000, colour_mode=a.colour_mode,
                      sa1b=False, cotrain=dict(box_only=list(self.cfg0.box_only_classes),
                                               image_level=list(self.cfg0.image_level_classes),
                                               num_boxes=a.num_boxes, num_image_level=a.num_image_level,
                                               image_level_diameter=[140.0, 230.0]))
        info = self.generate(self.cdata, params)
        if info is None:
            return log('  cached')
        c = info['cotrain']
        log(f"  segmentation {info['train']['num_images']} scenes / {info['train']['num_instances']} masks, "
            f"box-only {c['boxes']['num_images']} scenes / {c['boxes']['num_instances']} boxes, "
            f"image-level {c['image_level']['num_images']} images, held-out {info['val']['num_images']} scenes / "
            f"{info['val']['num_instances']} objects")

    @property
    def joint_json(self):
        return osp.join(self.cdata, 'joint_vocabulary.json')

    @property
    def joint_pth(self):
        return osp.join(self.cdata, 'joint_vocabulary.pth')

    def run_joint_vocab(self):
        ann = osp.join(self.cdata, 'annotations')
        if self.done(self.joint_pth, osp.join(ann, 'instances_val.json'), self.clip_ckpt):
            return log('  cached')
        from ovsam.vocabulary import TextEncoder, save_text_embeddings
        from ovsam.vocabulary.joint import JointVocabulary
        joint = JointVocabulary.build({'segmentation': osp.join(ann, 'instances_train.json'),
                                       'detection': osp.join(ann, 'instances_boxes.json'),
                                       'image_level': osp.join(self.cdata, 'image_level', 'classes.txt')})
        atomic_save_json(self.joint_json, joint.to_dict(), ensure_ascii=False, indent=1)  # = joint.save
        with open(osp.splitext(self.clip_ckpt)[0] + '.json') as f:  # written by the clip stage
            clip_cfg = json.load(f)
        emb = TextEncoder(clip_model='tiny', clip_model_cfg=clip_cfg,
                          clip_checkpoint=self.clip_ckpt).encode(joint.class_names)
        save_text_embeddings(self.joint_pth, emb, joint.class_names,
                             meta=dict(clip_model='tiny', clip_checkpoint=self.clip_ckpt))
        log(f'  {joint!r}; ids: ' + ', '.join(f'{k} {joint.source_ids(k).tolist()}' for k in joint.sources))

    # ------------------------------------------------------------ stage 2, twice
    def stage2_cfg(self, cotrain: bool, out_name: str):
        """The co-training config with this run's paths; without co-training,
        the same run on its segmentation source alone (batch 4 of
        segmentation scenes in both: co-training adds 1 + 1 other images)."""
        from mmengine.config import Config
        cfg = Config.fromfile(osp.join(ROOT, 'configs', 'tiny', COTRAIN_CFG))
        root = self.cdata + '/'
        sources = cfg.train_dataloader.dataset.datasets
        for src in sources:
            src.data_root = src.data_root.replace(cfg.data_root, root)
            src.joint_vocabulary = self.joint_json
        sources[2].classes = osp.join(self.cdata, 'image_level', 'classes.txt')
        cfg.val_dataloader.dataset.data_root = root
        cfg.test_dataloader.dataset.data_root = root
        m = cfg.model
        m.backbone.init_cfg.checkpoint = self.clip_ckpt
        m.neck.init_cfg.checkpoint = self.sam2clip_ckpt
        m.prompt_encoder.sam_checkpoint = self.sam_ckpt
        m.mask_decoder.sam_checkpoint = self.sam_ckpt
        m.mask_decoder.classifier.vocabulary = self.joint_pth
        seg = list(cfg.segmentation_classes)
        if not cotrain:
            cfg.train_dataloader.dataset = sources[0]
            cfg.train_dataloader.batch_size = 4
            cfg.train_dataloader.sampler = dict(type='InfiniteSampler', shuffle=True)
            # trained on the segmentation classes only: the others are unseen
            m.base_classes = seg
            m.novel_classes = sorted(set(range(10)) - set(seg))
        cfg.merge_from_dict(self.schedule(self.args.iters, 50))
        path = osp.join(self.out, 'configs', out_name)
        os.makedirs(osp.dirname(path), exist_ok=True)
        atomic_save_text(path, cfg.dump())
        return path

    def ckpt(self, kind):
        return osp.join(self.out, f'clip2sam_{kind}', f'ovsam_tiny_{kind}.pth')

    def _train_stage2(self, kind):
        cfg_file = osp.join(ROOT, 'configs', 'tiny', COTRAIN_CFG)
        if self.done(self.ckpt(kind), self.sam2clip_ckpt, self.joint_pth, cfg_file):
            return log('  cached')
        cfg = self.stage2_cfg(kind == 'cotrain', f'clip2sam_{kind}.py')
        wd = osp.join(self.out, f'clip2sam_{kind}')
        self.train(cfg, wd)
        from toy.pipeline import copy_atomic
        copy_atomic(osp.join(wd, f'iter_{self.args.iters}.pth'), self.ckpt(kind))

    def run_clip2sam_seg(self):
        self._train_stage2('seg')

    def run_clip2sam_cotrain(self):
        self._train_stage2('cotrain')

    # ------------------------------------------------------------ measure
    def run_compare(self):
        import torch
        from mmengine.config import Config
        from mmengine.runner import Runner
        torch.set_num_threads(self.args.threads)
        self.results = {}
        for kind in ('seg', 'cotrain'):
            for ensemble in (False, True):
                cfg = Config.fromfile(self.stage2_cfg(kind == 'cotrain', f'eval_{kind}.py'))
                cfg.model.use_clip_ensemble = ensemble
                cfg.model.data_preprocessor.eval_prompt = 'box'
                cfg.work_dir = osp.join(self.out, f'eval_{kind}_{"ensemble" if ensemble else "head"}')
                cfg.load_from = self.ckpt(kind)
                cfg.default_hooks.logger.interval = 1000
                logf = io.StringIO()  # mmengine's test log: kept out of the progress lines
                with contextlib.redirect_stdout(logf), contextlib.redirect_stderr(logf):
                    m = Runner.from_cfg(cfg).test()
                    _detach_log_handlers(logf)
                row = {k.split('/', 1)[1]: (None if math.isnan(float(v)) else round(float(v), 4))
                       for k, v in m.items() if k.startswith('prompt/')}
                self.results[f'{kind}/{"ensemble" if ensemble else "head"}'] = row
                log(f'  {kind:8s} {"ensemble" if ensemble else "head":9s} ' +
                    ', '.join(f'{k} {v}' for k, v in row.items()))

    def write_table(self, total):
        names = {'seg': 'without co-training (segmentation data only)',
                 'cotrain': 'with co-training (+ box-only and image-level data)'}
        saw = ('every class but the image-level-only ones' if self.own_clip else 'every class')
        lines = [f'box prompts on {self.results["seg/head"].get("num_prompts", "?")} held-out objects; '
                 f'colour mode {self.args.colour_mode!r}; the frozen tiny CLIP learned {saw}; chance accuracy 0.10',
                 '',
                 '| CLIP2SAM | recognition | acc: segmentation classes | acc: box-only classes | '
                 'acc: image-level-only classes | acc: all | mask IoU: segmentation classes |',
                 '| --- | --- | --- | --- | --- | --- | --- |']
        for kind in ('seg', 'cotrain'):
            for rec in ('head', 'ensemble'):
                r = self.results[f'{kind}/{rec}']
                lines.append(f'| {names[kind]} | {"head only" if rec == "head" else "head + frozen-CLIP ensemble"} | '
                             + ' | '.join(_fmt(r.get(k)) for k in ('acc_seg', 'acc_box', 'acc_image', 'accuracy',
                                                                 'miou_seg')) + ' |')
        table = '\n'.join(lines) + '\n'
        atomic_save_text(osp.join(self.out, 'cotrain_table.md'), table)
        atomic_save_json(osp.join(self.out, 'cotrain_table.json'),
                         dict(results=self.results, seconds=self.times, total_seconds=total,
                              colour_mode=self.args.colour_mode, clip_classes=self.args.clip_classes,
                              iters=self.args.iters), indent=1)
        print(table, flush=True)

    def run(self):
        t0 = time.time()
        for name in ('data', 'sam', 'clip', 'vocab', 'sam2clip', 'cotrain_data', 'joint_vocab', 'clip2sam_seg',
                     'clip2sam_cotrain', 'compare'):
            self.stage(name, getattr(self, f'run_{name}'))
        total = round(time.time() - t0, 1)
        self.write_table(total)
        log(f'finished in {total:.0f} s; table: {osp.join(self.out, "cotrain_table.md")}')


def main():
    p = pipeline_arg_parser(__doc__)
    p.set_defaults(work_dir=None)
    p.add_argument('--iters', type=int, default=300, help='CLIP2SAM iterations, each of the two runs')
    p.add_argument('--num-boxes', type=int, default=200, help='box-only scenes')
    p.add_argument('--num-image-level', type=int, default=100, help='single-object images per image-level class')
    p.add_argument('--clip-classes', choices=('no-image-level', 'all'), default='no-image-level',
                   help="what the frozen tiny CLIP (stage 0) learned: every class but the image-level-only ones "
                        "(their own stage 0 and SAM2CLIP under <work dir>/cotrain; the default) or every class "
                        "(the main job's stages reused)")
    args = p.parse_args()
    if args.work_dir is None:  # the main job's stages; a separate one for the other colour mode
        args.work_dir = 'work_dirs/tiny_pipeline' + ('' if args.colour_mode == 'random' else '_class-colour')
    import torch
    from ovsam.engine import enable_safe_mmengine_checkpoints
    torch.set_num_threads(args.threads)
    enable_safe_mmengine_checkpoints()
    CoTrainDemo(args).run()


if __name__ == '__main__':
    main()
