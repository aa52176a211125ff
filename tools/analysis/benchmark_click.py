#!/usr/bin/env python
"""One click as a person at the screen feels it: ``OVSAMPredictor.predict``
with the image already set, one prompt per call, mask + label with the
frozen-CLIP ensemble, at the original image size.

Builds the real-size model with random weights (``benchmark.py``'s builder:
RN50x16 + the ViT-H-width adapter; no files needed), sets one image
(``--height`` x ``--width``, 768 x 1024 by default) and times, interleaved
round by round so machine noise hits every kind alike:

- ``box``: one box;
- ``point``: one positive point;
- ``refine``: a positive and a negative point with the previous mask
  (``mask_input``), the usual second click.

Each figure is the median over ``--repeats`` rounds after ``--warmup`` rounds,
with the spread (min, 90th percentile). ``--plain`` also times the predictor
without the fast paths (``fast=False``) in the same process, for the A/B. The
image side (``set_image``, which also prepares the image for fast clicks) is
timed once. ``--quick`` uses the tiny model (a smoke test).

    python tools/analysis/benchmark_click.py                 # real size, 2 threads, ~2 minutes
    python tools/analysis/benchmark_click.py --plain --out work_dirs/click.json
"""
import argparse
import os.path as osp
import statistics
import sys
import time

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

TARGET_MS = 30.0
KINDS = ('box', 'point', 'refine')


def clicker(pred, h, w):
    """name -> a function doing that click on ``pred`` (prompts inside the image)."""
    box = [0.1 * w, 0.15 * h, 0.45 * w, 0.65 * h]
    pt, neg = [[0.3 * w, 0.4 * h]], [[0.3 * w, 0.4 * h], [0.36 * w, 0.42 * h]]
    first = pred.predict(point_coords=pt, point_labels=[1])
    prev = first.low_res_logits
    return {
        'box': lambda: pred.predict(box=box),
        'point': lambda: pred.predict(point_coords=pt, point_labels=[1]),
        'refine': lambda: pred.predict(point_coords=neg, point_labels=[1, 0], mask_input=prev),
    }


def time_rounds(fns: dict, repeats: int, warmup: int) -> dict:
    """Interleaved timing: every round calls each function once."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t) * 1e3)
    out = {}
    for k, ts in times.items():
        ts = sorted(ts)
        out[k] = dict(median_ms=statistics.median(ts), min_ms=ts[0], p90_ms=ts[min(len(ts) - 1, int(0.9 * len(ts)))])
    return out


def run(args) -> dict:
    import numpy as np
    import torch
    import benchmark as B
    from ovsam.apis import OVSAMPredictor
    torch.set_num_threads(args.threads)
    bargs = B.parse_args(['--quick'] if args.quick else ['--image-size', '1024'])
    rgb = (np.random.default_rng(0).random((args.height, args.width, 3)) * 255).astype(np.uint8)
    report = dict(threads=args.threads, image=[args.height, args.width], quick=args.quick, repeats=args.repeats,
                  device=args.device, precision=args.precision)
    preds = {}
    for name, fast in (('fast', True), ('plain', False)):
        if name == 'plain' and not args.plain:
            continue
        model = B.build_ovsam(bargs)
        pred = OVSAMPredictor(model, fast=fast, allow_random_text=True, device=args.device, precision=args.precision,
                              clip_model_cfg=B.ovsam_config(bargs).model.backbone.get('model_cfg'))
        t = time.perf_counter()
        pred.set_image(rgb)
        report[f'{name}_set_image_s'] = time.perf_counter() - t
        preds[name] = clicker(pred, args.height, args.width)
    fns = {f'{impl}/{kind}': fn for impl, kinds in preds.items() for kind, fn in kinds.items()}
    report['clicks'] = time_rounds(fns, args.repeats, args.warmup)
    report['target_ms'] = TARGET_MS
    return report


def report_text(r: dict) -> str:
    lines = [f"one click, {r['image'][0]} x {r['image'][1]} image, {r['device']}, {r['threads']} threads, image side "
             f"{r['precision']}, median of {r['repeats']} "
             f"(min / p90){' [tiny model]' if r['quick'] else ''}",
             f"set_image (fast, incl. preparing clicks): {r['fast_set_image_s']:.2f} s"
             + (f"; plain: {r['plain_set_image_s']:.2f} s" if 'plain_set_image_s' in r else '')]
    for key, v in r['clicks'].items():
        impl, kind = key.split('/')
        mark = ('ok' if v['median_ms'] <= r['target_ms'] else 'OVER') if impl == 'fast' else ''
        lines.append(f"  {impl:5s} {kind:6s} {v['median_ms']:7.1f} ms  ({v['min_ms']:.1f} / {v['p90_ms']:.1f})"
                     + (f"  target <= {r['target_ms']:.0f} ms: {mark}" if mark else ''))
    return '\n'.join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--height', type=int, default=768)
    p.add_argument('--width', type=int, default=1024)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--repeats', type=int, default=21)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--plain', action='store_true', help='also time fast=False in the same process (A/B)')
    p.add_argument('--quick', action='store_true', help='the tiny model (smoke test)')
    p.add_argument('--device', default='cpu', help='cpu (default) or cuda[:i]')
    p.add_argument('--precision', choices=('fp32', 'bf16', 'auto'), default='fp32',
                   help="the predictor's image-side precision (set_image)")
    p.add_argument('--out', help='also write the figures as JSON (atomically)')
    args = p.parse_args(argv)
    for name in ('height', 'width', 'threads', 'repeats'):
        if getattr(args, name) < 1:
            p.error(f'--{name} must be at least 1')
    if args.warmup < 0:
        p.error('--warmup must be >= 0')
    if args.device != 'cpu':
        import torch
        if not args.device.startswith('cuda') or not torch.cuda.is_available():
            p.error(f'--device {args.device}: only cpu or cuda[:i], and CUDA needs a GPU torch can see')
    return args


def main(argv=None):
    args = parse_args(argv)
    r = run(args)
    print(report_text(r))
    if args.out:
        from ovsam.fileio import atomic_save_json
        atomic_save_json(args.out, r, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
