"""The world tasks' shortened schedules: the main job and the world tests run the world configs
for fewer iterations through these options; each keeps the config's shape (the detector's one
decay at 80% of the run; stage (b)'s polynomial decay reaching zero at the end, with the one
checkpoint there), and at the config's own length gives the config's own values."""
import pytest

from tests.frameworks import require

DET_LENGTHS = [(300, 240), (200, 160), (150, 120), (7, 5)]  # iterations, decay step (odd: rounds down)


@pytest.mark.parametrize("iters,step", DET_LENGTHS)
def test_detector_schedule_decays_at_four_fifths_of_the_run(iters, step):
    require("detectron2")
    import pomp_det
    from pomp_world.tasks import detection

    shortened = pomp_det.load_pomp_cfg(str(detection.CONFIG), detection.schedule(iters))
    assert (shortened.SOLVER.MAX_ITER, tuple(shortened.SOLVER.STEPS)) == (iters, (step,))
    assert shortened.SOLVER.WARMUP_ITERS == 50  # left to the caller


def test_detector_schedule_at_the_configs_length_is_the_config():
    require("detectron2")
    import pomp_det
    from pomp_world.tasks import detection

    config = pomp_det.load_pomp_cfg(str(detection.CONFIG), [])
    shortened = pomp_det.load_pomp_cfg(str(detection.CONFIG), detection.schedule(config.SOLVER.MAX_ITER))
    assert tuple(shortened.SOLVER.STEPS) == tuple(config.SOLVER.STEPS)


def _stage_b(options):
    from mmengine.config import Config

    from pomp_seg.cli import base_parser
    from pomp_world.tasks import segmentation

    cfg = Config.fromfile(str(segmentation.SEG_CFG))
    if options:  # parsed as the tools parse them
        cfg.merge_from_dict(base_parser("").parse_args([str(segmentation.SEG_CFG), "--cfg-options", *options]).cfg_options)
    return cfg


@pytest.mark.parametrize("iters", [600, 300, 200, 7])
def test_stage_b_schedule_ends_its_decay_and_checkpoints_at_the_last_iteration(iters):
    require("mmseg.models")
    from pomp_world.tasks import segmentation

    cfg = _stage_b(segmentation.schedule(iters))
    assert cfg.train_cfg.max_iters == iters
    assert cfg.default_hooks.checkpoint.interval == iters
    poly = cfg.param_scheduler[0]
    assert (poly.type, poly.begin, poly.end, poly.by_epoch) == ("PolyLR", 0, iters, False)


def test_stage_b_schedule_at_the_configs_length_is_the_config():
    require("mmseg.models")
    from pomp_world.tasks import segmentation

    config = _stage_b([])
    shortened = _stage_b(segmentation.schedule(config.train_cfg.max_iters))
    for key in ("train_cfg", "default_hooks", "param_scheduler"):
        assert shortened[key] == config[key], key
