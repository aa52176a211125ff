"""ovsam.config_path: the supported way for MMDet users to reach the shipped
configs (``ovsam::`` package scope does not resolve in mmengine)."""
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from ovsam import config_path as cp
from ovsam.fileio import atomic_save_text

CONFIGS = osp.join(ROOT, 'configs')


def _all_repo_configs():
    out = []
    for folder, _, files in os.walk(CONFIGS):
        out += [osp.relpath(osp.join(folder, f), CONFIGS).replace(os.sep, '/') for f in files if f.endswith('.py')]
    return sorted(out)


def test_every_repo_config_is_listed_and_found():
    names = _all_repo_configs()
    assert len(names) > 10 and set(names) <= set(cp.list_configs())
    for n in names:
        path = cp.ovsam_config_path(n)
        assert osp.isabs(path) and osp.isfile(path)
        assert osp.samefile(path, osp.join(CONFIGS, n))


@pytest.mark.parametrize('name, rel', [
    ('clip2sam_rn50x16_12e_coco-ov.py', 'clip2sam_rn50x16_12e_coco-ov.py'),
    ('clip2sam_rn50x16_12e_coco-ov', 'clip2sam_rn50x16_12e_coco-ov.py'),
    ('ovsam::ovsam_coco.py', 'ovsam_coco.py'),
    ('configs/tiny/clip2sam_tiny_1400it_shapes.py', 'tiny/clip2sam_tiny_1400it_shapes.py'),
    ('ovsam_tiny_box-prompt_shapes.py', 'eval/ovsam_tiny_box-prompt_shapes.py'),  # unique bare name
    ('_base_/models/ovsam_tiny.py', '_base_/models/ovsam_tiny.py'),
])
def test_names(name, rel):
    assert osp.samefile(cp.ovsam_config_path(name), osp.join(CONFIGS, rel))


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match='close matches: clip2sam_rn50x16_12e_coco-ov.py'):
        cp.ovsam_config_path('clip2sam_rn50x16_12e_coco.py')
    with pytest.raises(ValueError, match='ovsam_coco.py'):
        cp.ovsam_config_path('ovsam_cocoo')
    with pytest.raises(ValueError, match='no close match'):
        cp.ovsam_config_path('zzzzzzzzzzzzzzzz')
    with pytest.raises(ValueError):
        cp.ovsam_config_path('')


def test_installed_copy_is_found(tmp_path, monkeypatch):
    """A wheel install: configs only under site-packages/ovsam/.mim/configs."""
    pkg = tmp_path / 'site-packages' / 'ovsam'
    shutil.copytree(CONFIGS, pkg / '.mim' / 'configs')
    monkeypatch.setattr(cp, '_PKG', str(pkg))
    assert cp.config_roots() == [osp.realpath(pkg / '.mim' / 'configs')]
    path = cp.ovsam_config_path('ovsam_coco.py')
    assert path == osp.join(osp.realpath(pkg), '.mim', 'configs', 'ovsam_coco.py')


def test_user_config_with_absolute_base_loads(tmp_path):
    from mmengine.config import Config
    base = cp.ovsam_config_path('clip2sam_rn50x16_12e_coco-ov.py')
    user = tmp_path / 'my_ovsam.py'
    atomic_save_text(str(user), f"_base_ = [{base!r}]\n"
                     "custom_imports = dict(imports=['ovsam'], allow_failed_imports=False)\n"
                     "train_cfg = dict(max_epochs=1)\n")
    cfg = Config.fromfile(str(user))
    assert cfg.model.type == 'OVSAM'
    assert cfg.train_cfg.max_epochs == 1 and cfg.custom_imports.imports == ['ovsam']


def test_command_line(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    run = subprocess.run([sys.executable, '-m', 'ovsam.config_path', 'ovsam_coco.py'], capture_output=True,
                         text=True, cwd=str(tmp_path), env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert osp.samefile(run.stdout.strip(), osp.join(CONFIGS, 'ovsam_coco.py'))
    run = subprocess.run([sys.executable, '-m', 'ovsam.config_path', 'ovsam_cocoo.py'], capture_output=True,
                         text=True, cwd=str(tmp_path), env=env, timeout=120)
    assert run.returncode == 2 and 'ovsam_coco.py' in run.stderr and not run.stdout
