"""Stage (a): tune the prompt on ground-truth masked crops of seen classes.

:class:`PromptTuner` is an mmengine model fed ordinary segmentation batches, so stage (a)
runs in mmengine's ``Runner`` with the same datasets and pipelines as stage (b). Only the
prompt's context vectors train (initialised from a POMP prompt); :class:`SavePromptHook`
writes the result to ``work_dir/prompt.pth`` for stage (b).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmseg.registry import HOOKS, MODELS
from mmseg.utils import SampleList

from pomp_core import PromptedTextEncoder, save_prompt
from pomp_core.prompt_source import build_prompt

from .clip import CLIP_MEAN, build_clip
from .crop_classifier import CLIPCropClassifier, encode_any_size
from .datasets import resolve_split


# ZSSeg fills outside the mask with CLIP's mean pixel written in normalised units (its
# ProposalClipClassifier adds ``(1 - mask) * pixel_mean`` after normalising): a light grey.
FILLS = {"normalised_mean": torch.tensor(CLIP_MEAN) / 255.0, "mean": torch.zeros(3)}


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
        crop_in_pipeline: the records come as views cut by the pipeline's
            :class:`pomp_seg.record_crop.RecordMaskCrop` (ZSSeg's stage (a)): each view is filled
            outside its class and classified at its own size, CLIP's positional embedding
            resized to it (:func:`pomp_seg.crop_classifier.encode_any_size`). False: the model
            crops each mask's box from the image and resizes it to CLIP's input.
        fill: outside the mask, ``'normalised_mean'`` (ZSSeg's: CLIP's mean pixel as a
            normalised value, a light grey) or ``'mean'`` (the mean colour, 0 once normalised).
        temperature: the logits' scale; ZSSeg's stage (a) fixes 100, None = the CLIP's
            ``logit_scale.exp()`` (100.03 for OpenAI's float16 weights).
    """

    def __init__(self, class_split: str, clip_model: str = "ViT-B-16",
                 clip_pretrained: Optional[str] = "openai", prompt: Optional[str] = None,
                 init_words: Optional[str] = None, min_pixels: int = 16, min_crop_size: int = 0,
                 prompt_trusted: bool = False, crops_per_image: Optional[int] = None,
                 crop_in_pipeline: bool = False, fill: str = "normalised_mean",
                 temperature: Optional[float] = 100.0, data_preprocessor: Optional[dict] = None, init_cfg: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {sorted(FILLS)}, got {fill!r}")
        classes, unseen = resolve_split(class_split)
        self.classes = classes
        self.seen = [i for i, c in enumerate(classes) if c not in set(unseen)]
        self._lut = {c: k for k, c in enumerate(self.seen)}  # dataset label -> seen-list index
        clip, tokenizer = build_clip(clip_model, clip_pretrained)
        self.clip = clip
        self.prompt = build_prompt(clip, tokenizer, prompt, init_words, prompt_trusted)
        self.prompt.requires_grad_(True)
        self.text = PromptedTextEncoder(clip, tokenizer)
        self.crops = CLIPCropClassifier(clip.visual, float(clip.logit_scale.exp()), temperature=temperature,
                                        min_crop_size=min_crop_size)
        self.min_pixels = min_pixels
        self.crops_per_image = crops_per_image
        self.crop_in_pipeline = crop_in_pipeline
        self.fill = fill

    def train(self, mode: bool = True) -> "PromptTuner":
        super().train(mode)
        self.clip.eval()
        return self

    def _record(self, sample) -> Optional[int]:
        record = sample.metainfo.get("category_id")  # a ClassRecordDataset record: its class only
        if record is not None and record not in self._lut:
            name = self.classes[record] if 0 <= record < len(self.classes) else "out of range"
            raise ValueError(f"a record of class {record} ({name}) is not a seen class of model.class_split; "
                             "the training dataset and model.class_split must have the same classes and split")
        if record is None and self.crop_in_pipeline:
            raise ValueError("crop_in_pipeline=True needs ClassRecordDataset records (sample_per_class set) "
                             "cut by RecordMaskCrop in the pipeline; got a sample without category_id")
        return record

    def _views(self, inputs: torch.Tensor, data_samples: SampleList) -> Tuple[List[torch.Tensor], List[int]]:
        """The pipeline's record views, filled outside their class, and their seen-list labels."""
        fill = FILLS[self.fill].to(inputs).view(3, 1, 1)
        views, labels = [], []
        for img, sample in zip(inputs, data_samples):
            record = self._record(sample)
            h, w = sample.metainfo["img_shape"]  # before the preprocessor's padding
            mask = (sample.gt_sem_seg.data[0, :h, :w] == record).to(img.dtype)
            if int(mask.sum()) < self.min_pixels:
                continue
            views.append(self.crops.to_clip(img[:, :h, :w]) * mask + (1 - mask) * fill)
            labels.append(self._lut[record])
        return views, labels

    def _box_crops(self, inputs: torch.Tensor, data_samples: SampleList) -> Tuple[List[torch.Tensor], List[int]]:
        """Each image's masks cropped to their boxes and resized to CLIP's input, and their labels."""
        fill = FILLS[self.fill].to(inputs)
        images, labels = [], []
        for img, sample in zip(inputs, data_samples):
            seg = sample.gt_sem_seg.data[0]
            masks, ids = [], []
            record = self._record(sample)
            for c in ([record] if record is not None else torch.unique(seg).tolist()):
                mask = seg == c
                if c in self._lut and int(mask.sum()) >= self.min_pixels:
                    masks.append(mask)
                    ids.append(self._lut[c])
            if self.crops_per_image is not None and len(masks) > self.crops_per_image:
                keep = torch.randperm(len(masks))[:self.crops_per_image].tolist()
                masks, ids = [masks[k] for k in keep], [ids[k] for k in keep]
            if masks:
                images.append(self.crops.crops(img, torch.stack(masks), fill=fill))
                labels += ids
        return images, labels

    def crop_logits(self, inputs: torch.Tensor, data_samples: SampleList
                    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], List[int]]:
        """``(crops, logits over the seen classes, labels)`` of a batch; ``(None, None, [])``
        when it holds no seen crop."""
        if self.crop_in_pipeline:
            views, labels = self._views(inputs, data_samples)
            crops = torch.stack(views) if views else None
            encode = lambda x: F.normalize(encode_any_size(self.crops.visual, x).float(), dim=-1)  # noqa: E731
        else:
            images, labels = self._box_crops(inputs, data_samples)
            crops = torch.cat(images) if images else None
            encode = self.crops.image_features
        if crops is None:
            return None, None, []
        with torch.no_grad():
            feats = encode(crops)
        names = [self.classes[i] for i in self.seen]
        text = F.normalize(self.text(self.prompt, names).float(), dim=-1)
        return crops, self.crops.temperature * feats @ text.t(), labels

    def loss(self, inputs: torch.Tensor, data_samples: SampleList) -> Dict[str, torch.Tensor]:
        _, logits, labels = self.crop_logits(inputs, data_samples)
        if logits is None:  # no seen object in this batch: a zero loss that keeps the graph
            return {"loss_prompt": self.prompt.ctx.sum() * 0.0}
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
