# Stage (b) on COCO-Stuff 164K (156 seen / 15 unseen), ZSSeg's zero_shot_maskformer_R101c_bs32_60k:
# 640-px crops and test size, 60k iterations at batch 32 (4 images x 8 GPUs), queries and
# crops classified with the stage-(a) prompt; λ = 0.8.
_base_ = ['./_base_/datasets/coco-stuff164k_zsseg.py', 'mmseg::_base_/default_runtime.py',
          './_base_/zsseg_r101c.py']
model = dict(
    data_preprocessor=dict(size=_base_.crop_size),
    seen_classes=_base_.dataset_type, ensemble_lambda=0.8,
    text_encoder=dict(dataset_name=_base_.dataset_type,
                      prompt='work_dirs/zsseg-prompt_coco-stuff164k/prompt.pth'),  # stage (a)
    decode_head=dict(num_classes=_base_.num_seen, loss_cls=dict(class_weight=[1.0] * _base_.num_seen + [0.1])))
max_iters = 60000
param_scheduler = [dict(_base_.param_scheduler[0], end=max_iters)]
train_cfg = dict(max_iters=max_iters)
