"""Runtime helpers shared by the tools."""
import os

import torch


def setup_cpu_distributed(cfg, launcher: str) -> None:
    """Make mmengine's ``pytorch`` launcher work on machines without CUDA.

    mmengine 0.10.7 calls ``torch.cuda.set_device`` when it initialises the
    process group and gives DDP ``device_ids=[LOCAL_RANK]``; both fail on CPU.
    Initialising a gloo group first (mmengine then skips its own) and wrapping
    the model without device ids keeps ``tools/dist_train.sh`` usable on CPU.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo', rank=int(os.environ['RANK']),
                                world_size=int(os.environ['WORLD_SIZE']))
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
    wrapper = dict(cfg.get('model_wrapper_cfg', None) or dict(type='MMDistributedDataParallel'))
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper


def teardown_distributed() -> None:
    """Destroy the process group before the interpreter exits.

    Left to interpreter shutdown, gloo's threads can be torn down while still
    joinable ("terminate called without an active exception", SIGABRT), which
    makes a finished distributed run exit non-zero.
    """
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
