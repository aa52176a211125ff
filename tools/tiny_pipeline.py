#!/usr/bin/env python
"""The whole OV-SAM recipe at toy scale on CPU, on data generated here.

    python tools/tiny_pipeline.py [--work-dir work_dirs/tiny_pipeline] [--force]

Stages (each cached in the work dir; re-running skips finished stages):
  data   generate the shapes data set (COCO format + SA-1B layout)
  sam    stage -1: a tiny SAM trained class-agnostically (no pretrained SAM exists here)
  clip   stage 0: a tiny CLIP trained on object crops and class names (--clip-recipe crops), then,
         when colour does not name the class, on regions of whole scenes (regions)
  vocab  text embeddings of the class names with the tiny CLIP (ovsam.vocabulary.TextEncoder)
  sam2clip  stage 1: distil the tiny SAM's image embedding into frozen CLIP + SAM2CLIP
  clip2sam  stage 2: CLIP2SAM (decoder, FPN, recognition) on the COCO-format data
  eval   held-out images, box and centre-point prompts: mIoU, accuracy, COCO mask AP
  show   a PNG of predictions with labels
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))  # tools/, home of the toy package

from toy.pipeline import Pipeline, main  # noqa: E402

if __name__ == '__main__':
    main(Pipeline, __doc__)
