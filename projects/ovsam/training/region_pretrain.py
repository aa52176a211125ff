"""Region-level pre-training of the toy CLIP on whole scenes (stage 0).

OV-SAM reads its frozen CLIP in two ways: the CLIP2SAM head learns from the
dense C2..C5 maps, and the open-vocabulary ensemble classifies
``OpenCLIPBackbone.box_embed`` (RoIAlign on C5 + the attention pool) against
the text tower's class embeddings. A tiny CLIP trained on object crops
(:func:`ovsam.training.train_clip_on_crops`) recognises crops, but when colour
does not depend on class its C5 features do not carry the outline into whole
scenes (docs/toy_pipeline.md). This trainer therefore ends by training
through exactly the inference path:

* first ``crop_steps`` batches of object crops (cheap: a 64-px crop costs a
  sixteenth of a scene), each crop a random window of one to two object sizes,
  its ``box_embed`` over the whole crop: the trunk learns outlines at a
  normalised scale, which a run on scenes alone does not in its budget;
* then training scenes (by default 128-px windows of them at their own scale,
  so the stride-32 grid and the object sizes are those of whole scenes at a
  quarter of the cost) -> the CLIP trunk -> C5 -> ``box_embed`` of many
  jittered copies of every ground-truth box (RoIAlign is cheap next to the
  trunk, so each trunk pass gives ``boxes_per_object`` x objects samples, like
  a detector's proposals around an object);
* region embeddings are classified against learnable class prototypes, and the
  text tower's captions of each class are pulled to the same prototypes (the
  ten captions differ in one word; trained only against each other they do not
  separate);
* augmentation that keeps the outline and destroys every colour cue: the
  dihedral flips of the scene, colour-channel permutation and inversion;
* AdamW, linear warm-up and cosine decay (optionally a larger learning rate
  for the attention pool than for the trunk);
* batch-norm statistics re-estimated on training scenes at the end: the tower
  is frozen (eval mode) afterwards, and a short run's running statistics lag
  behind its weights.

The result is an open_clip state dict (plus its config as JSON), loaded by
OV-SAM exactly like a real CLIP checkpoint.
"""
import json
import math
import os.path as osp
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..vocabulary import VILD_TEMPLATES, split_synonyms
from .clip_pretrain import MEAN, STD, load_crops

__all__ = ['load_scenes', 'train_clip_on_regions', 'region_accuracy']


def load_scenes(ann_file: str, img_dir: str, max_images: Optional[int] = None):
    """Whole annotated scenes of a COCO file.

    Returns ``(images, boxes, labels, class_names)``: uint8 RGB images
    (N, H, W, 3) (all of one size), per image float32 (n_i, 4) ``xyxy`` boxes
    in pixels and int64 (n_i,) 0-based class indices; images without objects
    are skipped.
    """
    with open(ann_file) as f:
        coco = json.load(f)
    cats = sorted(coco['categories'], key=lambda c: c['id'])
    cat_index = {c['id']: i for i, c in enumerate(cats)}
    per_image: Dict[int, List] = {}
    for a in coco['annotations']:
        per_image.setdefault(a['image_id'], []).append(a)
    images, boxes, labels = [], [], []
    for im in sorted(coco['images'], key=lambda im: im['id']):
        anns = per_image.get(im['id'])
        if not anns:
            continue
        path = osp.join(img_dir, im['file_name'])
        bgr = cv2.imread(path)
        if bgr is None:
            raise FileNotFoundError(f'cannot read image {path} (listed in {ann_file}); regenerate the data')
        if images and bgr.shape != images[0].shape:
            raise ValueError(f'{path}: all scenes must have one size, got {bgr.shape[:2]} and '
                             f'{images[0].shape[:2]}')
        images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        boxes.append(np.array([[x, y, x + w, y + h] for x, y, w, h in (a['bbox'] for a in anns)], np.float32))
        labels.append(np.array([cat_index[a['category_id']] for a in anns], np.int64))
        if max_images and len(images) >= max_images:
            break
    if not images:
        raise ValueError(f'{ann_file} has no annotated objects; stage 0 needs scenes with boxes')
    return np.stack(images), boxes, labels, [c['name'] for c in cats]


def _dihedral(img: np.ndarray, boxes: np.ndarray, op: int) -> Tuple[np.ndarray, np.ndarray]:
    """One of the 8 flips/rotations of a square image (bits: h-flip, v-flip,
    transpose) with its ``xyxy`` boxes."""
    s = img.shape[1]
    b = boxes.copy()
    if op & 1:
        img = img[:, ::-1]
        b[:, [0, 2]] = s - boxes[:, [2, 0]]
    if op & 2:
        img = img[::-1]
        b2 = b.copy()
        b[:, [1, 3]] = s - b2[:, [3, 1]]
    if op & 4:
        img = img.transpose(1, 0, 2)
        b = b[:, [1, 0, 3, 2]]
    return img, b


def _recolour(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Colour-channel permutation and (half the time) inversion: the outline
    stays, any colour cue goes."""
    img = img[..., rng.permutation(3)]
    return 255 - img if rng.random() < 0.5 else img


def _jitter(rng: np.random.Generator, boxes: np.ndarray, k: int, size: int,
            shift: float = 0.15, scale: float = 1.25) -> np.ndarray:
    """``k`` boxes per box (the first one exact): centres shifted by up to
    ``shift`` of the side, sides scaled by up to ``scale`` either way, clipped
    to the image. (n, 4) -> (n * k, 4)."""
    b = np.repeat(boxes, k, axis=0)
    if k > 1:
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        cx, cy = b[:, 0] + w / 2, b[:, 1] + h / 2
        n = len(b)
        cx = cx + w * rng.uniform(-shift, shift, n)
        cy = cy + h * rng.uniform(-shift, shift, n)
        w = w * np.exp(rng.uniform(-math.log(scale), math.log(scale), n))
        h = h * np.exp(rng.uniform(-math.log(scale), math.log(scale), n))
        jittered = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
        exact = np.arange(n) % k == 0
        b = np.where(exact[:, None], b, jittered)
    return np.clip(b, 0, size).astype(np.float32)


def backbone_view(model: nn.Module, model_cfg: Dict) -> nn.Module:
    """An :class:`ovsam.models.OpenCLIPBackbone` (trainable) whose modules are
    ``model.visual``'s, so training goes through the same ``_trunk`` and
    ``box_embed`` as OV-SAM's frozen-CLIP branch."""
    from ..models.clip_backbone import OpenCLIPBackbone
    v = model.visual
    bb = OpenCLIPBackbone(model_name='tiny', model_cfg=model_cfg, frozen=False)
    if bb.tower_type != 'resnet':
        raise ValueError('region pre-training needs a ResNet tower with an attention pool')
    bb.stem = nn.Sequential(v.conv1, v.bn1, v.act1, v.conv2, v.bn2, v.act2, v.conv3, v.bn3, v.act3)
    bb.avgpool = v.avgpool
    for i in range(4):
        setattr(bb, f'layer{i + 1}', getattr(v, f'layer{i + 1}'))
    bb.head = v.attnpool
    return bb


def _to_tensor(imgs: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2).float()
    return (x - torch.from_numpy(MEAN)[:, None, None]) / torch.from_numpy(STD)[:, None, None]


def _window(rng, img, boxes, labels, side):
    """A ``side`` x ``side`` window of a scene at its own scale around a random
    object, with the boxes that keep at least half their area in it (clipped)."""
    size = img.shape[0]
    x0b, y0b, x1b, y1b = boxes[rng.integers(len(boxes))]
    cx, cy = (x0b + x1b) / 2 + rng.uniform(-0.25, 0.25) * side, (y0b + y1b) / 2 + rng.uniform(-0.25, 0.25) * side
    x0, y0 = (int(np.clip(round(c - side / 2), 0, size - side)) for c in (cx, cy))
    b = boxes - np.array([x0, y0, x0, y0], np.float32)
    c = np.clip(b, 0, side)
    area = lambda z: (z[:, 2] - z[:, 0]).clip(0) * (z[:, 3] - z[:, 1]).clip(0)  # noqa: E731
    keep = area(c) >= 0.5 * area(b)
    return img[y0:y0 + side, x0:x0 + side], c[keep], labels[keep]


def _batch(rng, images, boxes, labels, idx, k, window=None):
    """Augmented scenes (B, H, W, 3) (or windows of them), RoIs (R, 5) and labels (R,)."""
    size = images.shape[1] if window is None else window
    imgs, rois, labs = [], [], []
    for j, i in enumerate(idx):
        img, b, lab = images[i], boxes[i], labels[i]
        if window is not None:
            img, b, lab = _window(rng, img, b, lab, window)
        img, b = _dihedral(img, b, int(rng.integers(8)))
        imgs.append(_recolour(rng, img))
        jb = _jitter(rng, b, k, size)
        rois.append(np.concatenate([np.full((len(jb), 1), j, np.float32), jb], 1))
        labs.append(np.repeat(lab, k))
    return np.stack(imgs), torch.from_numpy(np.concatenate(rois)), torch.from_numpy(np.concatenate(labs))


def _crop_batch(rng, crops, labels, n, size):
    """``n`` object crops (from crops of twice the object's size, a random
    window of 1-2x the object, so the object's scale varies) at ``size``, each
    one RoI covering it all."""
    idx = rng.choice(len(crops), min(n, len(crops)), replace=False)
    big = crops.shape[1]
    out = []
    for i in idx:
        side = int(big * rng.uniform(0.55, 1.0))
        # the window's centre near the object's (the crop's) centre: the object stays mostly inside
        x0, y0 = np.clip(np.round((big - side) / 2 + rng.uniform(-0.1, 0.1, 2) * side), 0, big - side).astype(int)
        c = cv2.resize(crops[i][y0:y0 + side, x0:x0 + side], (size, size), interpolation=cv2.INTER_AREA)
        c, _ = _dihedral(c, np.zeros((0, 4), np.float32), int(rng.integers(8)))
        out.append(_recolour(rng, c))
    rois = torch.tensor([[j, 0., 0., size, size] for j in range(len(idx))])
    return np.stack(out), rois, torch.from_numpy(labels[idx])


def _warmup_cosine(total: int, warmup: int):
    def f(step):
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(total - warmup, 1)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))
    return f


@torch.no_grad()
def _reestimate_bn(bb: nn.Module, rng, images, boxes, labels, batches: int, batch_size: int) -> None:
    """Replace the running statistics of every batch norm by the exact
    average over ``batches`` augmented batches of training scenes."""
    bns = [m for m in bb.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    bb.train()
    for _ in range(batches):
        idx = rng.choice(len(images), min(batch_size, len(images)), replace=False)
        imgs, _, _ = _batch(rng, images, boxes, labels, idx, 1)
        bb._trunk(_to_tensor(imgs))
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    bb.eval()


def _captions(rng, synonyms: List[List[str]], templates: Sequence[str], per_class: int):
    caps, labs = [], []
    for k, syn in enumerate(synonyms):
        for _ in range(per_class):
            caps.append(templates[rng.integers(len(templates))].format(syn[rng.integers(len(syn))]))
            labs.append(k)
    return caps, torch.tensor(labs)


def train_clip_on_regions(model_cfg: Dict,
                          ann_file: str,
                          img_dir: str,
                          out_path: str,
                          steps: int = 600,
                          scenes_per_step: int = 16,
                          boxes_per_object: int = 4,
                          lr: float = 2e-3,
                          pool_lr_mult: float = 1.0,
                          text_lr: float = 1e-3,
                          warmup: int = 30,
                          captions_per_class: int = 4,
                          bn_batches: int = 24,
                          aux_weight: float = 0.0,
                          residual_bn_init: Optional[float] = 1.0,
                          crop_steps: int = 700,
                          crop_batch: int = 64,
                          scene_window: Optional[int] = 128,
                          seed: int = 0,
                          log_every: int = 100,
                          templates: Sequence[str] = VILD_TEMPLATES,
                          on_step: Optional[Callable[[int, float, float], None]] = None) -> Dict:
    """Train ``open_clip.model.CLIP(**model_cfg)`` on regions of whole scenes; save its state dict.

    Args:
        model_cfg: open_clip config of a ResNet CLIP (``vision_cfg.layers`` a list).
        ann_file, img_dir: COCO boxes and their (square, equal-size) scenes.
        out_path: the ``.pt`` state dict; ``<out_path stem>.json`` gets the config.
        steps: optimiser steps on scenes, each on ``scenes_per_step`` scenes
            with ``boxes_per_object`` jittered boxes per object, after
            ``crop_steps`` steps on ``crop_batch`` object crops (one
            warm-up + cosine schedule over both).
        scene_window: train on ``scene_window``-pixel windows of the scenes
            (at their own scale, around a random object; boxes that keep half
            their area, clipped) instead of whole scenes: the C5 grid and the
            object scales are the scenes', at a quarter of the trunk's cost per
            image at 128 px; None: whole scenes.
        lr / pool_lr_mult / text_lr: AdamW learning rates of the trunk, the
            attention pool (``lr * pool_lr_mult``) and the text tower with the
            class prototypes.
        bn_batches: batches of training scenes for the final batch-norm
            re-estimation (0: keep the running statistics).
        aux_weight: weight of the deep supervision of C3 and C4 (RoI features
            mean-pooled, linear classifiers used only in training); 0: off.
        residual_bn_init: value of the last batch-norm weight of every
            residual block at the start (open_clip: 0); None keeps open_clip's.
        on_step: called after every step with ``(step, region loss, text loss)``.

    Returns:
        ``dict(loss, text_loss, region_accuracy, num_objects, seconds)``;
        ``region_accuracy`` is the eval-mode ``box_embed`` accuracy on the
        training scenes' ground-truth boxes against the text tower's class
        embeddings (the vocabulary OV-SAM builds).
    """
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    for name, v in (('steps', steps), ('scenes_per_step', scenes_per_step), ('boxes_per_object', boxes_per_object)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f'{name} must be a whole number >= 1, got {v!r}')
    if isinstance(crop_steps, bool) or not isinstance(crop_steps, int) or crop_steps < 0:
        raise ValueError(f'crop_steps must be a whole number >= 0 (0: scenes only), got {crop_steps!r}')
    if not isinstance(model_cfg.get('vision_cfg', {}).get('layers'), (list, tuple)):
        raise ValueError('train_clip_on_regions needs a ResNet CLIP config (vision_cfg.layers a list of 4); '
                         f'got vision_cfg={model_cfg.get("vision_cfg")!r}')
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images, boxes, labels, class_names = load_scenes(ann_file, img_dir)
    if images.shape[1] != images.shape[2]:
        raise ValueError(f'scenes must be square, got {images.shape[1:3]}')
    if scene_window is not None and not 32 <= scene_window <= images.shape[1]:
        raise ValueError(f'scene_window must lie between 32 and the scene size {images.shape[1]} '
                         f'(or None: whole scenes), got {scene_window!r}')
    num_objects = int(sum(len(b) for b in boxes))
    synonyms = [split_synonyms(n) for n in class_names]
    model = CLIP(**model_cfg)
    if residual_bn_init is not None:
        # open_clip zero-initialises the last batch norm of every residual
        # block (a block starts as its shortcut), which suits long runs; with
        # one block per stage the trunk then starts as a few 1x1 convolutions
        # and a short run spends its steps growing them back.
        for layer in (model.visual.layer1, model.visual.layer2, model.visual.layer3, model.visual.layer4):
            for block in layer:
                nn.init.constant_(block.bn3.weight, residual_bn_init)
    # The token table (49,408 x width) would get a dense gradient and an AdamW
    # update every step for the ~20 tokens the captions use: a quarter of a
    # step's time on 2 threads. The words stay random vectors; the text
    # transformer and projection learn to separate them.
    model.token_embedding.requires_grad_(False)
    bb = backbone_view(model, model_cfg)
    tokenizer = SimpleTokenizer(context_length=model_cfg['text_cfg'].get('context_length', 77))
    protos = nn.Parameter(torch.randn(len(class_names), model_cfg['embed_dim']))
    pool = list(model.visual.attnpool.parameters())
    pool_ids = {id(p) for p in pool}
    trunk = [p for p in model.visual.parameters() if id(p) not in pool_ids]
    visual_ids = {id(p) for p in model.visual.parameters()}
    text = [p for p in model.parameters() if id(p) not in visual_ids and p.requires_grad]  # incl. logit_scale
    # deep supervision: C3 and C4 RoI features (mean-pooled) -> linear classifiers, discarded afterwards
    aux = nn.ModuleList([nn.Linear(c, len(class_names)) for c in bb.out_channels[1:3]])
    opt = torch.optim.AdamW([
        dict(params=trunk + list(aux.parameters()), lr=lr),
        dict(params=pool, lr=lr * pool_lr_mult),
        dict(params=text + [protos], lr=text_lr),
    ], weight_decay=0.05, foreach=True)  # one multi-tensor update (CPU defaults to a loop per tensor)
    total = steps + crop_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(total, min(warmup, max(total // 4, 1))))
    if crop_steps:
        crop_size = model_cfg['vision_cfg']['image_size']
        crops, crop_labels, _ = load_crops(ann_file, img_dir, 2 * crop_size, context=2.0, seed=seed)

    model.train()
    t0 = time.time()
    last = last_text = float('nan')
    hits = seen = 0
    for step in range(total):
        if step < crop_steps:
            imgs, rois, labs = _crop_batch(rng, crops, crop_labels, crop_batch, crop_size)
        else:
            idx = rng.choice(len(images), scenes_per_step, replace=scenes_per_step > len(images))
            imgs, rois, labs = _batch(rng, images, boxes, labels, idx, boxes_per_object, scene_window)
        feats = bb._trunk(_to_tensor(imgs))
        c5 = feats[-1]
        region = F.normalize(bb.box_embed(c5, rois), dim=-1)
        p = F.normalize(protos, dim=-1)
        scale = model.logit_scale.exp()
        logits = scale * region @ p.t()
        loss = F.cross_entropy(logits, labs)
        if aux_weight:
            from mmcv.ops import roi_align
            for head, f, s in zip(aux, feats[1:3], (8, 16)):
                pooled = roi_align(f, rois, (4, 4), 1 / s, 0, 'avg', True).mean((2, 3))
                loss = loss + aux_weight * F.cross_entropy(head(pooled), labs)
        caps, cap_labs = _captions(rng, synonyms, templates, captions_per_class)
        txt = model.encode_text(tokenizer(caps), normalize=True)
        text_loss = F.cross_entropy(scale * txt @ p.t(), cap_labs)
        opt.zero_grad()
        (loss + text_loss).backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        last, last_text = loss.item(), text_loss.item()
        if on_step is not None:
            on_step(step, last, last_text)
        hits += int((logits.argmax(-1) == labs).sum())
        seen += len(labs)
        if log_every and (step + 1) % log_every == 0:
            print(f'[stage 0: tiny CLIP, regions] step {step + 1}/{total} region loss {last:.3f} '
                  f'text loss {last_text:.3f} train-mode region accuracy {hits / seen:.3f} '
                  f'({time.time() - t0:.0f} s)', flush=True)
            hits = seen = 0
    model.eval()
    if bn_batches:
        _reestimate_bn(bb, rng, images, boxes, labels, bn_batches, scenes_per_step)
    model.eval()
    acc = region_accuracy(model, model_cfg, images, boxes, labels, class_names, templates)
    from ..fileio import atomic_save_json, atomic_save_torch
    # the config first: a weights file is never left without its config
    atomic_save_json(osp.splitext(out_path)[0] + '.json', model_cfg, indent=1)
    atomic_save_torch(out_path, model.state_dict())
    return dict(loss=last, text_loss=last_text, region_accuracy=acc, num_objects=num_objects,
                seconds=time.time() - t0)


@torch.no_grad()
def region_accuracy(model: nn.Module, model_cfg: Dict, images: np.ndarray, boxes: List[np.ndarray],
                    labels: List[np.ndarray], class_names: Sequence[str],
                    templates: Sequence[str] = VILD_TEMPLATES, batch_size: int = 16) -> float:
    """Accuracy of the frozen-CLIP branch on ground-truth boxes: ``box_embed``
    of every box of ``images`` (uint8 RGB scenes, eval mode) against the text
    tower's class embeddings (all templates, best synonym), as OV-SAM's
    classifier scores them."""
    from open_clip.tokenizer import SimpleTokenizer

    from ..vocabulary import encode_class_names
    was_training = model.training
    model.eval()
    bb = backbone_view(model, model_cfg).eval()
    tokenizer = SimpleTokenizer(context_length=model_cfg['text_cfg'].get('context_length', 77))
    text = encode_class_names(model, tokenizer, class_names, templates, progress=False)  # (K, P, D)
    correct = total = 0
    for s in range(0, len(images), batch_size):
        rois = torch.from_numpy(np.concatenate(
            [np.concatenate([np.full((len(b), 1), j, np.float32), b], 1)
             for j, b in enumerate(boxes[s:s + batch_size])]))
        emb = F.normalize(bb.box_embed(bb._trunk(_to_tensor(images[s:s + batch_size]))[-1], rois), dim=-1)
        pred = torch.einsum('nd,kpd->nkp', emb, text).max(-1).values.argmax(-1)
        gt = np.concatenate(labels[s:s + batch_size])
        correct += int((pred.numpy() == gt).sum())
        total += len(gt)
    model.train(was_training)
    return correct / max(total, 1)
