"""The installed stack: each framework imports and builds a tiny model on CPU."""
import numpy as np
import torch

from tests.frameworks import require


def test_open_clip_tiny_model_runs(tiny_clip):
    model, tokenizer, preprocess = tiny_clip
    from PIL import Image

    image = preprocess(Image.fromarray(np.full((40, 50, 3), 128, dtype=np.uint8))).unsqueeze(0)
    with torch.no_grad():
        img = model.encode_image(image, normalize=True)
        txt = model.encode_text(tokenizer(["a cat", "a dog"]), normalize=True)
    assert img.shape == (1, 48) and txt.shape == (2, 48)


def test_mmcv_ops_run_on_cpu():
    ops = require("mmcv.ops")
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    _, keep = ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    feat = torch.arange(16.0).view(1, 1, 4, 4)
    out = ops.roi_align(feat, torch.tensor([[0, 0, 0, 4, 4]], dtype=torch.float32), (2, 2), 1.0, 2, "avg", True)
    assert out.shape == (1, 1, 2, 2) and out[0, 0, 0, 0] < out[0, 0, 1, 1]


def test_detectron2_builds_and_runs_a_tiny_rcnn():
    require("detectron2")
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 20
    cfg.INPUT.MIN_SIZE_TEST = 64
    model = build_model(cfg).eval()
    with torch.no_grad():
        (out,) = model([{"image": torch.randint(0, 255, (3, 64, 80), dtype=torch.uint8), "height": 64, "width": 80}])
    assert out["instances"].image_size == (64, 80)


def test_lvis_api_imports():
    lvis = require("lvis")
    assert hasattr(lvis, "LVIS") and hasattr(lvis, "LVISEval")


def test_mmseg_builds_and_runs_a_tiny_segmentor():
    require("mmseg.models")
    require("mmdet")
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    model = MODELS.build(dict(
        type="EncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", size=(32, 32)),
        backbone=dict(type="ResNetV1c", depth=18, num_stages=4, out_indices=(3,), base_channels=8),
        decode_head=dict(type="FCNHead", in_channels=64, channels=8, num_convs=1, num_classes=4,
                         in_index=0, concat_input=False),
    )).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 32, 32), mode="tensor")
    assert logits.shape[:2] == (1, 4)


def test_mmdet_builds_a_tiny_detector_component():
    require("mmdet")
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    init_default_scope("mmdet")
    fpn = MODELS.build(dict(type="FPN", in_channels=[8, 16], out_channels=8, num_outs=2))
    outs = fpn((torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8)))
    assert [o.shape[-1] for o in outs] == [16, 8]
