#!/usr/bin/env python
"""Export OV-SAM to ONNX.

``--out-dir DIR``: the whole model for deployment without torch, as two graphs
(``image_encoder.onnx``: normalisation, padding, frozen CLIP, SAM2CLIP, FPN;
``prompt_decoder.onnx``: prompt encoder, CLIP2SAM decoder and recognition
head, frozen-CLIP region scores, ensemble, any number of prompts), the
vocabulary (``vocabulary.npy``) and ``manifest.json``; run it with
``ovsam_onnx.OVSAMOnnxPredictor(DIR)`` (numpy, onnxruntime, PIL only).

``--out FILE.onnx``: the prompt side alone with the vocabulary baked in (class
names in the metadata); the image features (SAM image embedding, FPN levels,
CLIP C5) are inputs, computed in PyTorch (``OVSAMPredictor.set_image``). See
``ovsam/apis/onnx_export.py`` and ``ovsam_onnx/layout.py`` for the layouts.

Examples::

    # the tiny random model (tests, demos), both graphs, checked against PyTorch
    python tools/deployment/export_onnx.py --tiny --out-dir work_dirs/ovsam_tiny_onnx --check
    # a trained model with COCO's vocabulary from a precomputed embedding file
    python tools/deployment/export_onnx.py --config configs/_base_/models/ovsam_rn50x16.py \
        --checkpoint ovsam_coco.pth --vocabulary data/embeddings/rn50x16_coco.pth --out-dir ovsam_onnx/
    # the prompt side only
    python tools/deployment/export_onnx.py --tiny --out work_dirs/ovsam_tiny_prompt.onnx --check

Needs ``onnx`` (and ``onnxruntime`` for ``--check``):
``pip install -c requirements/constraints.txt onnx onnxruntime``.
"""
import argparse
import os
import os.path as osp
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', help='model config (default with --tiny: configs/_base_/models/ovsam_tiny.py)')
    p.add_argument('--checkpoint', help='trained OV-SAM checkpoint (state dict)')
    p.add_argument('--tiny', action='store_true', help='the tiny random model (no checkpoint)')
    p.add_argument('--clip-checkpoint', help='CLIP weights for embedding class names')
    p.add_argument('--vocabulary', nargs='+',
                   help='embedding .pth file, coco | lvis | shapes, a .txt/.json class file, or class names '
                        '(default: the config\'s, or shapes with --tiny)')
    p.add_argument('--out', help='output .onnx file: the prompt side alone, vocabulary baked in')
    p.add_argument('--out-dir', help='output folder: both graphs, the vocabulary and manifest.json (for ovsam_onnx)')
    p.add_argument('--opset', type=int, default=17)
    p.add_argument('--device', default='cpu')
    p.add_argument('--check', action='store_true',
                   help='compare onnxruntime with PyTorch (--out: a random image, 1 and 7 prompts; --out-dir: the '
                        'ovsam_onnx runtime against OVSAMPredictor on a generated scene)')
    args = p.parse_args(argv)
    if not args.out and not args.out_dir:
        p.error('give --out-dir DIR (both graphs, for ovsam_onnx) and/or --out FILE.onnx (the prompt side)')
    return args


def check_export(predictor, onnx_file: str, seed: int = 0) -> dict:
    """Max abs differences between onnxruntime and PyTorch (1 and 7 prompts)."""
    import numpy as np
    import onnxruntime as ort

    from ovsam.apis.onnx_export import onnx_prompt_inputs
    rng = np.random.default_rng(seed)
    h, w = 300, 400
    predictor.set_image(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    sess = ort.InferenceSession(onnx_file, providers=['CPUExecutionProvider'])
    worst = dict(mask_logits=0.0, class_scores=0.0)
    for n in (1, 7):
        x1 = rng.uniform(0, w / 2, n)
        y1 = rng.uniform(0, h / 2, n)
        boxes = np.stack([x1, y1, x1 + rng.uniform(10, w / 2, n), y1 + rng.uniform(10, h / 2, n)], 1)
        points = np.stack([rng.uniform(0, w, (n, 2)), rng.uniform(0, h, (n, 2))], -1)
        for kw in (dict(box=boxes), dict(point_coords=points)):
            outs = sess.run(None, onnx_prompt_inputs(predictor, **kw))
            ref = predictor.predict_torch(*predictor.transform_prompts(kw.get('point_coords'), None,
                                                                       kw.get('box'), None))
            worst['mask_logits'] = max(worst['mask_logits'],
                                       float(np.abs(outs[0] - ref['low_res_logits'].cpu().numpy()).max()))
            worst['class_scores'] = max(worst['class_scores'],
                                        float(np.abs(outs[1] - ref['scores_log'].cpu().numpy()).max()))
    return worst


def check_deployment(predictor, out_dir: str, seed: int = 0) -> dict:
    """The ``ovsam_onnx`` runtime against ``predictor`` on a generated scene of
    shapes (not square, so it is resized), with box, point and box + point
    prompts: the worst mask IoU, the share of equal labels, max differences."""
    import numpy as np
    from ovsam.datasets.shapes import SHAPE_CLASSES, render_scene
    from ovsam_onnx import OVSAMOnnxPredictor
    size = predictor.input_size
    img, inst = render_scene(np.random.default_rng(seed), list(SHAPE_CLASSES), image_size=size + size // 4,
                             min_objects=3, max_objects=6)
    img = np.ascontiguousarray(img[:size, :, ::-1])  # BGR -> RGB, longer than wide
    boxes, points = [], []
    for _, m in inst:
        ys, xs = np.nonzero(m[:size])
        if len(ys) > 20:
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            points.append([[xs[len(xs) // 2], ys[len(ys) // 2]]])
    boxes, points = np.array(boxes, np.float32), np.array(points, np.float32)
    runtime = OVSAMOnnxPredictor(out_dir)
    runtime.set_image(img)
    predictor.set_image(img)
    ious, same, lowres, probs = [], [], 0.0, 0.0
    for kw in (dict(box=boxes), dict(point_coords=points), dict(box=boxes, point_coords=points)):
        a, b = runtime.predict(**kw), predictor.predict(**kw)
        union = (a.masks | b.masks).sum((1, 2))
        ious += np.where(union > 0, (a.masks & b.masks).sum((1, 2)) / np.maximum(union, 1), 1.0).tolist()
        same += (a.labels == b.labels).tolist()
        lowres = max(lowres, float(np.abs(a.low_res_logits - b.low_res_logits).max()))
        probs = max(probs, float(np.abs(a.class_probs - b.class_probs).max()))
    return dict(prompts=len(same), min_mask_iou=min(ious), label_agreement=float(np.mean(same)),
                low_res_logits=lowres, class_probs=probs)


def main(argv=None):
    args = parse_args(argv)
    from ovsam.apis import OVSAMPredictor
    from ovsam.apis.onnx_export import export_deployment, export_prompt_model
    if args.tiny:
        pred = OVSAMPredictor.from_tiny(device=args.device, config=args.config,
                                        vocabulary=args.vocabulary or 'shapes')
    else:
        if not args.config:
            raise SystemExit('--config is required (or --tiny)')
        pred = OVSAMPredictor.from_config(args.config, args.checkpoint, device=args.device,
                                          clip_checkpoint=args.clip_checkpoint, vocabulary=args.vocabulary)
    if pred.num_classes <= 0:
        raise SystemExit('the model has no vocabulary: pass --vocabulary')
    if args.out_dir:
        manifest = export_deployment(pred.model, args.out_dir, opset=args.opset, class_names=pred.class_names)
        print(f'wrote {args.out_dir}: {manifest["image_encoder"]}, {manifest["prompt_decoder"]}, '
              f'{manifest["vocabulary"]} ({pred.num_classes} classes), manifest.json')
        if args.check:
            res = check_deployment(pred, args.out_dir)
            print(f'ovsam_onnx vs OVSAMPredictor, {res["prompts"]} prompts: min mask IoU {res["min_mask_iou"]:.4f}, '
                  f'labels equal {res["label_agreement"]:.3f}, max |d low-res logits| {res["low_res_logits"]:.2e}, '
                  f'max |d class probs| {res["class_probs"]:.2e}')
            if res['min_mask_iou'] < 0.99 or res['label_agreement'] < 1.0:
                raise SystemExit('the ONNX runtime differs from PyTorch')
    if not args.out:
        return 0
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    export_prompt_model(pred.model, args.out, opset=args.opset, class_names=pred.class_names)
    print(f'wrote {args.out} ({pred.num_classes} classes)')
    if args.check:
        diffs = check_export(pred, args.out)
        print('max |onnxruntime - pytorch|: ' + ', '.join(f'{k} {v:.2e}' for k, v in diffs.items()))
        if diffs['mask_logits'] > 1e-3 or diffs['class_scores'] > 1e-3:
            raise SystemExit('ONNX output differs from PyTorch')
    return 0


if __name__ == '__main__':
    sys.exit(main())
