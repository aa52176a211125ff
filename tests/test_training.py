"""Training end to end on generated data: bad data, DDP equivalence, resume after SIGKILL."""
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    from ovsam.datasets import generate_shapes_dataset
    root = tmp_path_factory.mktemp('shapes')
    generate_shapes_dataset(str(root), num_train=8, num_val=2, sa1b=False, seed=3)
    return str(root)


@pytest.fixture(scope='module')
def vocab(shapes, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('vocab') / 'shapes.pth')
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(ROOT, 'configs', '_base_', 'models', 'ovsam_tiny.py'))
    cfg_json = out + '.json'
    with open(cfg_json, 'w') as f:
        json.dump(cfg.tiny_clip_cfg.to_dict(), f)
    subprocess.run([sys.executable, 'tools/gen_text_embeddings.py', '--classes',
                    osp.join(shapes, 'annotations', 'instances_train.json'), '--clip-model', 'tiny', '--clip-cfg',
                    cfg_json, '--allow-random-weights', '--out', out], cwd=ROOT, check=True, capture_output=True)
    return out


def tiny_train_config(tmp_path, shapes, vocab, iters=6, batch=4, ckpt_interval=100, name='cfg.py'):
    """clip2sam_tiny_1400it_shapes with random init and a deterministic data path
    (no random augmentation, every instance once, boxes only, dense mask loss)."""
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'tiny', 'clip2sam_tiny_1400it_shapes.py'))
    cfg.model.backbone.init_cfg = None
    cfg.model.neck.init_cfg = None
    cfg.model.prompt_encoder.sam_checkpoint = None
    cfg.model.mask_decoder.sam_checkpoint = None
    cfg.model.mask_decoder.classifier.vocabulary = vocab
    cfg.model.mask_decoder.num_points = 0
    cfg.model.data_preprocessor.num_prompts = 0
    cfg.model.data_preprocessor.point_ratio = 0.0
    pipeline = [t for t in cfg.train_pipeline if t['type'] not in ('RandomFlip', 'RandomResize', 'RandomCrop')]
    pipeline.insert(3, dict(type='Resize', scale=(256, 256), keep_ratio=True))
    cfg.train_dataloader.dataset.pipeline = pipeline
    cfg.train_dataloader.batch_size = batch
    cfg.train_dataloader.pop('batch_sampler')
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[key].dataset.data_root = shapes + '/'
    cfg.val_evaluator[1].ann_file = osp.join(shapes, 'annotations', 'instances_val.json')
    cfg.test_evaluator = cfg.val_evaluator
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=iters + 1)
    cfg.param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=iters)]
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False, interval=ckpt_interval,
                                        save_last=True)
    cfg.default_hooks.logger.interval = 1
    path = str(tmp_path / name)
    cfg.dump(path)
    return path


def run_train(cfg, work_dir, nproc=1, extra=(), timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS='1' if nproc > 1 else '2', PYTHONUNBUFFERED='1')
    if nproc == 1:
        cmd = [sys.executable, 'tools/train.py', cfg, '--work-dir', work_dir, *extra]
    else:
        cmd = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={nproc}',
               f'--master_port={29500 + os.getpid() % 1000}', 'tools/train.py', cfg, '--work-dir', work_dir,
               '--launcher', 'pytorch', *extra]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def trained_weights(work_dir, iters):
    from ovsam.checkpoint import safe_load
    sd = safe_load(osp.join(work_dir, f'iter_{iters}.pth'))['state_dict']
    return {k: v for k, v in sd.items() if k.startswith(('mask_decoder.', 'fpn_neck.'))}


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path, shapes, vocab):
    """2 CPU processes (gloo) x batch 2 reach the weights of 1 process x batch 4."""
    one = tiny_train_config(tmp_path, shapes, vocab, iters=4, batch=4, name='one.py')
    two = tiny_train_config(tmp_path, shapes, vocab, iters=4, batch=2, name='two.py')
    run_train(one, str(tmp_path / 'one'))
    run_train(two, str(tmp_path / 'two'), nproc=2)
    a, b = trained_weights(str(tmp_path / 'one'), 4), trained_weights(str(tmp_path / 'two'), 4)
    assert a.keys() == b.keys() and len(a) > 10
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, f'largest weight difference {worst}'


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted(tmp_path, shapes, vocab):
    iters = 8
    cfg = tiny_train_config(tmp_path, shapes, vocab, iters=iters, batch=2, ckpt_interval=2)
    run_train(cfg, str(tmp_path / 'full'))
    # Interrupted run: SIGKILL once a middle checkpoint exists.
    wd = str(tmp_path / 'killed')
    env = dict(os.environ, OMP_NUM_THREADS='2', PYTHONUNBUFFERED='1')
    proc = subprocess.Popen([sys.executable, 'tools/train.py', cfg, '--work-dir', wd], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not osp.exists(osp.join(wd, 'iter_4.pth')) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not osp.exists(osp.join(wd, f'iter_{iters}.pth')), 'killed too late to test resuming'
    leftovers = [f for f in os.listdir(wd) if '.tmp' in f]
    run_train(cfg, wd, extra=['--resume'])
    a, b = trained_weights(str(tmp_path / 'full'), iters), trained_weights(wd, iters)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, f'largest weight difference {worst} (temporary files left: {leftovers})'


def _write_ann(path, mutate):
    with open(path) as f:
        ann = json.load(f)
    mutate(ann)
    with open(path, 'w') as f:
        json.dump(ann, f)


@pytest.mark.parametrize('case,match', [
    ('corrupt', 'not valid JSON'),
    ('polygon', 'at least 3'),
    ('empty', 'empty mask'),
    ('unknown_cat', 'unknown category'),
    ('missing_class', 'not categories of the file'),
])
def test_bad_annotations_are_clear_errors(tmp_path, shapes, case, match):
    import shutil
    import ovsam  # noqa: F401
    from ovsam.datasets import AnnotationError, CheckedCocoDataset
    ann = str(tmp_path / 'ann.json')
    shutil.copy(osp.join(shapes, 'annotations', 'instances_train.json'), ann)
    classes = None
    if case == 'corrupt':
        with open(ann, 'a') as f:
            f.write('}{')
    elif case == 'polygon':
        _write_ann(ann, lambda a: a['annotations'][0].update(segmentation=[[1, 1, 5, 5]]))
    elif case == 'empty':
        from pycocotools import mask as mu
        import numpy as np

        def empty(a):
            im = a['images'][0]
            rle = mu.encode(np.zeros((im['height'], im['width']), dtype=np.uint8, order='F'))
            rle['counts'] = rle['counts'].decode()
            a['annotations'][0].update(image_id=im['id'], segmentation=rle)
        _write_ann(ann, empty)
    elif case == 'unknown_cat':
        _write_ann(ann, lambda a: a['annotations'][0].update(category_id=999))
    elif case == 'missing_class':
        classes = ('circle,disc', 'dodecahedron')
    metainfo = dict(classes=classes) if classes else None
    with pytest.raises(AnnotationError, match=match):
        CheckedCocoDataset(ann_file=ann, data_prefix=dict(img=osp.join(shapes, 'train') + '/'),
                           metainfo=metainfo, pipeline=[])


def test_image_size_mismatch_is_clear(tmp_path, shapes):
    import numpy as np
    import ovsam  # noqa: F401
    from ovsam.datasets import AnnotationError, CheckImageSize
    with pytest.raises(AnnotationError, match='another version of the image'):
        CheckImageSize()(dict(img=np.zeros((10, 20, 3)), height=20, width=10, img_path='x.jpg'))


def test_vocabulary_hook_catches_mismatch(shapes, vocab):
    from types import SimpleNamespace
    from ovsam.hooks import CheckVocabularyHook
    from ovsam.models import TextClassifier
    clf = TextClassifier(vocabulary=vocab)
    model = SimpleNamespace(mask_decoder=SimpleNamespace(classifier=clf))
    ds = SimpleNamespace(metainfo=dict(classes=('circle,disc', 'square')))
    runner = SimpleNamespace(model=model, train_dataloader=SimpleNamespace(dataset=ds))
    with pytest.raises(ValueError, match='vocabulary has 10 classes'):
        CheckVocabularyHook().before_train(runner)
    names = list(clf.class_names)
    names[1] = 'pentagon'
    ds.metainfo = dict(classes=tuple(names))
    with pytest.raises(ValueError, match="missing from the vocabulary file: \\['pentagon'\\]"):
        CheckVocabularyHook().before_train(runner)
