# mmseg's own SAN on Pascal VOC (configs/san/san-vit-b16_voc12aug-640x640.py of the installed
# mmseg) with its CLIPTextEncoder replaced by POMP's: the type changes and the prompt and
# CLIP source are added; CLIPTextEncoder's other arguments (dataset_name='voc',
# cat_bg, sizes, ...) stay and are used or checked against the CLIP.
_base_ = ['mmseg::san/san-vit-b16_voc12aug-640x640.py']
custom_imports = dict(imports=['pomp_seg'], allow_failed_imports=False)
model = dict(text_encoder=dict(
    type='POMPTextEncoder',
    clip_model='ViT-B-16', clip_pretrained='openai',
    prompt='checkpoints/pomp_vit_b16_in21k.pth.tar'))  # the POMP release prompt
