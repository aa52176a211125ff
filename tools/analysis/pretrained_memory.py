"""Peak RSS of saving / loading the real-size (RN50x16 / SAM-H width) model as a one-folder model.

Run each mode in a fresh process (peak RSS is per process)::

    python tools/analysis/pretrained_memory.py save work_dirs/real_folder
    python tools/analysis/pretrained_memory.py from_pretrained work_dirs/real_folder
    python tools/analysis/pretrained_memory.py build_only work_dirs/real_folder
    python tools/analysis/pretrained_memory.py build_load_file work_dirs/real_folder   # safetensors load_file
"""
import resource, sys, time, os
import torch
torch.set_num_threads(1)
mode, folder = sys.argv[1], sys.argv[2]
CFG = 'configs/_base_/models/ovsam_rn50x16.py'
def rss(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB
import ovsam  # noqa
from mmengine.config import Config
from mmdet.registry import MODELS
base = rss()
t = time.time()
if mode == 'save':
    from ovsam.pretrained import save_pretrained
    cfg = Config.fromfile(CFG)
    torch.manual_seed(0)
    m = MODELS.build(cfg.model).eval()
    m.mask_decoder.classifier.set_vocabulary(torch.randn(80, 1, 768), [f'c{i}' for i in range(80)])
    save_pretrained(m, folder, config=cfg, overwrite=True)
elif mode == 'from_pretrained':
    from ovsam.pretrained import from_pretrained
    m = from_pretrained(folder).model
elif mode == 'build_only':
    m = MODELS.build(Config.fromfile(CFG).model)
elif mode == 'build_load_file':  # the usual way: random build + safetensors.load_file + load_state_dict
    from safetensors.torch import load_file
    m = MODELS.build(Config.fromfile(CFG).model)
    m.load_state_dict(load_file(os.path.join(folder, 'model.safetensors')), strict=True)
n = sum(p.numel() for p in m.parameters())
print(f'{mode}: {time.time() - t:.1f} s, peak RSS {rss():.2f} GiB (after imports {base:.2f} GiB), '
      f'{n / 1e6:.1f} M parameters = {n * 4 / 2**30:.2f} GiB fp32')
