#!/usr/bin/env python
"""The paper's claims at toy scale on CPU, with the same modules and configs.

    python tools/toy_reproduction.py [--work-dir work_dirs/toy_reproduction]

Shares stages -1 (tiny SAM), 0 (tiny CLIP, all 10 classes), the vocabulary and
stage 1 (SAM2CLIP) with tools/tiny_pipeline.py (point --work-dir at the same
folder to reuse them), then trains CLIP2SAM on the 7 base classes only and
compares on held-out images, with box and centre-point prompts:
  (i)   OV-SAM, CLIP2SAM head only
  (ii)  OV-SAM with the frozen-CLIP ensemble (alpha 0.1 seen, beta 0.9 unseen)
  (iii) baseline (a): tiny SAM masks + tiny CLIP on the crop
  (iv)  baseline (b): tiny SAM masks + tiny CLIP features pooled in the mask
Writes toy_table.md / toy_table.json and predictions_novel.png. Every stage is
cached; re-running resumes. About 15 minutes on 2 cores.
"""
import argparse


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--work-dir', default='work_dirs/tiny_pipeline')
    p.add_argument('--num-train', type=int, default=400)
    p.add_argument('--num-val', type=int, default=60)
    p.add_argument('--num-sa1b', type=int, default=300)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--sam-iters', type=int, default=300)
    p.add_argument('--clip-steps', type=int, default=1200)
    p.add_argument('--sam2clip-iters', type=int, default=300)
    p.add_argument('--clip2sam-iters', type=int, default=800)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--force', action='store_true', help='re-run every stage')
    return p.parse_args()


def main():
    args = parse_args()
    import torch
    torch.set_num_threads(args.threads)
    import ovsam  # noqa: F401
    from ovsam.toy_pipeline import ToyReproduction
    ToyReproduction(args).run()


if __name__ == '__main__':
    main()
