"""One OVSAMPredictor shared by threads: every answer is the single-threaded
answer for ONE image and ONE vocabulary (those it reports), never a mix; the
automatic generator's crops never become the predictor's image."""
import threading

import numpy as np
import pytest
import torch

from conftest import build_tiny

ITERS = 30
BOX = [4., 6., 40., 44.]
POINTS = [[20., 25.], [30., 12.]]
LABELS = [1, 0]


@pytest.fixture(scope='module')
def setup():
    from mmengine.config import Config

    from conftest import TINY_CFG
    from ovsam.apis import OVSAMPredictor
    cfg = Config.fromfile(TINY_CFG)
    pred = OVSAMPredictor(build_tiny(cfg, num_classes=3), clip_model_cfg=cfg.model.backbone.model_cfg)
    rng = np.random.default_rng(0)
    images = {'A': rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),  # shapes tell them apart
              'B': rng.integers(0, 256, (70, 52, 3), dtype=np.uint8)}
    g = torch.Generator().manual_seed(7)
    vocabs = {'A': ([f'a{i}' for i in range(5)], torch.randn(5, 2, 64, generator=g)),
              'B': ([f'b{i}' for i in range(3)], torch.randn(3, 1, 64, generator=g))}
    # single-threaded references for every (image, vocabulary) pair
    states, pins, ref = {}, {}, {}
    for v, (names, emb) in vocabs.items():
        pred.set_vocabulary(names, embeddings=emb)
        pins[v] = pred.vocabulary
        for i, img in images.items():
            pred.set_image(img)
            states[i] = pred.image_state
            ref[i, v] = _answer(pred)
    return pred, images, vocabs, states, pins, ref


def _answer(pred, **kw):
    out = pred.predict(box=BOX, point_coords=POINTS, point_labels=LABELS, top_k=None, **kw)
    return out


def _which(out, images):
    image = {images[k].shape[:2]: k for k in images}[tuple(out.image_state.meta['ori_shape'])]
    vocab = 'A' if out.vocabulary.class_names[0].startswith('a') else 'B'
    return image, vocab


def _same(out, ref):
    assert out.class_names == ref.class_names
    assert out.masks.shape == ref.masks.shape
    np.testing.assert_allclose(out.low_res_logits, ref.low_res_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.class_probs, ref.class_probs, rtol=1e-5, atol=1e-6)
    assert [n[0] for n in out.topk_names] == [n[0] for n in ref.topk_names]


def _run_threads(fns):
    errors = []

    def wrap(fn):
        try:
            fn()
        except BaseException as e:  # noqa: B902 - reported below
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(fn, )) for fn in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), 'a thread hung'
    if errors:
        raise errors[0]


def test_two_threads_plain_api_answer_for_one_image_and_one_vocabulary(setup):
    """Each thread sets its own image and vocabulary, then predicts; the other
    thread may have swapped either in between, but every answer must be the
    reference answer of the image and vocabulary it reports, exactly."""
    pred, images, vocabs, _, _, ref = setup
    outs = {'A': [], 'B': []}

    def worker(key):
        def run():
            names, emb = vocabs[key]
            for it in range(ITERS):
                pred.set_image(images[key])
                pred.set_vocabulary(names, embeddings=emb)
                outs[key].append(_answer(pred))
        return run

    _run_threads([worker('A'), worker('B')])
    seen = set()
    for key in outs:
        assert len(outs[key]) == ITERS
        for out in outs[key]:
            pair = _which(out, images)
            seen.add(pair)
            _same(out, ref[pair])


def test_two_threads_pinned_answers_equal_single_threaded(setup):
    """With image_state= and vocabulary= pinned, every answer is exactly that
    image's and that vocabulary's, while the other thread keeps swapping the
    predictor's current image and vocabulary."""
    pred, images, vocabs, states, pins, ref = setup
    counts = {}

    def worker(img_key, voc_key, other):
        def run():
            names, emb = vocabs[other]
            n = 0
            for it in range(ITERS):
                pred.set_vocabulary(names, embeddings=emb)  # churn: the other vocabulary becomes current
                pred.set_image(images[other])
                out = _answer(pred, image_state=states[img_key], vocabulary=pins[voc_key])
                assert out.image_state is states[img_key] and out.vocabulary is pins[voc_key]
                _same(out, ref[img_key, voc_key])
                # only the image pinned: the vocabulary is the current one, and says so
                out = _answer(pred, image_state=states[img_key])
                _same(out, ref[img_key, _which(out, images)[1]])
                n += 1
            counts[img_key, voc_key] = n
        return run

    _run_threads([worker('A', 'B', 'A'), worker('B', 'A', 'B')])
    assert counts == {('A', 'B'): ITERS, ('B', 'A'): ITERS}


def test_predict_torch_and_add_class_from_threads(setup):
    """predict_torch pins too; two threads adding classes never lose one."""
    pred, images, vocabs, states, pins, ref = setup
    names, emb = vocabs['A']
    pred.set_vocabulary(names, embeddings=emb)
    pred.text_encoder.allow_random = True
    sx, sy = states['A'].meta['scale_factor']
    box = torch.tensor([BOX]) * torch.tensor([sx, sy, sx, sy])
    expect = ref['A', 'A'].class_probs
    results = []

    def adder(prefix):
        def run():
            for i in range(8):
                pred.add_class(f'{prefix}{i}')
        return run

    def prompter():
        for _ in range(ITERS):
            out = pred.predict_torch(boxes=box, point_coords=torch.tensor([POINTS]) * torch.tensor([sx, sy]),
                                     point_labels=torch.tensor([LABELS]), image_state=states['A'],
                                     vocabulary=pins['A'], top_k=None)
            results.append(out['class_probs'].numpy())

    try:
        _run_threads([adder('x'), adder('y'), prompter])
    finally:
        pred.text_encoder.allow_random = False
    assert len(results) == ITERS
    for r in results:
        np.testing.assert_allclose(r, expect, rtol=1e-5, atol=1e-6)
    assert sorted(pred.class_names) == sorted(names + [f'x{i}' for i in range(8)] + [f'y{i}' for i in range(8)])


def test_generator_crops_never_become_the_predictors_image(setup):
    """Segment-everything with crop layers in one thread, predictions in
    another: the predictor's current image is never a crop, and the
    generator's records match its single-threaded run."""
    from ovsam.apis import OVSAMAutomaticMaskGenerator
    pred, images, vocabs, states, pins, ref = setup
    names, emb = vocabs['A']
    pred.set_vocabulary(names, embeddings=emb)
    gen = OVSAMAutomaticMaskGenerator(pred, points_per_side=3, crop_n_layers=1, stability_score_thresh=0.0,
                                      box_nms_thresh=1.0, crop_nms_thresh=1.0)
    pred.restore_image_state(states['A'])
    expect = gen.generate()
    full_shapes = {img.shape[:2] for img in images.values()}
    bad, answers = [], []
    stop = threading.Event()

    def generator():
        try:
            for _ in range(2):
                pred.restore_image_state(states['A'])
                got = gen.generate()
                assert [(r['class_name'], r['area'], r['crop_box']) for r in got] == \
                    [(r['class_name'], r['area'], r['crop_box']) for r in expect]
        finally:
            stop.set()

    def watcher():
        while not stop.is_set():
            shape = tuple(pred.image_state.meta['ori_shape'])
            if shape not in full_shapes:
                bad.append(shape)
            out = _answer(pred, image_state=states['B'])
            answers.append(out)

    _run_threads([generator, watcher])
    assert not bad, f'the predictor held crops {bad[:3]}'
    assert answers
    for out in answers:
        _same(out, ref['B', 'A'])


def test_failed_calls_leave_nothing_changed(setup):
    """A call that raises leaves the current image, vocabulary and model as they were."""
    from ovsam.apis import OVSAMAutomaticMaskGenerator, PromptError
    pred, images, vocabs, states, pins, ref = setup
    names, emb = vocabs['B']
    pred.set_vocabulary(names, embeddings=emb)
    pred.restore_image_state(states['A'])
    vocab, state = pred.vocabulary, pred.image_state
    clf = pred.model.mask_decoder.classifier
    buf = clf.cls_embed
    with pytest.raises(ValueError, match='image'):
        pred.set_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ValueError, match='embeddings'):
        pred.set_vocabulary(['p', 'q'], embeddings=torch.full((2, 1, 64), float('nan')))
    with pytest.raises(ValueError, match='seen_classes'):
        pred.set_vocabulary(['p', 'q'], embeddings=torch.randn(2, 1, 64), seen_classes=[True])
    with pytest.raises(PromptError, match='box'):
        pred.predict(box=[1, 2, 3, float('nan')])
    with pytest.raises(ValueError, match='image'):
        OVSAMAutomaticMaskGenerator(pred, points_per_side=2, crop_n_layers=1).generate(np.zeros((3, 3, 2)))
    assert pred.vocabulary is vocab and pred.image_state is state and clf.cls_embed is buf
    _same(_answer(pred), ref['A', 'B'])
