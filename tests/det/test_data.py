"""pomp_det's multi-dataset sampling: datasets drawn by ratio, batches of one dataset each."""
import itertools

import pytest

from tests.frameworks import require

require("detectron2")
from pomp_det.data.multi_dataset import GroupedByDataset, MultiDatasetSampler  # noqa: E402


def test_sampler_draws_datasets_by_ratio_and_stays_in_range():
    sampler = MultiDatasetSampler(sizes=[5, 20], ratios=[1, 3], seed=0)
    draws = list(itertools.islice(iter(sampler), 4000))
    assert all(0 <= i < 25 for i in draws)
    share_second = sum(i >= 5 for i in draws) / len(draws)
    assert share_second == pytest.approx(0.75, abs=0.03)  # the ratio, not the sizes (which give 0.8)
    assert set(i for i in draws if i < 5) == set(range(5))  # every item of the small dataset is reached
    assert draws == list(itertools.islice(iter(MultiDatasetSampler([5, 20], [1, 3], seed=0)), 4000))


def test_sampler_rejects_mismatched_ratios_and_empty_datasets():
    with pytest.raises(ValueError, match="DATASET_RATIO"):
        MultiDatasetSampler(sizes=[5, 20], ratios=[1])
    with pytest.raises(ValueError, match="empty"):
        MultiDatasetSampler(sizes=[5, 0], ratios=[1, 1])


def test_batches_hold_one_dataset_each_at_its_batch_size():
    items = [{"dataset_source": s, "i": k} for k, s in enumerate([0, 1, 1, 0, 1, 1, 1, 0, 1, 1])]
    batches = list(GroupedByDataset(items, batch_sizes=[2, 3]))
    assert [[d["i"] for d in b] for b in batches] == [[0, 3], [1, 2, 4], [5, 6, 8]]
    assert all(len({d["dataset_source"] for d in b}) == 1 for b in batches)
