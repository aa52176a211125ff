#!/usr/bin/env python
"""OV-SAM on images, folders or lists, as mmdet's ``demo/image_demo.py``
(:class:`ovsam.apis.OVSAMInferencer`).

Examples::

    # a model folder (ovsam.pretrained / tools/model_converters/official_to_pretrained.py)
    python tools/infer.py photos/ work_dirs/ovsam_coco_rn50x16 --out-dir outputs
    # a config (shipped name or file) and a checkpoint, box prompts, 2 images per batch
    python tools/infer.py photos/ ovsam_coco --weights epoch_12.pth --vocabulary coco \
        --boxes 10,20,200,240 --batch-size 2 --out-dir outputs
    # text queries: segment everything, keep the masks recognised as a query
    python tools/infer.py photos/ work_dirs/ovsam_coco_rn50x16 --texts cat "cup,mug" --out-dir outputs

Writes ``OUT_DIR/vis/NAME`` (drawings) and ``OUT_DIR/preds/NAME.json`` (labels,
scores, bboxes x1,y1,x2,y2, COCO RLE masks, class names, top-k); as mmdet's
demo, predictions are saved unless ``--no-save-pred``.
"""
import argparse
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('inputs', nargs='+', help='image files and/or folders')
    p.add_argument('model', help='a model folder, a shipped config name (ovsam_coco) or a config file')
    p.add_argument('--weights', help='checkpoint for a config')
    p.add_argument('--vocabulary', nargs='+', help='a vocabulary spec (coco, lvis, a file) or class names')
    p.add_argument('--clip-checkpoint', help='CLIP file to embed new class names with')
    p.add_argument('--boxes', nargs='+', help='box prompts x1,y1,x2,y2 for every image (default: everything)')
    p.add_argument('--texts', nargs='+', help='text queries for every image')
    p.add_argument('--out-dir', default='outputs', help='output folder (vis/ and preds/)')
    p.add_argument('--batch-size', type=int, default=1)
    p.add_argument('--top-k', type=int, default=5, help='classes listed per mask')
    p.add_argument('--pred-score-thr', type=float, default=0.0, help='draw masks whose class probability is >= this')
    p.add_argument('--points-per-side', type=int, default=None, help='everything/text: grid points per side')
    p.add_argument('--device', default='cpu')
    p.add_argument('--no-save-vis', action='store_true')
    p.add_argument('--no-save-pred', action='store_true')
    p.add_argument('--print-result', action='store_true')
    return p.parse_args(argv)


def parse_box(text: str):
    try:
        vals = [float(v) for v in text.split(',')]
    except ValueError:
        vals = []
    if len(vals) != 4:
        raise ValueError(f'--boxes: a box is x1,y1,x2,y2, got {text!r}')
    return vals


def main(argv=None) -> int:
    args = parse_args(argv)
    from ovsam.apis import OVSAMInferencer
    from ovsam.checkpoint import CheckpointError
    try:
        if args.boxes and args.texts:
            raise ValueError('give --boxes or --texts, not both')
        prompts = dict(boxes=[parse_box(b) for b in args.boxes]) if args.boxes else 'everything'
        vocabulary = None
        if args.vocabulary:
            vocabulary = args.vocabulary[0] if len(args.vocabulary) == 1 else args.vocabulary
        gen = {} if args.points_per_side is None else dict(points_per_side=args.points_per_side)
        kwargs = {} if args.clip_checkpoint is None else dict(clip_checkpoint=args.clip_checkpoint)
        inferencer = OVSAMInferencer(args.model, weights=args.weights, device=args.device, vocabulary=vocabulary,
                                     generator_options=gen, **kwargs)
        result = inferencer(args.inputs if len(args.inputs) > 1 else args.inputs[0], prompts=prompts,
                            texts=args.texts, batch_size=args.batch_size, top_k=args.top_k,
                            pred_score_thr=args.pred_score_thr, out_dir=args.out_dir, no_save_vis=args.no_save_vis,
                            no_save_pred=args.no_save_pred, print_result=args.print_result)
    except (CheckpointError, ValueError, TypeError, OSError, RuntimeError) as e:
        print(f'infer: {e}', file=sys.stderr)
        return 1
    n = sum(len(p['labels']) for p in result['predictions'])
    saved = [d for d, off in (('vis', args.no_save_vis), ('preds', args.no_save_pred)) if not off]
    print(f'{len(result["predictions"])} images, {n} masks' +
          (f'; results in {args.out_dir}/{{{",".join(saved)}}}' if saved and args.out_dir else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
