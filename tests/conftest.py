import os

# Under pytest-xdist (`make test` runs two workers, one per core) each worker computes on one
# thread, and so do the tools and ranks it starts (OMP_NUM_THREADS is read by their torch):
# two workers with two threads each would fight for two cores.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import random

import numpy as np
import pytest
import torch

import pomp_core

if XDIST_WORKER:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_clip():
    """A tiny random CLIP: text width 64 != embed dim 48, so a transposed projection fails."""
    torch.manual_seed(0)
    model, tokenizer, preprocess = pomp_core.load_clip("pomp-tiny")
    return model, tokenizer, preprocess


@pytest.fixture
def global_rng_kept():
    """Restores torch's, numpy's and Python's global generators after the test: model
    initialisations, loaders (their base seed) and augmentations draw from them, and the tests
    after it on the same worker must see them unchanged (modules opt in with ``usefixtures``)."""
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    yield
    torch.set_rng_state(states[0])
    np.random.set_state(states[1])
    random.setstate(states[2])


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """For ``--dist loadgroup``: a module's tests that share a module-scoped fixture (a trained
    world, a built model) run on one worker, so that the fixture is built once, not once per
    worker. Tests marked ``xdist_group`` (the two-process ones) keep their own group. Under
    xdist the slow tests are collected first, so that a long training does not start last."""
    if not XDIST_WORKER:
        return
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        if any(d.scope in ("module", "package", "class") for fds in defs.values() for d in fds):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
