"""``add_pomp_det_config(cfg)``: the config keys pomp_det adds to a detectron2 config."""
from detectron2.config import CfgNode as CN

from .centernet.config import add_centernet_config


def add_pomp_det_config(cfg: CN) -> None:
    """Add the POMP classifier, federated loss, image-label and multi-dataset keys."""
    cfg.MODEL.POMP = CN()
    # Class embeddings: a ready [C, D] .npy (Detic's format: float16, not normalised) ...
    cfg.MODEL.POMP.EMBEDDINGS = ""
    # ... or computed once from a prompt (file, or hand-crafted words) + CLIP + vocabulary,
    # then cached on disk under CACHE_DIR (keyed by model, prompt and names).
    cfg.MODEL.POMP.PROMPT = ""
    cfg.MODEL.POMP.PROMPT_WORDS = ""  # e.g. "a photo of a": a hand-crafted prompt instead
    # Unpickle PROMPT fully (a raw Dassl checkpoint of the release pickles its scheduler);
    # only for files you trust: unpickling runs code.
    cfg.MODEL.POMP.PROMPT_TRUSTED = False
    cfg.MODEL.POMP.CLIP_MODEL = "ViT-B-16-quickgelu"
    cfg.MODEL.POMP.CLIP_PRETRAINED = "openai"  # open_clip tag or a local checkpoint file
    # Names for the computed embeddings: a list source understood by pomp_core.load_vocabulary
    # (txt, json, "a,b,c"); empty = thing_classes of DATASETS.TRAIN[0].
    cfg.MODEL.POMP.VOCABULARY = ""
    cfg.MODEL.POMP.CACHE_DIR = "~/.cache/pomp/embeddings"
    # "random": unit-norm Gaussian rows of EMBED_DIM (the control without text knowledge).
    cfg.MODEL.POMP.RANDOM_EMBEDDINGS_SEED = -1
    # Classifier: Linear(box feature -> EMBED_DIM), L2-normalise, x TEMPERATURE, dot with
    # the frozen unit class embeddings (+ a zero background column).
    cfg.MODEL.POMP.EMBED_DIM = 512
    cfg.MODEL.POMP.TEMPERATURE = 50.0
    # A learned scalar bias on all class logits, initialised to the prior log(p / (1 - p)) with
    # p = 0.01 (the focal-loss prior): each sigmoid column then starts at "absent", as nearly all
    # proposals are for nearly all classes, instead of at T x cosine. Detic has none (the
    # default); the world configs turn it on (docs/detection.md, "On the synthetic world").
    cfg.MODEL.POMP.USE_BIAS = False
    cfg.MODEL.POMP.BIAS_INIT = -4.6
    # Losses: sigmoid cross-entropy, federated over the present classes + sampled ones.
    cfg.MODEL.POMP.USE_SIGMOID_CE = True
    cfg.MODEL.POMP.USE_FED_LOSS = True
    cfg.MODEL.POMP.FED_LOSS_NUM_CLASSES = 50
    cfg.MODEL.POMP.FED_LOSS_FREQ_WEIGHT = 0.5  # sampling prob ~ image_count ** this
    # Where the image counts come from: "cat_info" (Detic): CAT_FREQ_PATH, a category-info
    # file of the full training set (rare classes included; written by
    # `python -m pomp_det.data.category_counts`), or detectron2's builtin LVIS v1 counts (after 0.6) when
    # that file is absent and the vocabulary is LVIS v1's 1,203 classes; "train_boxes": counted
    # from the boxes of DATASETS.TRAIN (on a *_norare split the rare classes are never drawn).
    cfg.MODEL.POMP.FED_LOSS_WEIGHTS = "cat_info"
    cfg.MODEL.POMP.CAT_FREQ_PATH = "datasets/metadata/lvis_v1_train_cat_info.json"
    # Class-agnostic box regression with Detic's 2-layer MLP (Linear-ReLU-Linear); False =
    # detectron2's single Linear.
    cfg.MODEL.POMP.BOX_REG_MLP = True
    # Test score = sqrt(classification * objectness).
    cfg.MODEL.POMP.MULT_PROPOSAL_SCORE = True
    # Vocabulary at test time: "" = the training one; "dataset" = each test dataset's
    # thing_classes (needs a prompt or CLIP source, not a fixed .npy); or an .npy / names source
    # (a registered dataset's name among them) ...
    cfg.MODEL.POMP.TEST_VOCABULARY = ""
    # ... or one such source per DATASETS.TEST entry (Detic's MODEL.TEST_CLASSIFIERS)
    cfg.MODEL.POMP.TEST_VOCABULARIES = []
    # Detic-style image labels on the top-K proposals (Detic's WS_NUM_PROPS), per label a
    # one-hot BCE on one proposal: "max_size" (the largest) or "max_score" (the label's best).
    cfg.MODEL.POMP.IMAGE_LABEL_LOSS = "max_size"
    cfg.MODEL.POMP.IMAGE_LABEL_WEIGHT = 0.1
    cfg.MODEL.POMP.IMAGE_LABEL_TOPK = 128

    # Multi-dataset training (box-labelled + image-labelled): one entry per DATASETS.TRAIN.
    cfg.DATALOADER.MULTI_DATASET = False
    cfg.DATALOADER.DATASET_RATIO = [1, 1]  # sampling ratio between datasets
    # Images per batch of each dataset, per process (Detic's): the global batch grows with the
    # number of processes. The recipe's global batch is SOLVER.IMS_PER_BATCH (= DATASET_BATCH_SIZE[0]
    # x its number of GPUs); on another number the loader warns, and SOLVER.REFERENCE_WORLD_SIZE
    # (detectron2's) set to the recipe's scales the LR and schedule linearly instead.
    cfg.DATALOADER.DATASET_BATCH_SIZE = [2, 2]
    cfg.DATALOADER.DATASET_ANN_TYPE = ["box", "image"]  # "box" or "image" labels
    cfg.DATALOADER.USE_RFS = [False, False]  # repeat-factor sampling within each dataset (Detic's key)
    # Training augmentation: "resize_scale_crop" (Detic's EfficientDetResizeCrop: fit in a square
    # of INPUT_SIZE x a scale in INPUT_SCALE, random crop) or "resize_shortest_edge" (detectron2's;
    # per dataset DATASET_MIN_SIZE (an int, or a [lo, hi] range with MIN_SIZE_TRAIN_SAMPLING
    # "range") / MAX_SIZE; one dataset: detectron2's mapper, MIN_SIZE_TRAIN). Both then flip.
    # A single dataset (MULTI_DATASET False) uses entry 0 and detectron2's loader (IMS_PER_BATCH,
    # SAMPLER_TRAIN), as Detic's BoxSup stage.
    cfg.INPUT.DATASET_AUG = "resize_shortest_edge"
    cfg.INPUT.DATASET_INPUT_SIZE = [640, 320]
    cfg.INPUT.DATASET_INPUT_SCALE = [[0.1, 2.0], [0.5, 1.5]]
    cfg.INPUT.DATASET_MIN_SIZE = [640, 320]  # training shortest edge of each dataset
    cfg.INPUT.DATASET_MAX_SIZE = [1066, 533]

    # DistributedDataParallel(find_unused_parameters=...): image-label batches leave the box
    # regressor and the mask head without gradient (Detic's key and default).
    cfg.FIND_UNUSED_PARAM = True
    # Detic's FP16: the backbone alone under autocast (CUDA), its features cast back to float;
    # the loss is scaled (AMPTrainer). SOLVER.AMP.ENABLED (detectron2's) autocasts the whole model.
    cfg.FP16 = False

    add_centernet_config(cfg)  # MODEL.CENTERNET, MODEL.TIMM, SOLVER.OPTIMIZER (pomp_det/centernet)
