"""Stage (a): tune the prompt on ground-truth masked crops of seen classes.

:class:`PromptTuner` is an mmengine model fed ordinary segmentation batches, so stage (a)
runs in mmengine's ``Runner`` with the same datasets and pipelines as stage (b). Only the
prompt's context vectors train (initialised from a POMP prompt); :class:`SavePromptHook`
writes the result to ``work_dir/prompt.pth`` for stage (b).
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmseg.registry import HOOKS, MODELS
from mmseg.utils import SampleList

from pomp_core import PromptedTextEncoder, save_prompt
from pomp_core.prompt_source import build_prompt

from .clip import build_clip
from .crop_classifier import CLIPCropClassifier, random_resized_masked_crop
from .datasets import resolve_split


@MODELS.register_module()
class PromptTuner(BaseModel):
    """Cross-entropy of CLIP on masked GT crops over the seen class names; only ``prompt.ctx`` trains.

    Args:
        class_split: the dataset's classes and unseen split (a dataset type of
            ``pomp_seg.datasets`` or a classes.json): label ``i`` is class ``i``.
        min_pixels: masks smaller than this are not cropped.
        min_crop_size: grow crop boxes to at least this many pixels (0 = the tight box,
            as in ZSSeg; see :func:`pomp_seg.crop_classifier.masked_crops`).
        prompt_trusted: unpickle the prompt file fully (raw Dassl checkpoints); trusted files only.
        crops_per_image: seen classes cropped per image, drawn at random; None = all of them.
            A sample from :class:`pomp_seg.class_records.ClassRecordDataset` (ZSSeg's (image,
            class) records) carries ``category_id`` and is cropped for that class alone; a
            record whose mask is under ``min_pixels`` after the pipeline gives no crop.
        random_resized_crop: None = the mask's box resized; a dict (``scale``, ``ratio``)
            crops a random part of the box first, as ZSSeg's stage (a) does on full images
            (see :func:`pomp_seg.crop_classifier.random_resized_masked_crop`).
    """

    def __init__(self, class_split: str, clip_model: str = "ViT-B-16",
                 clip_pretrained: Optional[str] = "openai", prompt: Optional[str] = None,
                 init_words: Optional[str] = None, min_pixels: int = 16, min_crop_size: int = 0,
                 prompt_trusted: bool = False, crops_per_image: Optional[int] = None, random_resized_crop: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None, init_cfg: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        classes, unseen = resolve_split(class_split)
        self.classes = classes
        self.seen = [i for i, c in enumerate(classes) if c not in set(unseen)]
        self._lut = {c: k for k, c in enumerate(self.seen)}  # dataset label -> seen-list index
        clip, tokenizer = build_clip(clip_model, clip_pretrained)
        self.clip = clip
        self.prompt = build_prompt(clip, tokenizer, prompt, init_words, prompt_trusted)
        self.prompt.requires_grad_(True)
        self.text = PromptedTextEncoder(clip, tokenizer)
        self.crops = CLIPCropClassifier(clip.visual, float(clip.logit_scale.exp()), min_crop_size=min_crop_size)
        self.min_pixels = min_pixels
        self.crops_per_image = crops_per_image
        self.random_resized_crop = None if random_resized_crop is None else dict(random_resized_crop)

    def train(self, mode: bool = True) -> "PromptTuner":
        super().train(mode)
        self.clip.eval()
        return self

    def loss(self, inputs: torch.Tensor, data_samples: SampleList) -> Dict[str, torch.Tensor]:
        images, labels = [], []
        for img, sample in zip(inputs, data_samples):
            seg = sample.gt_sem_seg.data[0]
            masks, ids = [], []
            record = sample.metainfo.get("category_id")  # a ClassRecordDataset record: its class only
            if record is not None and record not in self._lut:
                name = self.classes[record] if 0 <= record < len(self.classes) else "out of range"
                raise ValueError(f"a record of class {record} ({name}) is not a seen class of model.class_split; "
                                 "the training dataset and model.class_split must have the same classes and split")
            for c in ([record] if record is not None else torch.unique(seg).tolist()):
                mask = seg == c
                if c in self._lut and int(mask.sum()) >= self.min_pixels:
                    masks.append(mask)
                    ids.append(self._lut[c])
            if self.crops_per_image is not None and len(masks) > self.crops_per_image:
                keep = torch.randperm(len(masks))[:self.crops_per_image].tolist()
                masks, ids = [masks[k] for k in keep], [ids[k] for k in keep]
            if masks and self.random_resized_crop is not None:
                clip_img = self.crops.to_clip(img)
                images.append(torch.stack([random_resized_masked_crop(
                    clip_img, m, self.crops.input_size, **self.random_resized_crop) for m in masks]))
                labels += ids
            elif masks:
                images.append(self.crops.crops(img, torch.stack(masks)))
                labels += ids
        if not images:  # no seen object in this batch: a zero loss that keeps the graph
            return {"loss_prompt": self.prompt.ctx.sum() * 0.0}
        with torch.no_grad():
            feats = self.crops.image_features(torch.cat(images))
        names = [self.classes[i] for i in self.seen]
        text = F.normalize(self.text(self.prompt, names).float(), dim=-1)
        logits = self.crops.temperature * feats @ text.t()
        target = torch.tensor(labels, device=logits.device)
        return {"loss_prompt": F.cross_entropy(logits, target),
                "acc_crops": (logits.argmax(-1) == target).float().mean().detach()}

    def forward(self, inputs: torch.Tensor, data_samples: Optional[SampleList] = None, mode: str = "loss"):
        if mode == "loss":
            return self.loss(inputs, data_samples)
        raise ValueError(f"PromptTuner only trains (mode='loss'), got mode='{mode}'; evaluate the "
                         "tuned prompt in stage (b) with ZSSegSegmentor")


@HOOKS.register_module()
class SavePromptHook(Hook):
    """Write the tuned prompt to ``work_dir/<filename>`` when training ends."""

    priority = "LOW"

    def __init__(self, filename: str = "prompt.pth") -> None:
        self.filename = filename

    def _save(self, runner) -> None:
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        if runner.rank == 0:
            save_prompt(model.prompt, os.path.join(runner.work_dir, self.filename), iter=runner.iter)

    def after_train(self, runner) -> None:
        self._save(runner)
