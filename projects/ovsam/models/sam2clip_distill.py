"""Stage 1: distil SAM's image embedding into frozen CLIP + the SAM2CLIP adapter."""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from torch import Tensor

from ..registry import MODELS, build_data_preprocessor


@MODELS.register_module()
class SAM2CLIPDistiller(BaseModel):
    """Student = frozen CLIP (``backbone_student``) + adapter (``neck_student``).

    The target is SAM's image embedding, either dumped beforehand
    (``teacher_feat`` in each data sample, see ``tools/dump_sam_features.py``)
    or computed live by ``teacher`` (a :class:`SAMImageEncoder`). The loss is
    the per-element mean squared error. Attribute names follow the official
    release so its checkpoints (``neck_student.*``) are interchangeable.
    """

    def __init__(self,
                 backbone: Dict,
                 neck: Dict,
                 teacher: Optional[Dict] = None,
                 loss_weight: float = 1.0,
                 data_preprocessor: Optional[Dict] = None,
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(data_preprocessor=build_data_preprocessor(data_preprocessor), init_cfg=init_cfg)
        self.backbone_student = MODELS.build(backbone)
        self.neck_student = MODELS.build(neck)
        self.teacher = MODELS.build(teacher) if teacher is not None else None
        self.loss_weight = loss_weight

    def student(self, inputs: Tensor) -> Tensor:
        return self.neck_student(self.backbone_student(inputs))

    def targets(self, inputs: Tensor, data_samples) -> Tensor:
        if self.teacher is not None:
            return self.teacher(inputs)
        feats = []
        for s in data_samples:
            if 'teacher_feat' not in s:
                raise KeyError('no teacher: give the model a teacher (SAMImageEncoder) or dump SAM features '
                               'with tools/dump_sam_features.py and set the dataset feat_dir')
            feats.append(s.teacher_feat)
        return torch.stack(feats).to(inputs.device)

    def forward(self, inputs: Tensor, data_samples=None, mode: str = 'tensor'):
        if mode == 'loss':
            pred = self.student(inputs)
            target = self.targets(inputs, data_samples)
            if pred.shape != target.shape:
                raise ValueError(f'student embedding {tuple(pred.shape)} and teacher embedding '
                                 f'{tuple(target.shape)} differ: check input size and adapter out_channels')
            return dict(loss_distill=self.loss_weight * F.mse_loss(pred, target))
        if mode == 'predict':
            pred = self.student(inputs)
            target = self.targets(inputs, data_samples)
            for s, p, t in zip(data_samples, pred, target):
                s.distill_mse = F.mse_loss(p, t).detach().cpu()
            return data_samples
        return self.student(inputs)
