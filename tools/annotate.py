"""Annotate a folder of images (or a list file, or a COCO file's images) into one
COCO instances JSON with OV-SAM; resumable, sharded under torchrun.

Examples::

    # segment everything, label with the COCO classes
    python tools/annotate.py photos/ --out photos.json --everything --vocabulary coco \\
        --config configs/_base_/models/ovsam_rn50x16.py --checkpoint ovsam_coco.pth
    # a detector's boxes (COCO results JSON or mmdet pickle) on the COCO file it ran on
    python tools/annotate.py data/coco/annotations/instances_val2017.json --image-root data/coco/val2017 \\
        --detections detic_results.json --out detic_ovsam.json ...
    # text queries; the boxes of a COCO file (re-label, add masks)
    python tools/annotate.py photos/ --text "cat" "dog" --out pets.json ...
    python tools/annotate.py boxes.json --coco-boxes --out relabelled.json ...
    # 4 processes (gloo on CPU, NCCL on GPUs)
    bash tools/dist_annotate.sh 4 photos/ --out photos.json --everything ...

Without --config/--checkpoint the tiny RANDOM model runs (meaningless labels;
for trying the tool). Rerunning the same command resumes; the per-image
results are in --work-dir (default: next to --out).
"""
import argparse
import os
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('images', help='image folder (recursive), list file (one path per line) or COCO .json')
    p.add_argument('--out', required=True, help='output COCO instances JSON')
    p.add_argument('--work-dir', help='per-image results (default: <out>_work)')
    p.add_argument('--image-root', help='folder the paths of a list or COCO file are relative to')
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--everything', action='store_true', help='segment everything (point grid)')
    src.add_argument('--detections', help='detector results: COCO results .json or mmdet .pkl')
    src.add_argument('--text', nargs='+', help='text queries (class names; commas separate synonyms)')
    src.add_argument('--coco-boxes', nargs='?', const='', metavar='COCO_JSON',
                     help='the boxes of a COCO file (default: the input COCO file)')
    p.add_argument('--config', help='model config (default: the tiny random model)')
    p.add_argument('--checkpoint', help='trained OV-SAM checkpoint')
    p.add_argument('--clip-checkpoint', help='CLIP weights to embed class names given as text')
    p.add_argument('--vocabulary', nargs='+', help='any vocabulary spec: coco | coco-ov | lvis | shapes, a class '
                   'file, an embedding file (+ class names), or class names')
    p.add_argument('--cache-dir', help='text-embedding cache folder')
    p.add_argument('--points-per-side', type=int, default=32)
    p.add_argument('--points-per-batch', type=int, default=64)
    p.add_argument('--stability-thresh', type=float, default=0.9)
    p.add_argument('--score-thresh', type=float, default=0.0, help='everything: min class probability')
    p.add_argument('--crop-n-layers', type=int, default=0)
    p.add_argument('--min-mask-region-area', type=int, default=0)
    p.add_argument('--min-score', type=float, default=0.0, help='text: min probability of the query class')
    p.add_argument('--det-score-thr', type=float, default=0.0)
    p.add_argument('--det-topk', type=int, default=100)
    p.add_argument('--top-k', type=int, default=3, help='classes listed per annotation')
    p.add_argument('--vis-dir', help='also draw the annotations into this folder')
    p.add_argument('--report', help='report JSON (default: <out>.report.json)')
    p.add_argument('--device', default='cpu', help='cpu or cuda (each rank takes cuda:LOCAL_RANK)')
    p.add_argument('--overwrite', action='store_true', help='ignore a work dir made with other options')
    p.add_argument('--no-progress', action='store_true')
    p.add_argument('--launcher', choices=['none', 'pytorch'], default='none',
                   help='accepted for mmdet habit; torchrun\'s environment is used whenever WORLD_SIZE > 1')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from ovsam.apis import OVSAMPredictor, annotate_images
    device = args.device
    if device == 'cuda' and int(os.environ.get('WORLD_SIZE', '1')) > 1:
        device = f'cuda:{int(os.environ.get("LOCAL_RANK", "0"))}'
    if args.config is None:
        if args.checkpoint is not None:
            raise SystemExit('--checkpoint needs --config')
        print('[annotate] no --config/--checkpoint: using the tiny RANDOM model; masks and labels are meaningless',
              file=sys.stderr)
        pred = OVSAMPredictor.from_tiny(device=device, vocabulary=None, cache_dir=args.cache_dir)
        if args.vocabulary is None:
            args.vocabulary = ['shapes']
    else:
        pred = OVSAMPredictor.from_config(args.config, args.checkpoint, device=device,
                                          clip_checkpoint=args.clip_checkpoint, cache_dir=args.cache_dir)
    if args.everything:
        prompts = 'everything'
    elif args.detections:
        prompts = dict(detections=args.detections)
    elif args.text:
        prompts = dict(text=args.text)
    else:
        prompts = dict(coco=args.coco_boxes) if args.coco_boxes else 'coco'
    gen = dict(points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
               stability_score_thresh=args.stability_thresh, class_score_thresh=args.score_thresh,
               crop_n_layers=args.crop_n_layers, min_mask_region_area=args.min_mask_region_area)
    vocabulary = args.vocabulary
    if vocabulary is not None and len(vocabulary) == 1:
        vocabulary = vocabulary[0]
    report = annotate_images(pred, args.images, prompts=prompts, vocabulary=vocabulary, out_file=args.out,
                             work_dir=args.work_dir, image_root=args.image_root, generator_options=gen,
                             top_k=args.top_k, min_score=args.min_score, det_score_thr=args.det_score_thr,
                             det_topk=args.det_topk, vis_dir=args.vis_dir, report_file=args.report,
                             overwrite=args.overwrite, progress=not args.no_progress)
    if 'annotations' in report:  # rank 0
        print(f"wrote {report['out_file']}: {report['annotated_images']} of {report['images']} images, "
              f"{report['annotations']} annotations, {len(report['skipped'])} skipped "
              f"({report['seconds']:.1f} s); report: {args.report or report['out_file'][:-5] + '.report.json'}")
    return 0


def _cli() -> int:
    from ovsam.apis.annotate import AnnotationOptionsError
    from ovsam.datasets import ProposalFileError
    try:
        return main()
    except (AnnotationOptionsError, ProposalFileError, FileNotFoundError, ValueError) as e:
        print(f'annotate: error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(_cli())
