"""Property tests (hypothesis) over prompt and image shapes, dtypes and values:
every input gives either the answer an independent oracle expects or a
``ValueError`` that names the argument; never a crash elsewhere, never a
silently different result."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import build_tiny

SETTINGS = dict(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
H, W = 48, 64  # the image the prompts are for


@pytest.fixture(scope='module')
def predictor():
    from mmengine.config import Config

    from conftest import TINY_CFG
    from ovsam.apis import OVSAMPredictor
    cfg = Config.fromfile(TINY_CFG)
    p = OVSAMPredictor(build_tiny(cfg, num_classes=4), clip_model_cfg=cfg.model.backbone.model_cfg)
    p.set_image(np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8))
    return p


# ------------------------------------------------------------------ prompts
VALUES = st.one_of(
    st.floats(-5, 70),  # inside the image and a little beyond
    st.sampled_from([0.0, float(W), float(H), -1.0, 1e30, -1e30, np.nan, np.inf, -np.inf, 3e38]))
DTYPES = st.sampled_from(['float32', 'float64', 'int64', 'bool', 'complex64', 'list'])


@st.composite
def point_prompts(draw):
    n = draw(st.integers(0, 3))
    p = draw(st.integers(0, 3))
    last = draw(st.sampled_from([2, 2, 2, 1, 3]))
    ndim = draw(st.sampled_from([3, 3, 2, 1]))
    shape = {3: (n, p, last), 2: (p, last), 1: (last, )}[ndim]
    vals = np.array(draw(st.lists(VALUES, min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))),
                    dtype=np.float64).reshape(shape)
    dtype = draw(DTYPES)
    labels = None
    if draw(st.booleans()):
        lshape = shape[:-1] if draw(st.integers(0, 4)) else (max(0, int(np.prod(shape[:-1])) + 1), )
        labels = np.array(draw(st.lists(st.sampled_from([1, 1, 0, -1, 2]), min_size=int(np.prod(lshape)),
                                        max_size=int(np.prod(lshape))))).reshape(lshape)
    return vals, dtype, labels


def _cast(vals, dtype):
    if dtype == 'list':
        return vals.tolist()
    with np.errstate(invalid='ignore', over='ignore'):
        return vals.astype(dtype)


def _expected_points(vals, dtype, labels):
    """The oracle: None if valid, else the argument name the error must mention."""
    if dtype in ('bool', 'complex64'):
        return 'point_coords'
    arr = _cast(vals, dtype) if dtype != 'list' else vals
    arr = np.asarray(arr, dtype=np.float64)
    if dtype == 'int64' and not np.isfinite(vals).all():
        arr = vals  # the int cast of NaN/Inf is undefined: skip (filtered by the caller)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[-1] != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        return 'point_coords'
    if not np.isfinite(arr).all():
        return 'point_coords'
    if (arr < -1).any() or (arr[..., 0] > W + 1).any() or (arr[..., 1] > H + 1).any():
        return 'point_coords'
    if labels is None:
        return None
    lab = labels[None] if labels.ndim == 1 and arr.shape[0] == 1 else labels
    if lab.shape != arr.shape[:2] or not np.isin(lab, (-1, 0, 1)).all():
        return 'point_labels'
    if not (lab == 1).any(1).all():
        return 'foreground'
    return None


@settings(**SETTINGS)
@given(point_prompts())
def test_point_prompts_match_the_oracle(predictor, prompt):
    from ovsam.apis import PromptError
    vals, dtype, labels = prompt
    if dtype == 'int64' and not np.isfinite(vals).all():
        dtype = 'float64'
    expected = _expected_points(vals, dtype, labels)
    coords = _cast(vals, dtype)
    if expected is None:
        out = predictor.predict(point_coords=coords, point_labels=labels)
        n = 1 if np.ndim(vals) == 2 else vals.shape[0]
        assert len(out) == n and out.masks.shape == (n, H, W)
        assert np.isfinite(out.class_probs).all() and out.class_probs.shape == (n, 4)
        # the same prompts as float32 tensors in the input frame give the same answer
        sx, sy = predictor.scale_factor
        ref = predictor.predict_torch(torch.as_tensor(np.asarray(coords, np.float32).reshape(n, -1, 2) *
                                                      np.float32([sx, sy])),
                                      None if labels is None else torch.as_tensor(labels).reshape(n, -1))
        np.testing.assert_allclose(ref['class_probs'].numpy(), out.class_probs, rtol=1e-5, atol=1e-6)
    else:
        with pytest.raises(PromptError, match=expected):
            predictor.predict(point_coords=coords, point_labels=labels)


@st.composite
def box_prompts(draw):
    shape = draw(st.sampled_from([(4, ), (1, 4), (2, 4), (0, 4), (3, ), (2, 2, 4), (5, )]))
    size = int(np.prod(shape))
    vals = np.array(draw(st.lists(VALUES, min_size=size, max_size=size)), np.float64).reshape(shape)
    if size and draw(st.booleans()):  # often a valid box: sorted corners
        vals = vals.reshape(-1, shape[-1])
        if shape[-1] == 4:
            vals[:, [0, 2]] = np.sort(vals[:, [0, 2]], axis=1)
            vals[:, [1, 3]] = np.sort(vals[:, [1, 3]], axis=1)
        vals = vals.reshape(shape)
    return vals, draw(st.sampled_from(['float32', 'float64', 'bool', 'complex64', 'list', 'tensor']))


@settings(**SETTINGS)
@given(box_prompts())
def test_box_prompts_match_the_oracle(predictor, prompt):
    from ovsam.apis import PromptError
    vals, kind = prompt
    with np.errstate(invalid='ignore', over='ignore'):
        box = {'list': vals.tolist(), 'tensor': torch.as_tensor(vals)}.get(kind) if kind in ('list', 'tensor') \
            else vals.astype(kind)
    arr = np.asarray(vals.astype(np.float32) if kind == 'float32' else vals, np.float64)
    arr = arr[None] if arr.ndim == 1 else arr
    if kind in ('bool', 'complex64'):
        expected = 'box'
    elif arr.ndim != 2 or arr.shape[-1] != 4 or arr.shape[0] == 0 or not np.isfinite(arr).all():
        expected = 'box'
    elif (arr[:, 2] <= arr[:, 0]).any() or (arr[:, 3] <= arr[:, 1]).any():
        expected = 'degenerate'
    elif (arr[:, :2] < -1).any() or (arr[:, 2] > W + 1).any() or (arr[:, 3] > H + 1).any():
        expected = 'outside'
    else:
        expected = None
    if expected is None:
        out = predictor.predict(box=box, top_k=None)
        assert len(out) == arr.shape[0] and out.topk_labels.shape == (arr.shape[0], 4)
        assert (out.boxes >= 0).all() and (out.boxes[:, 2] <= W).all() and (out.boxes[:, 3] <= H).all()
    else:
        with pytest.raises(PromptError, match=expected):
            predictor.predict(box=box)


# ------------------------------------------------------------------ images
IMAGE_DTYPES = st.sampled_from(['uint8', 'uint16', 'int32', 'float32', 'float64', 'bool', 'complex64', 'object'])


@st.composite
def images(draw):
    h, w = draw(st.integers(0, 4)), draw(st.integers(0, 4))
    shape = (h, w) + draw(st.sampled_from([(), (1, ), (2, ), (3, ), (4, ), (5, )]))
    dtype = draw(IMAGE_DTYPES)
    hi = {'uint8': 255, 'uint16': 65535, 'int32': draw(st.sampled_from([255, 300, 70000])), 'bool': 1,
          'object': 255}.get(dtype, draw(st.sampled_from([1.0, 255.0])))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    vals = rng.random(shape) * hi
    if dtype.startswith('float') and vals.size and draw(st.integers(0, 5)) == 0:
        vals.flat[0] = np.nan
    if dtype not in ('float32', 'float64', 'complex64'):
        vals = np.rint(vals)
    return vals.astype(dtype), draw(st.sampled_from(['RGB', 'BGR']))


def _expected_rgb(img, fmt):
    """Independent oracle of image_to_rgb's documented rules (None: a ValueError)."""
    if img.dtype.kind in 'cO' or img.ndim not in (2, 3) or 0 in img.shape[:2]:
        return None
    arr = img[:, :, None] if img.ndim == 2 else img
    if arr.shape[2] not in (1, 3, 4):
        return None
    if img.dtype == np.bool_:
        val = arr.astype(np.float64) * 255
    elif img.dtype == np.uint8:
        val = arr.astype(np.float64)
    elif img.dtype == np.uint16:
        val = arr.astype(np.float64) * 255 / 65535
    elif img.dtype.kind == 'i':
        if arr.min() < 0 or arr.max() > 255:
            return None
        val = arr.astype(np.float64)
    else:
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            return None
        val = arr.astype(np.float64) * 255
    val = np.repeat(val, 3, axis=2) if val.shape[2] == 1 else val[:, :, :3]
    return val[:, :, ::-1] if fmt == 'BGR' else val


@settings(**SETTINGS)
@given(images())
def test_images_match_the_oracle(image):
    from ovsam.apis import image_to_rgb
    img, fmt = image
    expected = _expected_rgb(img, fmt)
    before = img.copy()
    if expected is None:
        with pytest.raises(ValueError, match='image'):
            image_to_rgb(img, fmt)
        return
    out = image_to_rgb(img, fmt)
    assert out.shape == img.shape[:2] + (3, ) and out.dtype in (np.uint8, np.float32)
    np.testing.assert_allclose(out.astype(np.float64), expected, rtol=1e-5, atol=1e-3)
    assert not np.shares_memory(out, img)
    out[...] = 7  # the caller's array is untouched by anything done to the result
    np.testing.assert_array_equal(img, before)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 5), st.integers(1, 5), st.sampled_from(['uint8', 'uint16', 'float32']))
def test_tiny_images_predict_anywhere_inside(predictor, h, w, dtype):
    rng = np.random.default_rng(h * 10 + w)
    img = (rng.random((h, w, 3)) * (65535 if dtype == 'uint16' else 255 if dtype == 'uint8' else 1)).astype(dtype)
    st_ = predictor.compute_image_state(img)
    out = predictor.predict(box=[0, 0, w, h], point_coords=[[w / 2, h / 2]], image_state=st_)
    assert out.masks.shape == (1, h, w) and out.image_state is st_
    assert predictor.image_state.meta['ori_shape'] == (H, W)  # pinned: the current image is unchanged
