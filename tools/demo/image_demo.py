#!/usr/bin/env python
"""OV-SAM on one image: prompt with boxes / points, or segment everything,
and draw masks, prompts and open-vocabulary labels (mmdet DetLocalVisualizer).

Examples::

    # tiny random model (no checkpoint): a smoke test of the whole path
    python tools/demo/image_demo.py demo.jpg --boxes 10,20,200,240 --out out.png
    # released model, COCO classes from a precomputed embedding file
    python tools/demo/image_demo.py demo.jpg --config configs/_base_/models/ovsam_rn50x16.py \
        --checkpoint ovsam_coco.pth --vocabulary data/embeddings/rn50x16_coco.pth \
        --points 120,80 300,200 --out out.png
    # the official release's LVIS file (a bare tensor: name its classes after it)
    python tools/demo/image_demo.py demo.jpg ... --vocabulary checkpoints/RN50x16_LVISV1Dataset.pth lvis \
        --everything --out out.png
    # any class names (embedded with the CLIP text tower), everything mode
    python tools/demo/image_demo.py demo.jpg ... --clip-checkpoint RN50x16.pt \
        --vocabulary cat dog "cup,mug" --everything --out out.png

``--vocabulary`` takes one class per argument (commas inside one argument
separate synonyms: ``"cup,mug"``), or one spec of
:func:`ovsam.vocabulary.resolve_vocabulary`.

Coordinates are pixels of the input image. Each ``--boxes`` item and each
``--points`` item is one prompt; join several points of one prompt with ``;``
(``--points "10,20;30,40"``) and mark background points with a trailing ``,0``.

``--json`` writes a list with one record per prediction: ``class_name``,
``label``, ``score``, top-k names and probabilities, ``area`` (pixels) and the
box (``box`` x1,y1,x2,y2 for prompts; ``bbox`` x,y,w,h and the automatic
generator's keys for ``--everything``), and the mask as ``segmentation``: COCO
compressed RLE ``{"size": [h, w], "counts": "..."}`` at the input image's size
(decode with ``pycocotools.mask.decode(dict(rle, counts=rle["counts"].encode()))``).
"""
import argparse
import json
import os
import os.path as osp
import sys


def _number(text: str, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{what}: {text!r} is not a number') from None
    if v != v or v in (float('inf'), float('-inf')):
        raise argparse.ArgumentTypeError(f'{what}: {text!r} is not a finite number')
    return v


def parse_box(text: str):
    vals = [_number(v, 'a box is x1,y1,x2,y2') for v in text.replace(' ', '').split(',')]
    if len(vals) != 4:
        raise argparse.ArgumentTypeError(f'a box is x1,y1,x2,y2; got {text!r}')
    return vals


def parse_points(text: str):
    pts, labels = [], []
    for item in text.split(';'):
        vals = [_number(v, 'a point is x,y or x,y,label') for v in item.replace(' ', '').split(',') if v != '']
        if len(vals) not in (2, 3):
            raise argparse.ArgumentTypeError(f'a point is x,y or x,y,label; got {item!r}')
        if len(vals) == 3 and vals[2] not in (0, 1):
            raise argparse.ArgumentTypeError(f'a point label is 1 (foreground) or 0 (background); got {item!r}')
        pts.append(vals[:2])
        labels.append(int(vals[2]) if len(vals) == 3 else 1)
    return pts, labels


def mask_to_coco_rle(mask) -> dict:
    """One H x W mask as COCO compressed RLE, JSON-ready: ``{'size': [h, w], 'counts': str}``."""
    import numpy as np
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {'size': [int(v) for v in rle['size']], 'counts': rle['counts'].decode('ascii')}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('image', help='input image file')
    p.add_argument('--config', help='model config (default: the tiny random model)')
    p.add_argument('--checkpoint', help='trained OV-SAM checkpoint; none = random weights')
    p.add_argument('--clip-checkpoint', help='CLIP weights to embed class names given as text')
    p.add_argument('--vocabulary', nargs='+', default=None,
                   help='embedding .pth file (an official bare-tensor file followed by its class names, e.g. '
                        'RN50x16_LVISV1Dataset.pth lvis), coco | coco-ov | lvis | shapes, a .txt (one class per '
                        'line) / COCO .json class file, or class names, one per argument with commas separating '
                        'synonyms (default: the config\'s vocabulary, shapes for the tiny model)')
    p.add_argument('--cache-dir', help='folder to cache text embeddings in (optional)')
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument('--boxes', nargs='+', type=parse_box, help='box prompts x1,y1,x2,y2')
    group.add_argument('--points', nargs='+', type=parse_points, help='point prompts x,y[,label][;x,y...]')
    group.add_argument('--everything', action='store_true', help='segment everything (point grid)')
    p.add_argument('--points-per-side', type=int, default=32)
    p.add_argument('--stability-thresh', type=float, default=0.9)
    p.add_argument('--score-thresh', type=float, default=0.0, help='min class probability (everything mode)')
    p.add_argument('--top-k', type=int, default=3)
    p.add_argument('--device', default='cpu')
    p.add_argument('--out', required=True, help='output image (.png/.jpg)')
    p.add_argument('--json', help='also write the predictions as JSON, one record per mask with its class, '
                                  'scores, box and the mask as COCO compressed RLE in "segmentation" '
                                  '({"size": [h, w], "counts": str})')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import mmcv
    import numpy as np

    from ovsam.apis import OVSAMAutomaticMaskGenerator, OVSAMPredictor, draw_predictions
    if osp.isdir(args.image):
        raise SystemExit(f'image {args.image!r} is a directory; give an image file')
    if not osp.isfile(args.image):
        raise SystemExit(f'image {args.image!r} does not exist')
    for flag, path in (('--out', args.out), ('--json', args.json)):
        if path is not None and osp.isdir(path):
            raise SystemExit(f'{flag} {path!r} is a directory; give a file name inside it')
    import cv2
    if not cv2.haveImageWriter(args.out):
        raise SystemExit(f'--out {args.out!r}: OpenCV cannot write this file type; use .png or .jpg')
    try:
        image = mmcv.imread(args.image, channel_order='rgb')
    except (cv2.error, ValueError, OSError):  # mmcv converts colours before checking that anything was read
        image = None
    if image is None:
        raise SystemExit(f'image {args.image!r} could not be read as an image (not an image file, or corrupt)')
    if args.config is None and args.checkpoint is None:
        print('[image_demo] no --config/--checkpoint: using the tiny RANDOM model; '
              'masks and labels are meaningless', file=sys.stderr)
        pred = OVSAMPredictor.from_tiny(device=args.device, vocabulary=args.vocabulary or 'shapes',
                                        cache_dir=args.cache_dir)
    else:
        if args.config is None:
            raise SystemExit('--checkpoint needs --config')
        pred = OVSAMPredictor.from_config(args.config, args.checkpoint, device=args.device,
                                          clip_checkpoint=args.clip_checkpoint, vocabulary=args.vocabulary,
                                          cache_dir=args.cache_dir)
    if pred.num_classes <= 0:
        raise SystemExit('no vocabulary: pass --vocabulary (embedding file, coco/coco-ov/lvis/shapes, a class file '
                         'or names)')
    pred.set_image(image)
    names = pred.class_names
    records = []
    if args.everything:
        gen = OVSAMAutomaticMaskGenerator(pred, points_per_side=args.points_per_side,
                                          stability_score_thresh=args.stability_thresh,
                                          class_score_thresh=args.score_thresh, top_k=args.top_k)
        anns = gen.generate()
        if anns:
            masks = np.stack([a['segmentation'] for a in anns])
            boxes = np.array([[a['bbox'][0], a['bbox'][1], a['bbox'][0] + a['bbox'][2],
                               a['bbox'][1] + a['bbox'][3]] for a in anns], np.float32)
            drawn = draw_predictions(image, masks, boxes, [a['label'] for a in anns], [a['score'] for a in anns],
                                     names)
        else:
            drawn = draw_predictions(image)
        for a in anns:
            records.append({**{k: v for k, v in a.items() if k != 'segmentation'},
                            'segmentation': mask_to_coco_rle(a['segmentation'])})
    else:
        if args.boxes:
            out = pred.predict(box=np.array(args.boxes, np.float32), top_k=args.top_k)
            points = point_labels = None
        else:
            counts = {len(p[0]) for p in args.points}
            if len(counts) != 1:
                raise SystemExit('every --points prompt needs the same number of points')
            coords = np.array([p[0] for p in args.points], np.float32)
            labels = np.array([p[1] for p in args.points], np.int64)
            out = pred.predict(point_coords=coords, point_labels=labels, top_k=args.top_k)
            points, point_labels = coords.reshape(-1, 2), labels.reshape(-1)
        drawn = draw_predictions(image, out.masks, out.boxes, out.labels, out.scores, names, points=points,
                                 point_labels=point_labels)
        for i in range(len(out)):
            records.append(dict(box=out.boxes[i].tolist(), area=int(out.masks[i].sum()),
                                class_name=out.class_names[i], label=int(out.labels[i]),
                                score=float(out.scores[i]), stability_score=float(out.mask_scores[i]),
                                topk=[[n, float(s)] for n, s in zip(out.topk_names[i], out.topk_scores[i])],
                                segmentation=mask_to_coco_rle(out.masks[i])))
    from ovsam.fileio import atomic_path, atomic_write
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with atomic_path(args.out) as tmp:
        if not mmcv.imwrite(drawn[:, :, ::-1], tmp, auto_mkdir=False):
            raise SystemExit(f'could not write {args.out!r}')
    for r in records:
        print(f"{r['class_name']}: {r['score']:.3f}")
    print(f'wrote {args.out} ({len(records)} instances)')
    if args.json:
        with atomic_write(args.json, 'w') as f:
            json.dump(records, f, indent=1)
    return 0


def _cli() -> int:
    """``main()`` for the command line: the library's input errors (they name the
    input and the fix) end the run with their message instead of a traceback."""
    from ovsam.checkpoint import CheckpointError
    try:
        return main()
    except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, CheckpointError) as e:
        raise SystemExit(f'image_demo: {type(e).__name__}: {e}') from None


if __name__ == '__main__':
    sys.exit(_cli())
