"""Evaluation through mmengine's Runner: the tiny shapes eval config, in one
process and (slow) with tools/dist_test.sh on 2 CPU processes (gloo)."""
import glob
import json
import os
import os.path as osp
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config

from conftest import ROOT

CFG = osp.join(ROOT, 'configs', 'eval', 'ovsam_tiny_box-prompt_shapes.py')
NUM_VAL = 7  # odd: the distributed sampler pads one rank, the metrics must drop the repeat


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """Generated val images, a random vocabulary and a tiny checkpoint."""
    from ovsam.datasets import SHAPE_CLASSES, generate_shapes_dataset
    from ovsam.registry import MODELS
    from ovsam.vocabulary import save_text_embeddings
    root = tmp_path_factory.mktemp('tiny_eval')
    data = generate_shapes_dataset(str(root / 'shapes'), num_train=0, num_val=NUM_VAL, image_size=256, sa1b=False,
                                   seed=11)
    vocab = str(root / 'vocab.pth')
    save_text_embeddings(vocab, torch.randn(len(SHAPE_CLASSES), 2, 64, generator=torch.Generator().manual_seed(2)),
                         SHAPE_CLASSES)
    cfg = Config.fromfile(CFG)
    cfg.model.mask_decoder.classifier.vocabulary = vocab
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    ckpt = str(root / 'tiny.pth')
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), ckpt)
    options = {
        'test_dataloader.dataset.data_root': data['out_dir'] + '/',
        'test_evaluator.1.ann_file': data['val']['ann_file'],
        'model.mask_decoder.classifier.vocabulary': vocab,
    }
    return dict(root=str(root), data=data, vocab=vocab, ckpt=ckpt, options=options, state_dict=model.state_dict())


def test_runner_metrics_equal_direct_evaluation(setup, tmp_path):
    """tools/test.py's path (Runner + config + checkpoint) gives the metrics of
    running the same model by hand."""
    from mmengine.dataset import pseudo_collate
    from mmengine.evaluator import Evaluator
    from mmengine.runner import Runner
    from ovsam.registry import DATASETS, MODELS
    small = {'test_dataloader.dataset.indices': 3}  # keep it fast: 3 of the images
    cfg = Config.fromfile(CFG)
    cfg.merge_from_dict(dict(setup['options'], **small))
    cfg.work_dir = str(tmp_path)
    cfg.load_from = setup['ckpt']
    cfg.launcher = 'none'
    metrics = Runner.from_cfg(cfg).test()

    cfg = Config.fromfile(CFG)
    cfg.merge_from_dict(dict(setup['options'], **small))
    model = MODELS.build(cfg.model).eval()
    model.load_state_dict(setup['state_dict'], strict=False)  # the vocabulary is a non-persistent buffer
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    evaluator = Evaluator([dict(m) for m in cfg.test_evaluator])
    evaluator.dataset_meta = dataset.metainfo
    for i in range(len(dataset)):
        batch = pseudo_collate([dataset[i]])
        with torch.no_grad():
            evaluator.process(model.test_step(batch), batch)
    direct = evaluator.evaluate(len(dataset))
    n_inst = sum(len(dataset.get_data_info(i)['instances']) for i in range(3))
    assert len(dataset) == 3 and direct['prompt/num_prompts'] == n_inst
    assert direct.keys() == metrics.keys()
    for k, v in direct.items():
        assert metrics[k] == pytest.approx(v, abs=1e-9), k


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _run_test(setup, work_dir, nprocs):
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHON=sys.executable,
               PORT=str(_free_port()))
    env.pop('CUDA_VISIBLE_DEVICES', None)
    opts = [f'{k}={v}' for k, v in setup['options'].items()]
    out = osp.join(work_dir, 'preds.pkl')
    common = [CFG, setup['ckpt'], '--work-dir', work_dir, '--out', out, '--cfg-options', *opts]
    if nprocs == 1:
        cmd = [sys.executable, osp.join(ROOT, 'tools', 'test.py'), *common]
    else:
        cmd = ['bash', osp.join(ROOT, 'tools', 'dist_test.sh'), common[0], common[1], str(nprocs), *common[2:]]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    logs = glob.glob(osp.join(work_dir, '*', '*.json'))
    assert len(logs) == 1, logs
    with open(logs[0]) as f:
        metrics = json.loads(f.read().strip().splitlines()[-1])
    with open(logs[0][:-len('.json')] + '.log') as f:
        log = f.read()
    assert ('Distributed training: True' in log) == (nprocs > 1)
    with open(out, 'rb') as f:
        preds = pickle.load(f)  # our own file, written just now
    return metrics, preds


@pytest.mark.slow
def test_two_process_eval_equals_one_process(setup, tmp_path):
    one, preds1 = _run_test(setup, str(tmp_path / 'one'), 1)
    two, preds2 = _run_test(setup, str(tmp_path / 'two'), 2)
    keys = [k for k in one if k.startswith(('prompt/', 'coco/'))]
    assert 'prompt/miou' in keys and 'coco/segm_mAP' in keys
    for k in keys:
        assert two[k] == one[k], k
    # every image exactly once (the sampler's padding repeat is dropped), same predictions
    assert sorted(p['img_id'] for p in preds2) == sorted(p['img_id'] for p in preds1) == list(range(1, NUM_VAL + 1))
    by_id = {p['img_id']: p['pred_instances'] for p in preds2}
    for p in preds1:
        a, b = p['pred_instances'], by_id[p['img_id']]
        assert torch.equal(a['labels'], b['labels'])
        torch.testing.assert_close(a['scores'], b['scores'], atol=1e-6, rtol=0)
        assert [m['counts'] for m in a['masks']] == [m['counts'] for m in b['masks']]
    assert np.isfinite(one['prompt/miou'])
