"""Proposal distributions for the negatives of local contrast, by name.

A distribution is a :class:`Proposal` registered under a name with
``@register_proposal(name, options=OptionsDataclass)``; the config selects it with
``sampling.distribution.name`` and sets its options under
``sampling.distribution.<name>.<option>`` (the dataclass's fields, defaults included), so
adding one is a class and a decorator here (or in a module imported before the config
is loaded).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence

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


@dataclass(frozen=True)
class ProposalEntry:
    cls: type
    options: Optional[type]  # a dataclass of the distribution's options, or None


PROPOSALS: Dict[str, ProposalEntry] = {}


def register_proposal(name: str, options: Optional[type] = None) -> Callable[[type], type]:
    """Class decorator: make ``cls(options, train_labels, num_classes)`` available as ``name``."""
    def register(cls: type) -> type:
        if name in PROPOSALS:
            raise ValueError(f"proposal distribution '{name}' is already registered ({PROPOSALS[name].cls.__name__})")
        if options is not None and not dataclasses.is_dataclass(options):
            raise TypeError(f"options of proposal '{name}' must be a dataclass, got {options!r}")
        PROPOSALS[name] = ProposalEntry(cls, options)
        return cls
    return register


@register_proposal("uniform")
class UniformProposal(Proposal):
    def __init__(self, options: Any, train_labels: Sequence[int], num_classes: int) -> None:
        pass


@register_proposal("frequency")
class FrequencyProposal(Proposal):
    """q_j ∝ training images of class j."""

    def __init__(self, options: Any, train_labels: Sequence[int], num_classes: int) -> None:
        counts = torch.bincount(torch.as_tensor(list(train_labels)), minlength=num_classes).double()
        self.q = counts / counts.sum()

    def distribution(self, labels: torch.Tensor) -> torch.Tensor:
        return self.q


@dataclass
class SimilarityOptions:
    refresh_steps: int = 200  # steps between refreshes of the class-feature bank
    temperature: float = 0.05  # softmax temperature over cosine similarity
    uniform_mix: float = 0.5  # weight of the uniform part (keeps all classes reachable)


@register_proposal("similarity", options=SimilarityOptions)
class SimilarityProposal(Proposal):
    """Hard negatives: classes whose text features are close to the batch's classes.

    A bank of all N class features (current prompt, no grad) is refreshed every
    ``refresh_steps``. For a batch, ``q ∝ (1-ε)·softmax(max_pos cos(w_pos, w_j)/τ) + ε/N``
    where the hard part excludes the batch's own classes (they are always close to
    themselves). The uniform part keeps every class drawable, so K-1 distinct negatives
    always exist and the margin ``-log(n_i q_j)`` stays finite.
    """

    def __init__(self, options: SimilarityOptions, train_labels: Sequence[int], num_classes: int) -> None:
        self.num_classes = num_classes
        self.refresh_steps = options.refresh_steps
        self.temperature = options.temperature
        if not 0 < options.uniform_mix <= 1:
            raise ValueError(f"sampling.distribution.similarity.uniform_mix must be in (0, 1], "
                             f"got {options.uniform_mix}")
        self.uniform_mix = options.uniform_mix
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


def proposal_entry(name: str) -> ProposalEntry:
    if name not in PROPOSALS:
        raise ValueError(f"unknown sampling.distribution.name '{name}': registered are "
                         f"{', '.join(sorted(PROPOSALS))} (pomp_core.pretrain.proposals.register_proposal adds one)")
    return PROPOSALS[name]


def build_proposal(distribution: Any, train_labels: Sequence[int], num_classes: int) -> Proposal:
    """The proposal ``distribution.name`` with its options ``distribution.<name>`` (a config section)."""
    entry = proposal_entry(distribution.name)
    options = getattr(distribution, distribution.name, None) if entry.options else None
    return entry.cls(options, train_labels, num_classes)
