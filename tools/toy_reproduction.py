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
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))  # tools/, home of the toy package

from toy.pipeline import ToyReproduction, main  # noqa: E402

if __name__ == '__main__':
    main(ToyReproduction, __doc__)
