"""Config keys of the CenterNet proposal generator (CenterNet2's names and defaults, the
subset pomp_det implements) and of Detic's timm backbone (``MODEL.TIMM``)."""
from detectron2.config import CfgNode as CN


def add_centernet_config(cfg: CN) -> None:
    """Add ``MODEL.CENTERNET``, ``MODEL.TIMM`` and ``SOLVER.OPTIMIZER`` / ``BACKBONE_MULTIPLIER``
    (read by :func:`pomp_det.centernet.solver.build_optimizer`)."""
    c = cfg.MODEL.CENTERNET = CN()
    c.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    c.FPN_STRIDES = [8, 16, 32, 64, 128]
    # Heads: GN conv towers, a class-agnostic heatmap (the objectness) and ltrb distances.
    c.NORM = "GN"
    c.NUM_BOX_CONVS = 4
    c.NUM_SHARE_CONVS = 0
    c.PRIOR_PROB = 0.01
    # Targets: a Gaussian around each box centre on the levels whose size range holds it.
    c.SOI = [[0, 80], [64, 160], [128, 320], [256, 640], [512, 10000000]]
    c.HM_MIN_OVERLAP = 0.8
    c.MIN_RADIUS = 4
    # Losses: heatmap focal loss (positives at centres, negatives weighted by (1 - target)^beta),
    # GIoU on the 3x3 cells around each centre.
    c.HM_FOCAL_ALPHA = 0.25
    c.HM_FOCAL_BETA = 4
    c.LOSS_GAMMA = 2.0
    c.SIGMOID_CLAMP = 1e-4
    c.IGNORE_HIGH_FP = -1.0  # > 0: negatives predicted above this are not penalised
    c.POS_WEIGHT = 1.0
    c.NEG_WEIGHT = 1.0
    c.REG_WEIGHT = 2.0
    c.LOC_LOSS_TYPE = "giou"
    # Proposals: heatmap score > INFERENCE_TH, top PRE_NMS_TOPK per level, NMS, POST_NMS_TOPK.
    c.INFERENCE_TH = 0.05
    c.PRE_NMS_TOPK_TRAIN = 1000
    c.POST_NMS_TOPK_TRAIN = 100
    c.PRE_NMS_TOPK_TEST = 1000
    c.POST_NMS_TOPK_TEST = 100
    c.NMS_TH_TRAIN = 0.6
    c.NMS_TH_TEST = 0.6
    # CenterNet2's two-stage mode: proposals from the agnostic heatmap only. The one-stage
    # per-class detector (False) is not implemented here.
    c.ONLY_PROPOSAL = True
    c.WITH_AGN_HM = True

    t = cfg.MODEL.TIMM = CN()
    t.BASE_NAME = "resnet50"  # a timm model name; "resnet50_in21k" (Detic's) = timm's resnet50
    t.OUT_LEVELS = [3, 4, 5]
    t.NORM = "FrozenBN"  # or "BN", "SyncBN", "GN" ... (detectron2's get_norm names)
    t.FREEZE_AT = 0
    # A local timm or torchvision checkpoint of the bottom-up network (a file path; nothing is
    # downloaded). Its classifier (fc / head) is dropped.
    t.CHECKPOINT = ""

    cfg.SOLVER.OPTIMIZER = "SGD"  # or "ADAMW" (Detic's recipe)
    cfg.SOLVER.BACKBONE_MULTIPLIER = 1.0
