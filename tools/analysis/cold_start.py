#!/usr/bin/env python
"""Cold start at real size: build the model and load the four official files.

    python tools/analysis/cold_start.py make work_dirs/cold_start    # random files in the official layouts (~5 GB)
    python tools/analysis/cold_start.py load work_dirs/cold_start    # time + peak RSS, in a fresh process

``make`` writes random-weight files in exactly the released layouts
(``RN50x16.pt`` as an open_clip state dict, ``sam2clip_vith_rn50x16.pth``
with ``backbone_student.*`` / ``neck_student.*``, ``clip2sam_coco_rn50x16.pth``
with ``fpn_neck.*`` / ``mask_decoder.*``, SAM-H's ``sam_vit_h_4b8939.pth``).
``load`` runs, in its own process, what a user's first line does
(``MODELS.build(cfg.model)`` with ``model.checkpoints`` set, then
``OVSAMPredictor(model)``) and prints the seconds and the process's peak RSS
(``ru_maxrss``), with the files in the page cache (run it twice to see that).
"""
import argparse
import os
import os.path as osp
import resource
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CFG = osp.join(ROOT, 'configs', '_base_', 'models', 'ovsam_rn50x16.py')
FILES = dict(clip='RN50x16.pt', sam2clip='sam2clip_vith_rn50x16.pth', clip2sam='clip2sam_coco_rn50x16.pth',
             sam='sam_vit_h_4b8939.pth')


def make(folder: str) -> None:
    import open_clip
    import torch
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from segment_anything import sam_model_registry

    import ovsam  # noqa: F401
    from ovsam.fileio import atomic_save_torch
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(CFG).model)
    prefixed = lambda p, sd: {f'{p}.{k}': v for k, v in sd.items()}  # noqa: E731
    atomic_save_torch(osp.join(folder, FILES['clip']), open_clip.create_model('RN50x16').state_dict())
    atomic_save_torch(osp.join(folder, FILES['sam2clip']), dict(state_dict={
        **prefixed('backbone_student', model.backbone.state_dict()),
        **prefixed('neck_student', model.neck.state_dict())}))
    atomic_save_torch(osp.join(folder, FILES['clip2sam']), dict(state_dict={
        **prefixed('fpn_neck', model.fpn_neck.state_dict()),
        **prefixed('mask_decoder', model.mask_decoder.state_dict())}))
    atomic_save_torch(osp.join(folder, FILES['sam']), sam_model_registry['vit_h'](checkpoint=None).state_dict())
    for name in FILES.values():
        print(f'{name}: {osp.getsize(osp.join(folder, name)) / 2**30:.2f} GiB')


def load(folder: str, threads: int, no_mmap: bool = False) -> None:
    import torch
    torch.set_num_threads(threads)
    if no_mmap:  # the A/B: every file read whole, as before safe_load mapped them
        plain_load = torch.load
        torch.load = lambda *a, mmap=None, **k: plain_load(*a, **k)
    t = time.perf_counter()
    from mmdet.registry import MODELS
    from mmengine.config import Config

    import ovsam  # noqa: F401
    from ovsam.apis import OVSAMPredictor
    t_import = time.perf_counter() - t
    cfg = Config.fromfile(CFG)
    cfg.model.checkpoints = {k: osp.join(folder, v) for k, v in FILES.items()}
    t = time.perf_counter()
    model = MODELS.build(cfg.model)
    t_build = time.perf_counter() - t
    pred = OVSAMPredictor(model, allow_random_text=True)
    total = time.perf_counter() - t
    n = sum(p.numel() for p in pred.model.parameters())
    print(f'cold start: build + load the 4 official files {t_build:.1f} s, + predictor {total:.1f} s '
          f'(imports {t_import:.1f} s before); peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} '
          f'GiB for {n / 1e6:.0f} M parameters ({n * 4 / 2**30:.2f} GiB fp32)')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('mode', choices=('make', 'load'))
    p.add_argument('folder')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--no-mmap', action='store_true', help='read every file whole (the A/B against mapping)')
    p.add_argument('--in-process', action='store_true', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.mode == 'make':
        make(args.folder)
        return 0
    missing = [v for v in FILES.values() if not osp.isfile(osp.join(args.folder, v))]
    if missing:
        p.error(f'{args.folder} lacks {missing}: run `python {sys.argv[0]} make {args.folder}` first')
    if args.in_process:
        load(args.folder, args.threads, args.no_mmap)
        return 0
    return subprocess.call([sys.executable, osp.abspath(__file__), 'load', args.folder, '--threads',
                            str(args.threads), '--in-process'] + (['--no-mmap'] if args.no_mmap else []))


if __name__ == '__main__':
    sys.exit(main())
