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


def main():
    from ovsam.toy_pipeline import Pipeline, pipeline_arg_parser
    args = pipeline_arg_parser(__doc__).parse_args()
    import torch
    torch.set_num_threads(args.threads)
    Pipeline(args).run()


if __name__ == '__main__':
    main()
