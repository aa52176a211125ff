"""``import ovsam`` changes no global state of other libraries; mmengine's
runner gets weights-only checkpoint loading and atomic writes only when a run
opts in (ovsam.engine: the tools, or the configs' SafeCheckpointsHook)."""
import glob
import json
import os.path as osp
import subprocess
import sys

import pytest

from conftest import ROOT

# Prints what other libraries hold that ovsam used to change at import.
_STATE = r'''
import json, torch
from mmengine.fileio import io as mmengine_io
from mmengine.fileio.backends import registry_utils
from mmengine.runner.checkpoint import CheckpointLoader

def state():
    name = lambda f: None if f is None else f'{f.__module__}.{f.__qualname__}'
    return dict(
        safe_globals=sorted(map(repr, torch.serialization.get_safe_globals())),
        schemes={k: name(v) for k, v in CheckpointLoader._schemes.items()},
        backends={k: name(v) for k, v in registry_utils.backends.items()},
        prefixes={k: name(v) for k, v in registry_utils.prefix_to_backends.items()},
        local_put=name(registry_utils.backends['local'].put),
        instances=sorted(type(v).__name__ for v in mmengine_io.backend_instances.values()))
'''


def _run(code):
    r = subprocess.run([sys.executable, '-c', _STATE + code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_import_changes_no_global_state(tmp_path):
    ckpt = str(tmp_path / 'epoch_1.pth')
    out = _run(f'''
import numpy as np
from mmengine.fileio import get_file_backend
get_file_backend('/tmp/x')  # a cached local backend instance, as a runner would leave
# the libraries ovsam imports first: their own import-time registrations are theirs
import torch._dynamo, mmdet.datasets, mmdet.engine, mmdet.evaluation, mmdet.models, open_clip, segment_anything  # noqa
before = state()
import ovsam, ovsam.models, ovsam.apis, ovsam.datasets, ovsam.evaluation  # noqa
after_import = state()
# safe_load allows mmengine's objects for its own call only
from mmengine.logging import MessageHub
hub = MessageHub.get_instance('h')
hub.update_scalar('train/loss', np.float64(0.5))
torch.save(dict(meta=dict(iter=3, seed=np.int64(7), dtype=np.dtype('float32'), message_hub=hub.state_dict()),
                state_dict={{}}), {ckpt!r})
from ovsam.checkpoint import safe_load
loaded = safe_load({ckpt!r})['meta']['iter']
after_load = state()
from ovsam.engine import disable_safe_mmengine_checkpoints, enable_safe_mmengine_checkpoints
enable_safe_mmengine_checkpoints()
enable_safe_mmengine_checkpoints()  # idempotent
enabled = state()
from mmengine.runner import load_checkpoint
via_mmengine = load_checkpoint(torch.nn.Linear(1, 1), {ckpt!r}, strict=False)['meta']['iter']
disable_safe_mmengine_checkpoints()
print(json.dumps(dict(before=before, after_import=after_import, after_load=after_load, loaded=loaded,
                      enabled=enabled, via_mmengine=via_mmengine, disabled=state())))
''')
    before = out['before']
    assert out['after_import'] == before
    assert out['loaded'] == 3 and out['after_load'] == before
    # opting in changes the '' loader and the local backend, and nothing global in torch
    enabled = out['enabled']
    assert enabled['schemes'][''] == 'ovsam.engine._local_checkpoint_loader'
    assert enabled['backends']['local'].endswith('AtomicLocalBackend')
    assert enabled['safe_globals'] == before['safe_globals']
    assert 'LocalBackend' not in enabled['instances']  # cached plain backends are dropped
    assert out['via_mmengine'] == 3
    assert out['disabled'] == before


def test_hook_opts_in_when_built():
    """The runner builds its hooks in its constructor, before load_from / resume."""
    out = _run('''
import ovsam
from mmdet.registry import HOOKS
before = state()
HOOKS.build(dict(type='SafeCheckpointsHook'))
print(json.dumps(dict(before=before, after=state())))
''')
    assert out['before']['schemes'][''] != 'ovsam.engine._local_checkpoint_loader'
    assert out['after']['schemes'][''] == 'ovsam.engine._local_checkpoint_loader'


def _runnable_configs():
    paths = glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True)
    return sorted(osp.relpath(p, ROOT) for p in paths if '_base_' not in p.split(osp.sep))


@pytest.mark.parametrize('path', _runnable_configs())
def test_every_config_opts_in(path):
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(ROOT, path))
    assert cfg.default_hooks.safe_checkpoints == dict(type='SafeCheckpointsHook'), path
