#!/usr/bin/env python
"""Mutation testing of one module with mutmut 3 against the test files that cover it.

    python tools/mutation.py pomp_det/fast_rcnn.py            # the covering tests of COVERING
    python tools/mutation.py pomp_seg/metric.py tests/seg/test_components.py
    python tools/mutation.py --list                           # the table

mutmut reads its settings from the current folder and mutates a copy, so each run gets its
own folder (``build/mutation/<module>``, kept for ``mutmut show <mutant>`` there): the
repository's packages, tools, configs and tests are linked into it and a ``setup.cfg``
restricts mutmut to the one module and the given tests. Prints killed / survived / no
tests / timeout and the kill rate, and writes the surviving mutants' diffs to
``survivors.txt`` in that folder. mutmut does not mutate decorated functions other than
static / class methods (detectron2's ``@configurable`` constructors, ``@torch.no_grad``
methods) nor module-level tables: those are covered by the value tests only.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
LINKED = ["pomp_core", "pomp_det", "pomp_seg", "pomp_world", "tools", "tests", "configs", "pytest.ini"]
# module -> the fast test files whose failures a bug in it should cause (docs/README.md);
# mutmut runs them twice in one process, so a test that registers a dataset must do so once
COVERING: Dict[str, List[str]] = {
    "pomp_det/fast_rcnn.py": ["tests/det/test_values_fast_rcnn.py",
                              *[f"tests/det/test_classifier.py::test_{t}" for t in (
                                  "federated_classes_keep_present_and_sample_by_weight",
                                  "sigmoid_federated_loss_only_counts_selected_classes",
                                  "max_size_loss_uses_the_largest_proposal_but_the_last",
                                  "test_scores_are_geometric_mean_with_objectness")],
                              "tests/core/test_mutation_guards.py::test_federated_classes_never_draw_a_present_class_again"],
    "pomp_det/roi_heads.py": ["tests/det/test_values_roi_heads.py"],
    "pomp_det/centernet/proposal_generator.py": ["tests/det/test_values_centernet.py"],
    "pomp_det/centernet/losses.py": ["tests/det/test_values_centernet.py",
                                     "tests/det/test_centernet.py::test_heatmap_focal_loss_on_a_tiny_target",
                                     "tests/det/test_centernet.py::test_giou_loss_on_ltrb_distances"],
    "pomp_det/detic_checkpoint.py": ["tests/det/test_values_det_data.py", "tests/det/test_values_detic.py"],
    "pomp_det/detic_keys.py": ["tests/det/test_values_det_data.py", "tests/det/test_values_detic.py",
                               "tests/det/test_detic_configs.py"],
    "pomp_det/data/category_counts.py": ["tests/det/test_values_det_data.py"],
    "pomp_det/data/multi_dataset.py": ["tests/det/test_values_det_data.py", "tests/det/test_data.py"],
    "pomp_seg/metric.py": ["tests/seg/test_values_seg_metric.py"]
    + [f"tests/seg/test_components.py::test_metric_{t}" for t in (
        "against_a_hand_computation", "without_unseen_classes_reports_miou_only")],
    "pomp_seg/crop_classifier.py": ["tests/seg/test_values_seg_metric.py",
                                    "tests/seg/test_recipe.py::test_crops_are_renormalised_from_imagenet_to_clip_statistics"]
    + [f"tests/seg/test_components.py::test_masked_crops_{t}" for t in (
        "fill_outside_the_mask_with_the_mean", "min_size_keeps_the_object_size")],
    "pomp_seg/mask_proposal_head.py": [
        *[f"tests/seg/test_values_segmentor.py::test_proposal_head_{t}" for t in (
            "drops_the_no_object_column_after_the_softmax", "defaults_are_zssegs_and_its_arguments_reach_the_classifier",
            "loss_sets_the_padded_shape_and_passes_train_cfg", "forward_shapes_per_padding_mask")],
        "tests/seg/test_golden.py::test_padding_mask_options_mask_padded_keys_where_they_say"],
    "pomp_seg/segmentor.py": [f"tests/seg/test_values_segmentor.py::test_{t}" for t in (
        "encode_decode_by_hand_near_the_threshold_on_two_images",
        "unseen_everywhere_without_seen_flags_and_the_region_prompt",
        "training_labels_index_the_seen_list_and_unseen_become_ignore", "set_vocabulary_and_its_errors",
        "predict_crops_to_the_image_before_the_crops_and_the_padding_after",
        "loss_trains_on_the_seen_embeddings_and_labels_with_the_decode_prefix",
        "defaults_threshold_at_one_half_on_probabilities_and_lambda_point_seven",
        "encode_decode_scores_the_heads_own_proposals", "pretrained_and_init_cfg_reach_the_backbone_and_the_model",
        "without_normalisation_in_the_preprocessor_crops_are_taken_as_clip_normalised",
        "train_and_test_cfg_clip_temperature_and_min_crop_size_reach_the_model",
        "a_neck_sits_between_the_backbone_and_the_head", "without_a_preprocessor_crops_are_taken_as_clip_normalised",
        "encode_decode_takes_h_w_of_img_shape_or_the_input_and_keeps_double_precision",
        "without_samples_the_whole_input_is_each_image_even_for_a_head_that_masks_padding",
        "seen_labels_stay_on_the_device_of_the_labels")]
    + ["tests/seg/test_recipe.py::test_empty_proposal_gets_a_neutral_clip_probability",
       "tests/seg/test_components.py::test_ensemble_formula_by_hand",
       "tests/seg/test_components.py::test_pixel_scores_sum_over_queries"],
    "pomp_seg/record_crop.py": ["tests/seg/test_values_record_crop.py", "tests/seg/test_stage_a_golden.py"]
    + [f"tests/seg/test_record_crop.py::test_{t}" for t in (
        "the_box_loses_the_last_row_and_column_as_zssegs", "the_random_crop_falls_back_to_the_centre_at_the_nearest_aspect",
        "the_view_is_height_by_width_with_the_labels_resized_nearest",
        "a_view_without_the_class_is_dropped_unless_asked_to_keep_it")],
    "pomp_seg/zsseg_checkpoint.py": ["tests/seg/test_values_zsseg_checkpoint.py"]
    + [f"tests/seg/test_zsseg_checkpoint.py::test_{t}" for t in (
        "resnet_keys", "model_keys", "a_one_layer_query_projection_is_a_linear", "set_aside_keys_have_a_reason")],
    "pomp_seg/prompt_tuning.py": ["tests/seg/test_values_prompt_tuning.py",
                                  "tests/seg/test_class_records.py::test_prompt_tuner_crops_a_records_class_alone"]
    + [f"tests/seg/test_record_crop.py::test_{t}" for t in (
        "views_are_filled_outside_their_class_at_their_own_size", "a_view_needs_a_record_and_the_fill_a_known_name",
        "box_crops_take_the_fill_too")],
    "pomp_seg/class_records.py": ["tests/seg/test_values_class_records.py",
                                  "tests/seg/test_class_records.py::test_listed_labels_are_those_mmseg_loads",
                                  "tests/seg/test_class_count_cache.py::test_a_relative_cache_lives_in_the_data_root_and_moves_with_it",
                                  "tests/seg/test_record_crop.py::test_a_dropped_record_is_replaced_by_another"],
    "pomp_seg/text_encoder.py": [f"tests/seg/test_values_segmentor.py::test_{t}" for t in (
        "templates_are_averaged_after_normalising_each", "background_row_is_normalised_and_scaled",
        "encode_keeps_the_asked_order_with_repeats_and_without_a_cache", "clip_text_encoder_sizes_are_checked",
        "state_dict_holds_the_text_tower_only_and_it_stays_in_eval", "encoder_class_names_sources",
        "text_encoder_loads_vit_b_16_openai_by_default_and_passes_its_prompt_arguments",
        "text_encoder_prompt_is_frozen_and_its_state_and_init", "text_encoder_templates_allow_repeated_names_uncached",
        "text_modules_of_a_tower_behind_text_and_a_linear_projection",
        "encoder_class_names_from_a_world_classes_json_its_folder_and_mmseg_names", "text_encoder_size_mismatch_message")]
    + [f"tests/seg/test_components.py::test_text_encoder_{t}" for t in (
        "matches_class_embeddings_and_the_clip_text_encoder_call", "caches_frozen_prompt_features",
        "background_embedding", "bad_input")],
    "pomp_core/embeddings.py": ["tests/core/test_values.py"],
    "pomp_core/text_encoder.py": ["tests/core/test_values.py", "tests/core/test_text_encoder.py",
                                  "tests/core/test_mutation_guards.py"],
    "pomp_core/durable.py": ["tests/core/test_values.py"],
    "pomp_core/pretrain/proposals.py": ["tests/core/test_values.py"],
    "pomp_core/pretrain/augment.py": ["tests/core/test_values.py"],
    "pomp_core/pretrain/contrast.py": ["tests/core/pretrain/test_contrast.py",
                                       "tests/core/pretrain/test_train.py::test_k_equal_n_release_margin_and_ours"],
    "tools/export_prompt.py": ["tests/core/test_values.py", "tests/core/pretrain/test_release_checkpoints.py"],
    "pomp_world/report.py": ["tests/world/test_values_report.py"],
    "pomp_core/transfer/evaluate.py": ["tests/core/transfer/test_values_transfer.py"],
    "pomp_core/transfer/report.py": ["tests/core/transfer/test_values_transfer.py"],
    "pomp_core/zero_shot.py": ["tests/core/transfer/test_values_transfer.py"],
    "pomp_core/pretrain/selection.py": ["tests/core/pretrain/test_values_selection.py"],
    "pomp_core/pretrain/train_data.py": ["tests/core/pretrain/test_values_selection.py"],
    "pomp_det/zero_shot_classifier.py": ["tests/det/test_values_det_vocab.py"],
    "pomp_det/data/lvis_norare.py": ["tests/det/test_values_det_vocab.py"],
    "pomp_det/data/image_labels.py": ["tests/det/test_values_det_vocab.py"],
    "pomp_det/vocabulary.py": ["tests/det/test_values_det_vocab.py"],
    "pomp_seg/datasets.py": ["tests/seg/test_splits_and_text_classifier.py"],
    "pomp_seg/text_classifier.py": ["tests/seg/test_splits_and_text_classifier.py"],
}
STATUS = ("killed", "survived", "no tests", "timeout", "suspicious", "skipped", "segfault",
          "caught by type check", "not checked")


def setup_folder(module: str, tests: Sequence[str], workdir: Path) -> None:
    """A fresh run folder: links to the repository's parts and mutmut's setup.cfg."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    for name in LINKED:
        (workdir / name).symlink_to(REPO / name)
    package = module.split("/")[0]
    cfg = ["[mutmut]", f"source_paths = {package}", f"only_mutate = {module}",
           "also_copy =", *[f"    {n}" for n in LINKED if n not in (package, "tests")],
           "pytest_add_cli_args_test_selection =", *[f"    {t}" for t in tests],
           "pytest_add_cli_args =", "    -p", "    no:cacheprovider", "    -q",
           "use_git_change_detection = false", "track_dependencies = false"]
    (workdir / "setup.cfg").write_text("\n".join(cfg) + "\n")


def counts(workdir: Path, env: Dict[str, str]) -> Dict[str, int]:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=workdir, env=env,
                         capture_output=True, text=True, check=True).stdout
    tally = {s: 0 for s in STATUS}
    for line in out.splitlines():
        m = re.match(r"\s+(\S+): (.+)$", line)
        if m:
            tally[m.group(2).strip()] = tally.get(m.group(2).strip(), 0) + 1
    return tally


def survivors(workdir: Path, env: Dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results"], cwd=workdir, env=env,
                         capture_output=True, text=True, check=True).stdout
    diffs, untested = [], []
    for line in out.splitlines():
        m = re.match(r"\s+(\S+): (survived|no tests|timeout|suspicious)$", line)
        if m and m.group(2) == "no tests":  # names only: no covering test ran the function
            untested.append(f"# {m.group(1)}: no tests")
        elif m:
            diffs.append(subprocess.run([sys.executable, "-m", "mutmut", "show", m.group(1)], cwd=workdir, env=env,
                                        capture_output=True, text=True).stdout)
    return "\n".join(diffs + untested)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, int]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("module", nargs="?", help="the module to mutate, a path such as pomp_det/fast_rcnn.py")
    p.add_argument("tests", nargs="*", help="test files (or node ids); default: the module's row of COVERING")
    p.add_argument("--workdir", type=Path, help="run folder (default build/mutation/<module>)")
    p.add_argument("--max-children", type=int, default=1, help="parallel mutmut workers (default 1)")
    p.add_argument("--list", action="store_true", help="print the module -> tests table and exit")
    args = p.parse_args(argv)
    if args.list or not args.module:
        for module, tests in COVERING.items():
            print(f"{module}: {' '.join(tests)}")
        return {}
    module = Path(args.module).as_posix()
    if not (REPO / module).is_file():
        raise FileNotFoundError(f"'{module}' is not a file of the repository: give a path such as pomp_det/fast_rcnn.py")
    tests = list(args.tests) or COVERING.get(module)
    if not tests:
        raise ValueError(f"no covering tests listed for {module} in tools/mutation.py: name the test files")
    workdir = args.workdir or REPO / "build" / "mutation" / module.replace("/", ".")[:-3]
    setup_folder(module, tests, workdir)
    # the copy under mutants/ must be what the tests import, never the repository
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    kept = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != REPO]
    env["PYTHONPATH"] = os.pathsep.join(kept)
    with open(workdir / "mutmut-run.log", "w") as log:  # mutmut's progress spinner: kept out of the terminal
        run = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children)],
                             cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    if run.returncode:
        tail = (workdir / "mutmut-run.log").read_text()[-3000:]
        raise RuntimeError(f"mutmut run failed (exit {run.returncode}); the end of its log:\n{tail}")
    tally = counts(workdir, env)
    (workdir / "survivors.txt").write_text(survivors(workdir, env))
    judged = tally["killed"] + tally["survived"] + tally["no tests"] + tally["timeout"] + tally["suspicious"]
    rate = 100.0 * (tally["killed"] + tally["timeout"]) / judged if judged else float("nan")
    summary = {k: v for k, v in tally.items() if v}
    print(json.dumps({"module": module, **summary, "kill_rate": round(rate, 1)}))
    print(f"surviving mutants: {workdir / 'survivors.txt'}")
    return tally


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    from pomp_core.cli import run_tool

    run_tool(main)
