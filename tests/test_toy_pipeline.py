"""The toy pipeline (tools/toy/pipeline.py) runs every stage in one process
through the package's API; the installable package holds no orchestration."""
import importlib.util
import json
import os.path as osp
import subprocess
import sys

import pytest

from conftest import ROOT


def test_package_holds_no_orchestration():
    assert importlib.util.find_spec('ovsam.toy_pipeline') is None


@pytest.mark.slow
def test_stage_limited_run(tmp_path):
    wd = str(tmp_path / 'toy')
    # the default data (colour independent of class) with the region recipe of stage 0
    tiny = ['--num-train', '8', '--num-val', '2', '--num-sa1b', '8', '--sam-iters', '2', '--clip-steps', '2',
            '--clip-recipe', 'regions', '--clip-crop-steps', '2',
            '--sam2clip-iters', '2', '--clip2sam-iters', '2', '--work-dir', wd]
    r = subprocess.run([sys.executable, 'tools/tiny_pipeline.py', *tiny], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert 'box   prompts' in r.stdout and 'target mIoU >= 0.7, accuracy >= 0.8' in r.stdout
    assert 'target mIoU >= 0.6, accuracy >= 0.7' in r.stdout and 'lose at most 0.1 of either' in r.stdout
    with open(osp.join(wd, 'summary.json')) as f:
        summary = json.load(f)
    assert set(summary['metrics']) == {'box', 'point'} and osp.isfile(summary['png'])
    import torch
    vocab = torch.load(osp.join(wd, 'clip', 'shapes_vocabulary.pth'), weights_only=True)
    assert tuple(vocab['embeddings'].shape[::2]) == (10, 64) and vocab['class_names'][0] == 'circle,disc'
    assert 'tiny CLIP (regions)' in r.stdout
    with open(osp.join(wd, 'clip', 'trained_with.json')) as f:
        assert json.load(f) == dict(recipe='regions', steps=2, seed=0, crop_steps=2)
