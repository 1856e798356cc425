"""Proposal distributions for the negatives of local contrast."""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F


class Proposal:
    """Uniform over all classes (the default; the correction then has its closed form)."""

    def distribution(self, labels: torch.Tensor) -> Optional[torch.Tensor]:
        return None

    def refresh(self, step: int, encode_all: Callable[[], torch.Tensor]) -> None:
        """Hook called before every step; only the similarity proposal uses it."""

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        pass


class FrequencyProposal(Proposal):
    """q_j ∝ training images of class j."""

    def __init__(self, labels: Sequence[int], num_classes: int) -> None:
        counts = torch.bincount(torch.as_tensor(list(labels)), minlength=num_classes).double()
        self.q = counts / counts.sum()

    def distribution(self, labels: torch.Tensor) -> torch.Tensor:
        return self.q


class SimilarityProposal(Proposal):
    """Hard negatives: classes whose text features are close to the batch's classes.

    A bank of all N class features (current prompt, no grad) is refreshed every
    ``refresh_steps``. For a batch, ``q ∝ (1-ε)·softmax(max_pos cos(w_pos, w_j)/τ) + ε/N``
    where the hard part excludes the batch's own classes (they are always close to
    themselves). The uniform part keeps every class drawable, so K-1 distinct negatives
    always exist and the margin ``-log(n_i q_j)`` stays finite.
    """

    def __init__(self, num_classes: int, refresh_steps: int, temperature: float, uniform_mix: float) -> None:
        self.num_classes = num_classes
        self.refresh_steps = refresh_steps
        self.temperature = temperature
        if not 0 < uniform_mix <= 1:
            raise ValueError(f"sampling.uniform_mix must be in (0, 1], got {uniform_mix}")
        self.uniform_mix = uniform_mix
        self.bank: Optional[torch.Tensor] = None
        self.bank_step = -1

    def refresh(self, step: int, encode_all: Callable[[], torch.Tensor]) -> None:
        if self.bank is None or step - self.bank_step >= self.refresh_steps:
            self.bank = F.normalize(encode_all().detach().float().cpu(), dim=-1)
            self.bank_step = step

    def distribution(self, labels: torch.Tensor) -> torch.Tensor:
        assert self.bank is not None, "refresh() must run before the first step"
        own = torch.unique(labels.cpu())
        score = (self.bank[own] @ self.bank.t()).max(dim=0).values / self.temperature
        score[own] = float("-inf")
        hard = torch.softmax(score.double(), dim=0)
        return (1 - self.uniform_mix) * hard + self.uniform_mix / self.num_classes

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {} if self.bank is None else {"bank": self.bank, "bank_step": torch.tensor(self.bank_step)}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        if "bank" in state:
            self.bank, self.bank_step = state["bank"], int(state["bank_step"])


def build_proposal(kind: str, train_labels: Sequence[int], num_classes: int,
                   refresh_steps: int = 200, temperature: float = 0.05, uniform_mix: float = 0.5) -> Proposal:
    if kind == "uniform":
        return Proposal()
    if kind == "frequency":
        return FrequencyProposal(train_labels, num_classes)
    if kind == "similarity":
        return SimilarityProposal(num_classes, refresh_steps, temperature, uniform_mix)
    raise ValueError(f"unknown proposal '{kind}': use uniform, frequency or similarity")
