#!/usr/bin/env python
"""Segment-everything with labels against SAM-H's automatic mask generator.

Both run on the same photo (``skimage.data.coffee()`` resized to ``--size`` x
``--size``), the same ``--points-per-side`` grid, no crops (SAM's crop-free
setting), random weights at real size (no files needed), each in a fresh
process so peak memory does not mix:

- ``ovsam``: ``predictor.set_image(photo)`` then
  ``OVSAMAutomaticMaskGenerator(predictor).generate()`` (fast paths, the image
  prepared for prompts), masks *and* labels (a ``--num-classes`` vocabulary),
  ``output_mode='coco_rle'``; its time is the sum of the two;
- ``sam``: ``segment_anything.SamAutomaticMaskGenerator`` on SAM-H
  (``sam_model_registry['vit_h']``, three masks per point as released),
  ``output_mode='coco_rle'``.

With random weights few masks pass the usual filters, so both keep every
non-empty mask (stability threshold 0, SAM's predicted-IoU threshold 0): the
most full-resolution work. Printed: the time from the photo to the
annotations (image side included, as SAM's generator embeds the image
inside ``generate``; OV-SAM's image side is also printed alone), masks made,
the process's peak RSS, and the ratio.

    python tools/analysis/benchmark_everything.py                  # 1024 px, 32 x 32, ~10 min here
    python tools/analysis/benchmark_everything.py --models ovsam --points-per-side 16
"""
import argparse
import json
import os
import os.path as osp
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

MODELS = ('ovsam', 'sam')
TARGETS = dict(time_ratio=0.2, ovsam_peak_gib=4.0)


def photo(size: int):
    import cv2
    from skimage import data
    return cv2.resize(data.coffee(), (size, size), interpolation=cv2.INTER_LINEAR)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def worker_ovsam(args) -> dict:
    import torch
    import benchmark as B
    from ovsam.apis import OVSAMAutomaticMaskGenerator, OVSAMPredictor
    bargs = B.parse_args((['--quick'] if args.quick else ['--image-size', '1024'])
                         + ['--num-classes', str(args.num_classes)])
    pred = OVSAMPredictor(B.build_ovsam(bargs), allow_random_text=True,
                          clip_model_cfg=B.ovsam_config(bargs).model.backbone.get('model_cfg'))
    gen = OVSAMAutomaticMaskGenerator(pred, points_per_side=args.points_per_side,
                                      points_per_batch=args.points_per_batch, stability_score_thresh=0.0,
                                      output_mode='coco_rle')
    img = photo(args.size)
    with torch.no_grad():
        t = time.perf_counter()
        pred.set_image(img)  # as a user does; the generator then works on the predictor's image
        image_s = time.perf_counter() - t
        t = time.perf_counter()
        anns = gen.generate()
        grid_s = time.perf_counter() - t
    return dict(generate_s=image_s + grid_s, image_s=image_s, grid_s=grid_s, masks=len(anns),
                labelled=all('label' in a for a in anns), peak_rss_gib=peak_rss_gib())


def worker_sam(args) -> dict:
    import torch
    from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
    torch.manual_seed(0)
    if args.quick:
        from segment_anything.build_sam import _build_sam
        sam = _build_sam(encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=4,
                         encoder_global_attn_indexes=[1], checkpoint=None)
    else:
        sam = sam_model_registry['vit_h'](checkpoint=None)
    gen = SamAutomaticMaskGenerator(sam.eval(), points_per_side=args.points_per_side,
                                    points_per_batch=args.points_per_batch, pred_iou_thresh=0.0,
                                    stability_score_thresh=0.0, output_mode='coco_rle')
    img = photo(args.size)
    with torch.no_grad():
        t = time.perf_counter()
        anns = gen.generate(img)
        total = time.perf_counter() - t
    return dict(generate_s=total, masks=len(anns), peak_rss_gib=peak_rss_gib())


def report_text(r: dict) -> str:
    lines = [f"segment everything: {r['size']} x {r['size']} photo, {r['points_per_side']}^2 points, no crops, "
             f"{r['threads']} threads{' [tiny models]' if r['quick'] else ''}"]
    for name in MODELS:
        m = r['models'].get(name)
        if m is None:
            continue
        if 'error' in m:
            lines.append(f'  {name:6s} FAILED: {m["error"][-300:]}')
            continue
        extra = f" (image side {m['image_s']:.1f} s)" if 'image_s' in m else ''
        lines.append(f"  {name:6s} {m['generate_s']:8.1f} s{extra}, {m['masks']} masks, peak RSS "
                     f"{m['peak_rss_gib']:.2f} GiB")
    if 'time_ratio' in r:
        ok = 'met' if r['time_ratio'] <= TARGETS['time_ratio'] else 'NOT met'
        lines.append(f"  OV-SAM / SAM-H time: {r['time_ratio']:.3f} (target <= {TARGETS['time_ratio']}: {ok})")
    return '\n'.join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--size', type=int, default=1024)
    p.add_argument('--points-per-side', type=int, default=32)
    p.add_argument('--points-per-batch', type=int, default=64)
    p.add_argument('--num-classes', type=int, default=80)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--models', default=','.join(MODELS))
    p.add_argument('--quick', action='store_true', help='tiny models (smoke test)')
    p.add_argument('--out', help='also write the figures as JSON (atomically)')
    p.add_argument('--worker', choices=MODELS, help=argparse.SUPPRESS)
    p.add_argument('--worker-out', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ('size', 'points_per_side', 'points_per_batch', 'num_classes', 'threads'):
        if getattr(args, name) < 1:
            p.error(f'--{name.replace("_", "-")} must be at least 1')
    unknown = set(args.models.split(',')) - set(MODELS)
    if unknown:
        p.error(f'--models: unknown {sorted(unknown)}; choose from {MODELS}')
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        import torch
        from ovsam.fileio import atomic_save_json
        torch.set_num_threads(args.threads)
        atomic_save_json(args.worker_out, worker_ovsam(args) if args.worker == 'ovsam' else worker_sam(args))
        return 0
    r = dict(size=args.size, points_per_side=args.points_per_side, threads=args.threads, quick=args.quick,
             models={})
    base = list(argv if argv is not None else sys.argv[1:])
    for name in args.models.split(','):
        print(f'[everything] {name} ...', flush=True)
        fd, tmp = tempfile.mkstemp(suffix='.json')
        os.close(fd)
        proc = subprocess.run([sys.executable, osp.abspath(__file__)] + base + ['--worker', name, '--worker-out', tmp],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            r['models'][name] = dict(error=proc.stderr[-2000:])
        else:
            with open(tmp) as f:
                r['models'][name] = json.load(f)
        os.unlink(tmp)
    ms = r['models']
    if all(n in ms and 'error' not in ms[n] for n in MODELS):
        r['time_ratio'] = ms['ovsam']['generate_s'] / ms['sam']['generate_s']
    r['targets'] = TARGETS
    print(report_text(r))
    if args.out:
        from ovsam.fileio import atomic_save_json
        atomic_save_json(args.out, r, indent=1)
    return 0 if all('error' not in m for m in ms.values()) else 1


if __name__ == '__main__':
    sys.exit(main())
