"""The seg tools' untested paths: demo_seg.py with a vocabulary swap, a segmentor's vocabulary
swap, train_seg.py under ``--launcher pytorch`` with two CPU (gloo) processes; and mmseg's
SAN with POMP's text encoder in place of CLIPTextEncoder."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.frameworks import require

require("mmseg.models")
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

from pomp_world import WorldConfig, write_world  # noqa: E402
from tests.seg.seg_fixtures import ROOT, SEG_CONFIGS, TINY_MODEL, override_config  # noqa: E402

from tests.tool_scripts import load_tool  # noqa: E402

demo_seg = load_tool("demo_seg")

VOC_TINY = {**TINY_MODEL, "model.region_text_encoder.prompt": None,
            "model.region_text_encoder.init_words": "a sculpture of", "model.text_encoder.init_words": None}


@pytest.fixture(autouse=True)
def mmseg_scope():
    init_default_scope("mmseg")


@pytest.fixture()
def voc_tiny(tmp_path):
    """The VOC config made tiny, and a checkpoint of its (untrained) model."""
    cfg_path = override_config(tmp_path / "voc_tiny.py", SEG_CONFIGS / "zsseg-r101c_voc12aug-512x512.py", VOC_TINY)
    cfg = Config.fromfile(str(cfg_path))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    ckpt = tmp_path / "ckpt" / "model.pth"
    ckpt.parent.mkdir()
    torch.save({"meta": {}, "state_dict": model.state_dict()}, ckpt)  # as mmengine's Runner writes
    return cfg_path, ckpt, model.eval()


def test_vocabulary_swap_segments_the_new_names(voc_tiny):
    model = voc_tiny[2]
    image = torch.randn(1, 3, 32, 48)
    names = ["cat", "wall", "tree", "sofa"]
    model.set_vocabulary(names)
    out = model.predict(image)[0]
    assert out.seg_logits.data.shape == (4, 32, 48)
    assert set(out.pred_sem_seg.data.unique().tolist()) <= {0, 1, 2, 3}
    assert model.is_seen().tolist() == [True, False, False, False]  # VOC seen: cat; unseen: sofa
    with pytest.raises(ValueError, match="empty vocabulary"):
        model.set_vocabulary([])


def test_demo_draws_each_image_with_the_given_vocabulary(voc_tiny, tmp_path, capsys):
    cfg_path, ckpt, _ = voc_tiny
    img = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(img)
    out = demo_seg.main([str(cfg_path), str(ckpt), "--input", str(img), "--output", str(tmp_path / "out"),
                         "--vocabulary", "cat,wall,tree"])
    assert out == [str(tmp_path / "out" / "photo_seg.png")]
    drawn = Image.open(out[0])
    assert drawn.width == max(2 * 56, 260) and drawn.height > 40  # image | overlay, legend below
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(f"{img}:")][0]
    printed = line.split("->")[0].split(":", 1)[1]
    assert {n.strip() for n in printed.split(",")} <= {"cat", "wall", "tree"}
    with pytest.raises(FileNotFoundError, match="no.jpg' does not exist"):
        demo_seg.main([str(cfg_path), str(ckpt), "--input", str(tmp_path / "no.jpg"), "--output", str(tmp_path)])
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match="cannot read image .*broken.jpg"):
        demo_seg.main([str(cfg_path), str(ckpt), "--input", str(tmp_path / "broken.jpg"), "--output", str(tmp_path)])


@pytest.mark.xdist_group("two-process")  # ranks on both cores: never beside another two-process test
@pytest.mark.slow
def test_train_with_the_pytorch_launcher_on_two_cpu_processes(tmp_path):
    world = write_world(tmp_path / "world", WorldConfig(seg_classes=8, seg_images=(4, 2)), parts=("segmentation",))
    cfg = override_config(tmp_path / "ddp.py", SEG_CONFIGS / "zsseg-r18tiny_world.py", {
        "model.text_encoder.clip_pretrained": str(ROOT / "pomp_world/weights/pomp_world_clip.pt"),
        "model.text_encoder.prompt": None, "model.text_encoder.init_words": "a photo of a",
        "model.decode_head.num_classes": 6, "model.decode_head.loss_cls.class_weight": [1.0] * 6 + [0.1],
        "train_dataloader.batch_size": 1,
        "train_cfg.max_iters": 2, "default_hooks.checkpoint.interval": 2,
        "val_dataloader": None, "val_cfg": None, "val_evaluator": None})
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MASTER_PORT="29533")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
         str(ROOT / "tools/train_seg.py"), str(cfg), "--launcher", "pytorch", "--work-dir", str(tmp_path / "work"),
         "--data-root", world["seg_root"]], env=env, capture_output=True, text=True, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "work" / "iter_2.pth").is_file()
    logs = list((tmp_path / "work").glob("*/*.log"))
    text = logs[0].read_text()
    assert "Distributed training: True" in text and "GPU number: 2" in text  # mmengine's name for the world size


def test_pomp_text_encoder_drops_into_mmseg_san(tmp_path):
    cfg = Config.fromfile(str(SEG_CONFIGS / "san-vit-b16_voc12aug-640x640_pomp.py"))
    enc = cfg.model.text_encoder
    # a delta on mmseg's config: CLIPTextEncoder's arguments are all still there
    assert enc.type == "POMPTextEncoder" and enc.dataset_name == "voc" and enc.cat_bg is True
    assert (enc.embed_dims, enc.output_dims, enc.num_layers, enc.templates) == (512, 512, 12, "vild")
    assert cfg.model.type == "MultimodalEncoderDecoder"
    cfg.model.pretrained = None  # random weights, no files
    cfg.model.text_encoder.update(clip_pretrained=None, prompt=None, init_words="a photo of a")
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    keys = list(model.text_encoder.state_dict())
    assert keys and not [k for k in keys if "visual" in k]
    assert model.text_encoder().shape == (21, 512)  # 20 VOC classes + background
    with torch.no_grad():
        out = model.predict(torch.randn(1, 3, 64, 64))[0]
    assert out.pred_sem_seg.data.max() < 20 and out.seg_logits.data.shape[0] == 20


def test_text_encoder_checks_clip_text_encoder_sizes(tiny_clip):
    model, tokenizer, _ = tiny_clip
    common = dict(type="POMPTextEncoder", vocabulary=["cat"], clip=(model, tokenizer), init_words="a photo of a")
    enc = MODELS.build(dict(common, embed_dims=64, output_dims=48, context_length=77))
    assert enc().shape == (2, 48)  # cat_bg defaults to True, as mmseg's
    with pytest.raises(ValueError, match="output_dims"):
        MODELS.build(dict(common, output_dims=512))


def test_tool_configs_are_logged_and_dumped_without_a_yapf_pass(tmp_path, monkeypatch):
    """config_from_args turns mmengine's yapf formatting off (seconds a call on some configs,
    and the Runner logs and dumps the config 4-5 times a run); the dump is still the config,
    the rebuilt config keeps its file name and text; mmseg's default work dir; a missing config."""
    import mmengine.config.config as mm_config

    from pomp_seg.cli import base_parser, config_from_args

    def yapf(*args, **kwargs):
        raise AssertionError("the config text went through yapf")

    world = write_world(tmp_path / "world", WorldConfig(seg_images=(2, 1)), parts=("segmentation",))["seg_root"]
    args = base_parser("").parse_args([str(SEG_CONFIGS / "zsseg-r18tiny_world.py"), "--work-dir", str(tmp_path / "work"),
                                       "--data-root", str(world), "--cfg-options", "train_cfg.max_iters=7"])
    cfg = config_from_args(args)
    monkeypatch.setattr(mm_config, "FormatCode", yapf)
    dumped = tmp_path / "dumped.py"
    cfg.dump(str(dumped))
    again = Config.fromfile(str(dumped)).to_dict()
    assert again == cfg.to_dict() and again["train_cfg"]["max_iters"] == 7
    # the file name (the Runner names its dump after it) and the text with its bases are kept
    loaded = Config.fromfile(args.config)
    assert cfg.filename == args.config and cfg.text == loaded.text != Path(args.config).read_text()
    # without --work-dir: mmseg's ./work_dirs/<config name>
    args.work_dir = None
    assert config_from_args(args).work_dir == "./work_dirs/zsseg-r18tiny_world"
    args.cfg_options = {**args.cfg_options, "work_dir": str(tmp_path / "own")}  # a config's own work_dir stays
    assert config_from_args(args).work_dir == str(tmp_path / "own")
    args.config = str(tmp_path / "nope.py")
    with pytest.raises(FileNotFoundError, match=rf"^config '{args.config}' does not exist \(see configs/seg/\)$"):
        config_from_args(args)
