#!/usr/bin/env python
"""CPU latency of the torch-free ONNX runtime (``ovsam_onnx``) against PyTorch.

For each size (``tiny``: the test model at 256 px; ``real``: CLIP RN50x16 +
the ViT-H-width SAM2CLIP adapter + SAM-H decoder at 1024 px, the released
architecture), a model with random weights and a random vocabulary is built,
exported with :func:`ovsam.apis.onnx_export.export_deployment`, and both
predictors see the same generated scene of shapes and the same box prompts:

* image side: ``set_image`` (conversion, resize, image encoder);
* decode + recognition: the model's per-prompt maths alone for
  ``--num-prompts`` boxes (PyTorch: ``OVSAM.pe`` + ``OVSAM.predict_prompts``;
  onnxruntime: the prompt decoder graph);
* the whole ``predict(box=...)`` call, which adds the prompt checks and the
  masks at the original size (stability scores, confidences, top-k);
* agreement of the two: worst mask IoU and the share of equal labels.

Each is the median of ``--repeats`` rounds after a warm-up round; in every
round the PyTorch and onnxruntime calls alternate, so both see the same load
on a shared machine (the load average is recorded).

PyTorch runs ``OVSAMPredictor`` with its CPU fast paths (the default);
onnxruntime runs the exported graphs with its default graph optimisations.
Both use ``--threads`` threads. The export itself and the session start-up are
timed too. Prints a table; ``--out`` writes the numbers as JSON.

Examples::

    python tools/analysis/benchmark_onnx.py --sizes tiny                 # seconds
    python tools/analysis/benchmark_onnx.py --sizes tiny real --out work_dirs/benchmark_onnx.json  # minutes
"""
import argparse
import gc
import os
import os.path as osp
import sys
import tempfile
import time

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = dict(tiny=osp.join(ROOT, 'configs', '_base_', 'models', 'ovsam_tiny.py'),
               real=osp.join(ROOT, 'configs', '_base_', 'models', 'ovsam_rn50x16.py'))


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def timed(fn, repeats: int):
    """(median seconds of ``repeats`` calls after one warm-up call, last result)."""
    out = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return median(times), out


def build_model(size: str, num_classes: int, synonyms: int):
    """The config's OVSAM with random weights and a random vocabulary (plain modules)."""
    import logging

    import torch
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.logging import MMLogger

    import ovsam  # noqa: F401
    cfg = Config.fromfile(CONFIGS[size])
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    dim = model.mask_decoder.embed_dim
    g = torch.Generator().manual_seed(1)
    model.mask_decoder.classifier.set_vocabulary(torch.randn(num_classes, synonyms, dim, generator=g),
                                                 [f'class{i}' for i in range(num_classes)])
    return model.eval()


def scene(input_size: int, num_prompts: int, seed: int = 0):
    """A generated RGB scene (4:3, so both predictors resize it) and box prompts on its objects."""
    import numpy as np

    from ovsam.datasets.shapes import SHAPE_CLASSES, render_scene
    side = input_size + input_size // 3
    img, inst = render_scene(np.random.default_rng(seed), list(SHAPE_CLASSES), image_size=side, min_objects=4,
                             max_objects=8)
    h = side * 3 // 4
    img = np.ascontiguousarray(img[:h, :, ::-1])
    boxes = []
    for _, m in inst:
        ys, xs = np.nonzero(m[:h])
        if len(ys) > 20:
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    boxes = np.array(boxes, np.float32)
    reps = -(-num_prompts // len(boxes))
    jitter = np.random.default_rng(seed + 1).uniform(-2, 2, (reps * len(boxes), 4)).astype(np.float32)
    boxes = np.tile(boxes, (reps, 1))[:num_prompts] + jitter[:num_prompts]
    boxes = np.clip(boxes, 0, [img.shape[1], h, img.shape[1], h])
    return img, boxes


def file_mib(folder: str) -> dict:
    return {n: os.path.getsize(osp.join(folder, n)) / 2**20 for n in sorted(os.listdir(folder))}


def run_size(size: str, args) -> dict:
    """Build, export and time one size; PyTorch and onnxruntime calls alternate
    (one of each per round), so that both see the same load on a shared machine."""
    import numpy as np
    import torch

    from ovsam.apis import OVSAMPredictor
    from ovsam.apis.onnx_export import export_deployment
    from ovsam_onnx import OVSAMOnnxPredictor
    from ovsam_onnx.layout import PROMPT_OUTPUTS, encode_prompts
    torch.set_num_threads(args.threads)
    res = dict(size=size, threads=args.threads, num_prompts=args.num_prompts, num_classes=args.num_classes,
               load_average_start=os.getloadavg())
    t = time.perf_counter()
    model = build_model(size, args.num_classes, args.synonyms)
    res['params_m'] = sum(p.numel() for p in model.parameters()) / 1e6
    res['build_s'] = time.perf_counter() - t
    out_dir = osp.join(args.work_dir, f'ovsam_{size}_onnx')
    t = time.perf_counter()
    export_deployment(model, out_dir)
    res['export_s'] = time.perf_counter() - t
    res['files_mib'] = file_mib(out_dir)
    gc.collect()
    img, boxes = scene(int(model.pe.input_image_size[0]), args.num_prompts)
    res['image_shape'] = list(img.shape[:2])
    pred = OVSAMPredictor(model)  # CPU fast paths on, as by default
    t = time.perf_counter()
    runtime = OVSAMOnnxPredictor(out_dir, num_threads=args.threads)
    res['ort_session_s'] = time.perf_counter() - t

    def torch_decode():
        """The model's per-prompt maths only (prompt encoder, decode, recognise, ensemble)."""
        st = pred.image_state
        b = torch.from_numpy(boxes * np.tile(np.array(st.meta['scale_factor'], np.float32), 2))
        sparse, dense = model.pe(None, b, None)
        return model.predict_prompts(st.feats, sparse, dense, prompt_boxes=b)

    def ort_decode():
        st = runtime.image_state
        pc, pl = encode_prompts(None, None, boxes * np.tile(np.array(st.meta['scale_factor'], np.float32), 2))
        feeds = dict(st.feats, point_coords=pc, point_labels=pl, has_mask_input=np.zeros(1, np.float32),
                     mask_input=np.zeros((len(pc), 1) + runtime.mask_input_size, np.float32),
                     **runtime.vocabulary.feeds)
        return runtime.prompt_session.run(PROMPT_OUTPUTS, feeds)

    calls = dict(torch_image=lambda: pred.set_image(img), ort_image=lambda: runtime.set_image(img),
                 torch_prompts=lambda: pred.predict(box=boxes), ort_prompts=lambda: runtime.predict(box=boxes),
                 torch_decode=torch_decode, ort_decode=ort_decode)
    times = {k: [] for k in calls}
    outs = {}
    with torch.no_grad():
        for round_ in range(args.repeats + 1):  # round 0 warms up
            for name, fn in calls.items():
                t = time.perf_counter()
                outs[name] = fn()
                if round_:
                    times[name].append(time.perf_counter() - t)
    for name, ts in times.items():
        res[f'{name}_s'] = median(ts)
        res[f'{name}_all_s'] = ts
    ref, out = outs['torch_prompts'], outs['ort_prompts']
    union = (out.masks | ref.masks).sum((1, 2))
    iou = np.where(union > 0, (out.masks & ref.masks).sum((1, 2)) / np.maximum(union, 1), 1.0)
    res['min_mask_iou'] = float(iou.min())
    res['label_agreement'] = float((out.labels == ref.labels).mean())
    res['load_average_end'] = os.getloadavg()
    del pred, model, runtime, outs, ref, out
    gc.collect()
    return res


def table(results) -> str:
    rows = ['| size | runtime | image side (s) | decode + recognition (ms / prompt) | predict call, masks at full size '
            '(ms / prompt) | export (s) | session start (s) | files (MiB) | min mask IoU / labels equal |',
            '| --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    for r in results:
        n = r['num_prompts']
        mib = sum(r['files_mib'].values())
        rows.append(f"| {r['size']} ({r['params_m']:.0f} M params) | PyTorch (fast paths) | {r['torch_image_s']:.3f} | "
                    f"{1e3 * r['torch_decode_s'] / n:.1f} | {1e3 * r['torch_prompts_s'] / n:.1f} | | | | |")
        rows.append(f"| | onnxruntime | {r['ort_image_s']:.3f} | {1e3 * r['ort_decode_s'] / n:.1f} | "
                    f"{1e3 * r['ort_prompts_s'] / n:.1f} | {r['export_s']:.1f} | {r['ort_session_s']:.1f} | "
                    f"{mib:.0f} | {r['min_mask_iou']:.4f} / {r['label_agreement']:.3f} |")
    return '\n'.join(rows)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--sizes', nargs='+', choices=sorted(CONFIGS), default=['tiny'],
                   help='model sizes to measure (real: RN50x16 + ViT-H-width adapter at 1024 px, minutes)')
    p.add_argument('--repeats', type=int, default=3, help='timed calls after one warm-up call (median)')
    p.add_argument('--num-prompts', type=int, default=10, help='box prompts per predict call')
    p.add_argument('--num-classes', type=int, default=80, help='size of the random vocabulary')
    p.add_argument('--synonyms', type=int, default=1)
    p.add_argument('--threads', type=int, default=os.cpu_count() or 1, help='threads of torch and onnxruntime')
    p.add_argument('--work-dir', help='where the exported models go (default: a temporary folder)')
    p.add_argument('--out', help='write the numbers as JSON')
    args = p.parse_args(argv)
    for name in ('repeats', 'num_prompts', 'num_classes', 'synonyms', 'threads'):
        if getattr(args, name) < 1:
            p.error(f'--{name.replace("_", "-")} must be >= 1')
    return args


def main(argv=None):
    args = parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.work_dir is None:
            args.work_dir = tmp
        for size in args.sizes:
            print(f'[{size}] building, exporting, timing ...', flush=True)
            results.append(run_size(size, args))
    print(table(results))
    if args.out:
        from ovsam.fileio import atomic_save_json
        atomic_save_json(args.out, dict(argv=sys.argv[1:], results=results), indent=1)
        print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
