import pytest
import torch

import pomp_core


@pytest.fixture(scope="session")
def tiny_clip():
    """A tiny random CLIP: text width 64 != embed dim 48, so a transposed projection fails."""
    torch.manual_seed(0)
    model, tokenizer, preprocess = pomp_core.load_clip("pomp-tiny")
    return model, tokenizer, preprocess
