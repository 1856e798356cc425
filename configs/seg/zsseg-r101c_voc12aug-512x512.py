# Stage (b) on Pascal VOC 2012 (15 seen / 5 unseen), ZSSeg's zero_shot_maskformer_R101c_bs16_20k:
# the 10,582-image trainaug set, unseen pixels ignored; 20k iterations at batch 16
# (2 images x 8 GPUs); queries classified with the hand template "a sculpture of a {}.",
# crops with the stage-(a) prompt (ZSSeg's separate region adapter); λ = 0.7.
_base_ = ['./_base_/datasets/voc12aug_zsseg.py', 'mmseg::_base_/default_runtime.py',
          './_base_/zsseg_r101c.py']
model = dict(
    seen_classes=_base_.dataset_type, ensemble_lambda=0.7,
    text_encoder=dict(dataset_name=_base_.dataset_type, templates=['a sculpture of a {}.']),
    region_text_encoder=dict(type='POMPTextEncoder',
                             prompt='work_dirs/zsseg-prompt_voc12aug/prompt.pth'),  # stage (a)
    decode_head=dict(num_classes=_base_.num_seen, loss_cls=dict(class_weight=[1.0] * _base_.num_seen + [0.1])))
