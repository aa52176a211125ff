#!/usr/bin/env python
"""Export OV-SAM's prompt-side model (prompt encoder, CLIP2SAM decoder,
recognition head, classifier, frozen-CLIP ensemble) to ONNX.

The image features (SAM image embedding, FPN levels, CLIP C5) are inputs: run
the image side once in PyTorch (``OVSAMPredictor.set_image``) and the exported
graph for any number of prompts. See ``ovsam/apis/onnx_export.py`` for the
input/output layout. The vocabulary is baked in (class names in the metadata).

Examples::

    # the tiny random model (tests, demos)
    python tools/deployment/export_onnx.py --tiny --out work_dirs/ovsam_tiny_prompt.onnx --check
    # a trained model with COCO's vocabulary from a precomputed embedding file
    python tools/deployment/export_onnx.py --config configs/_base_/models/ovsam_rn50x16.py \
        --checkpoint ovsam_coco.pth --vocabulary data/embeddings/rn50x16_coco.pth --out ovsam_prompt.onnx

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
    p.add_argument('--out', required=True, help='output .onnx file')
    p.add_argument('--opset', type=int, default=17)
    p.add_argument('--device', default='cpu')
    p.add_argument('--check', action='store_true',
                   help='compare onnxruntime with PyTorch on a random image (1 and 7 prompts)')
    return p.parse_args(argv)


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


def main(argv=None):
    args = parse_args(argv)
    from ovsam.apis import OVSAMPredictor
    from ovsam.apis.onnx_export import export_prompt_model
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
