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
    from ovsam.toy_pipeline import Pipeline
    Pipeline(args).run()


if __name__ == '__main__':
    main()
