#!/usr/bin/env python
"""Peak memory of the predictor and of segment-everything on a large photo.

    python tools/analysis/memory_probe.py                      # 4000 x 3000 (12 MP), tiny model
    python tools/analysis/memory_probe.py --width 2000 --height 1500 --num-prompts 50
    python tools/analysis/memory_probe.py --config CFG --checkpoint CKPT   # another model

Two cases, each in a fresh process (so their peaks do not mix):

- ``boxes``: ``predictor.predict(box=...)`` with ``--num-prompts`` random box
  prompts in one call (``return_logits=False``, the default);
- ``everything``: ``OVSAMAutomaticMaskGenerator(...).generate(photo)`` with a
  ``--points-per-side`` grid, ``output_mode='coco_rle'`` and
  ``stability_score_thresh`` ``--stability-thresh`` (0 keeps every non-empty
  mask: the most full-resolution work).

The photo is ``skimage.data.coffee()`` resized to ``--width`` x ``--height``.
The per-mask work is at full resolution whatever the model, so the tiny
random-weight model measures it (``--config`` / ``--checkpoint`` for another).
Printed per case: peak RSS of the process (``ru_maxrss``), RSS just before the
call (model, photo and image state) and the call's time. ``--max-gib`` stops a
case whose RSS passes it (a watchdog thread, plus an address-space limit as a
backstop) and reports it as exceeded, so an old code path that needs 20 GB
cannot take a shared machine down.
"""
import argparse
import json
import os
import os.path as osp
import resource
import subprocess
import sys
import threading
import time

CASES = ('boxes', 'everything')
EXCEEDED = 3  # exit code of a case stopped by the watchdog


def rss_gib() -> float:
    """Current resident set size of this process (GiB)."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 2**20
    return float('nan')


def peak_rss_gib() -> float:
    """RSS high-water mark of this process (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def start_watchdog(limit_gib: float) -> None:
    """Exit with :data:`EXCEEDED` as soon as RSS passes ``limit_gib``; cap the
    address space at ``limit_gib + 8`` GiB as a backstop for fast spikes."""
    soft = int((limit_gib + 8) * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (soft, resource.getrlimit(resource.RLIMIT_AS)[1]))

    def watch():
        while True:
            now = rss_gib()
            if now > limit_gib:
                print(json.dumps(dict(exceeded=True, rss_gib=now, limit_gib=limit_gib)), flush=True)
                os._exit(EXCEEDED)
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()


def make_photo(width: int, height: int):
    """``skimage.data.coffee()`` (a real photograph) resized to width x height, RGB uint8."""
    import cv2
    from skimage import data
    return cv2.resize(data.coffee(), (width, height), interpolation=cv2.INTER_CUBIC)


def random_boxes(n: int, width: int, height: int, seed: int = 0):
    """``n`` boxes x1, y1, x2, y2 of 5-50 % of the image side, inside the image."""
    import numpy as np
    rng = np.random.default_rng(seed)
    wh = rng.uniform(0.05, 0.5, (n, 2)) * [width, height]
    xy = rng.uniform(0, 1, (n, 2)) * ([width, height] - wh)
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def run_case(args) -> dict:
    import torch
    torch.set_num_threads(args.threads)
    from ovsam.apis import OVSAMAutomaticMaskGenerator, OVSAMPredictor
    if args.config:
        pred = OVSAMPredictor.from_config(args.config, args.checkpoint, vocabulary=args.vocabulary)
    else:
        pred = OVSAMPredictor.from_tiny(vocabulary=args.vocabulary)
    photo = make_photo(args.width, args.height)
    res = dict(case=args.case, width=args.width, height=args.height)
    if args.case == 'boxes':
        pred.set_image(photo)
        boxes = random_boxes(args.num_prompts, args.width, args.height, args.seed)
        res['rss_before_gib'] = rss_gib()
        t = time.perf_counter()
        out = pred.predict(box=boxes)
        res['seconds'] = time.perf_counter() - t
        res['result'] = f'{len(out)} masks {out.masks.dtype} ({out.masks.nbytes / 2**30:.2f} GiB)'
    else:
        gen = OVSAMAutomaticMaskGenerator(pred, points_per_side=args.points_per_side,
                                          points_per_batch=args.points_per_batch,
                                          stability_score_thresh=args.stability_thresh, output_mode='coco_rle')
        res['rss_before_gib'] = rss_gib()
        t = time.perf_counter()
        records = gen.generate(photo)
        res['seconds'] = time.perf_counter() - t
        res['result'] = f'{len(records)} masks (COCO RLE) from {args.points_per_side ** 2} points'
    res['peak_rss_gib'] = peak_rss_gib()
    return res


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--width', type=int, default=4000)
    p.add_argument('--height', type=int, default=3000)
    p.add_argument('--num-prompts', type=int, default=100, help='box prompts of the "boxes" case (one call)')
    p.add_argument('--points-per-side', type=int, default=32, help='grid of the "everything" case')
    p.add_argument('--points-per-batch', type=int, default=64)
    p.add_argument('--stability-thresh', type=float, default=0.0)
    p.add_argument('--cases', nargs='+', choices=CASES, default=list(CASES))
    p.add_argument('--config', help='model config (default: the tiny random-weight model)')
    p.add_argument('--checkpoint')
    p.add_argument('--vocabulary', default='shapes')
    p.add_argument('--threads', type=int, default=int(os.environ.get('OMP_NUM_THREADS', 2)))
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--max-gib', type=float, default=12.0,
                   help='stop a case whose RSS passes this (protects a shared machine)')
    p.add_argument('--case', choices=CASES, help=argparse.SUPPRESS)  # internal: run one case here
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.case:
        start_watchdog(args.max_gib)
        print(json.dumps(run_case(args)), flush=True)
        return 0
    rows = []
    for case in args.cases:
        cmd = [sys.executable, osp.abspath(__file__), *(argv if argv is not None else sys.argv[1:]), '--case', case]
        r = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith('{')]
        res = json.loads(lines[-1]) if lines else {}
        if r.returncode == EXCEEDED or res.get('exceeded'):
            rows.append((case, f'> {args.max_gib:.1f} (stopped)', '', '', 'exceeded --max-gib'))
        elif r.returncode != 0 or not res:
            rows.append((case, 'failed', '', '', (r.stderr.strip().splitlines() or ['?'])[-1][:100]))
        else:
            rows.append((case, f"{res['peak_rss_gib']:.2f}", f"{res['rss_before_gib']:.2f}", f"{res['seconds']:.1f}",
                         res['result']))
    print(f'{args.width} x {args.height} ({args.width * args.height / 1e6:.1f} MP), '
          f'{args.num_prompts} box prompts, {args.points_per_side}x{args.points_per_side} grid, '
          f'{args.threads} threads')
    head = ('case', 'peak RSS GiB', 'RSS before call GiB', 'seconds', 'result')
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    for r in [head] + rows:
        print('  '.join(str(v).ljust(w) for v, w in zip(r, widths)))
    return 0 if all(r[1] not in ('failed', ) for r in rows) else 1


if __name__ == '__main__':
    sys.exit(main())
