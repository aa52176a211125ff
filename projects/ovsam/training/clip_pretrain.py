"""Contrastive pre-training of a small open_clip model on object crops.

No pretrained CLIP can be downloaded here, and a frozen CLIP with random
weights cannot tell classes apart, so the toy pipeline first teaches a tiny
CLIP what the generated classes look like: image crops of ground-truth objects
paired with captions made from the class names (all classes, as a real CLIP
has seen every concept), trained with open_clip's ``ClipLoss``. The result is
saved as an open_clip state dict and then loaded through exactly the same path
as a real CLIP checkpoint.
"""
import json
import os.path as osp
import random
import time
from typing import Dict, Optional, Sequence

import cv2
import numpy as np
import torch

from ..vocabulary import VILD_TEMPLATES, split_synonyms

# Must match the OVSAM data preprocessor: CLIP is frozen inside OV-SAM and sees
# SAM's (ImageNet) normalisation there.
MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


def load_crops(ann_file: str, img_dir: str, size: int, context: float = 1.3,
               max_crops: Optional[int] = None, seed: int = 0):
    """Square crops around every annotated object, resized to ``size``.

    Returns uint8 crops (N, size, size, 3) RGB and 0-based class indices (N,).
    """
    with open(ann_file) as f:
        coco = json.load(f)
    cat_ids = sorted(c['id'] for c in coco['categories'])
    cat_index = {c: i for i, c in enumerate(cat_ids)}
    images = {im['id']: im for im in coco['images']}
    anns = list(coco['annotations'])
    random.Random(seed).shuffle(anns)
    if max_crops:
        anns = anns[:max_crops]
    cache, crops, labels = {}, [], []
    for a in anns:
        im = images[a['image_id']]
        if im['id'] not in cache:
            bgr = cv2.imread(osp.join(img_dir, im['file_name']))
            if bgr is None:
                raise FileNotFoundError(f"cannot read image {osp.join(img_dir, im['file_name'])}")
            cache[im['id']] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        img = cache[im['id']]
        x, y, w, h = a['bbox']
        cx, cy, side = x + w / 2, y + h / 2, max(w, h) * context
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        s = max(int(round(side)), 2)
        pad = s
        padded = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        crop = padded[y0 + pad:y0 + pad + s, x0 + pad:x0 + pad + s]
        crops.append(cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR))
        labels.append(cat_index[a['category_id']])
    return np.stack(crops), np.array(labels), [c['name'] for c in sorted(coco['categories'], key=lambda c: c['id'])]


def train_clip_on_crops(model_cfg: Dict,
                        ann_file: str,
                        img_dir: str,
                        out_path: str,
                        steps: int = 300,
                        batch_size: int = 64,
                        lr: float = 2e-3,
                        seed: int = 0,
                        max_crops: Optional[int] = 4000,
                        log_every: int = 50,
                        templates: Sequence[str] = VILD_TEMPLATES) -> Dict:
    """Train ``open_clip.model.CLIP(**model_cfg)`` contrastively; save its state dict.

    Each batch is made of groups holding one crop per class, the loss being
    open_clip's ``ClipLoss`` within each group.
    Returns a dict with the final loss and the crop classification accuracy
    (zero-shot, against the class captions) on the training crops.
    """
    from open_clip.loss import ClipLoss
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    size = model_cfg['vision_cfg']['image_size']
    crops, labels, class_names = load_crops(ann_file, img_dir, size, max_crops=max_crops, seed=seed)
    synonyms = [split_synonyms(n) for n in class_names]
    model = CLIP(**model_cfg)
    tokenizer = SimpleTokenizer(context_length=model_cfg['text_cfg'].get('context_length', 77))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    loss_fn = ClipLoss()
    by_class = [np.nonzero(labels == k)[0] for k in range(len(class_names))]
    by_class = [ix for ix in by_class if len(ix)]
    mean, std = torch.from_numpy(MEAN)[:, None, None], torch.from_numpy(STD)[:, None, None]

    def to_tensor(batch):
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
        return (x - mean) / std

    model.train()
    t0 = time.time()
    last = float('nan')
    num_classes = len(by_class)
    groups = max(batch_size // num_classes, 1)
    for step in range(steps):
        # Each group holds one crop of every class: CLIP's loss treats all
        # other captions of a group as negatives, so a group must not repeat
        # a class (with 10 classes, random batches would be full of false
        # negatives).
        idx = np.concatenate([np.array([rng.choice(ix) for ix in by_class]) for _ in range(groups)])
        imgs = crops[idx].copy()
        flip = rng.random(len(idx)) < 0.5
        imgs[flip] = imgs[flip, :, ::-1]
        rot = rng.integers(0, 4, len(idx))
        imgs = np.stack([np.rot90(im, k) for im, k in zip(imgs, rot)])
        caps = [templates[rng.integers(len(templates))].format(synonyms[labels[i]][rng.integers(len(synonyms[labels[i]]))])
                for i in idx]
        img_f = model.encode_image(to_tensor(imgs), normalize=True).view(groups, num_classes, -1)
        txt_f = model.encode_text(tokenizer(caps), normalize=True).view(groups, num_classes, -1)
        scale = model.logit_scale.exp()
        loss = sum(loss_fn(img_f[g], txt_f[g], scale) for g in range(groups)) / groups
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        last = loss.item()
        if log_every and (step + 1) % log_every == 0:
            print(f'[stage 0: tiny CLIP] step {step + 1}/{steps} loss {last:.3f} ({time.time() - t0:.0f} s)',
                  flush=True)
    model.eval()
    from ..vocabulary import encode_class_names
    with torch.no_grad():
        text = encode_class_names(model, tokenizer, class_names, progress=False)
        correct = 0
        for i in range(0, len(crops), 256):
            f = model.encode_image(to_tensor(crops[i:i + 256]), normalize=True)
            pred = torch.einsum('nd,kpd->nkp', f, text).max(-1).values.argmax(-1)
            correct += (pred.numpy() == labels[i:i + 256]).sum()
    from ..fileio import atomic_save_json, atomic_save_torch
    # the config first: a weights file is never left without its config
    atomic_save_json(osp.splitext(out_path)[0] + '.json', model_cfg, indent=1)
    atomic_save_torch(out_path, model.state_dict())
    return dict(loss=last, crop_accuracy=float(correct / len(crops)), num_crops=len(crops),
                seconds=time.time() - t0)
