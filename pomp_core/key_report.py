"""What a checkpoint converter did with each key (pomp_det.detic_checkpoint, pomp_seg.zsseg_checkpoint)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple, Union


@dataclass
class KeyReport:
    """mapped (theirs -> ours: one key, or a list when one of theirs fills several of ours),
    set aside (theirs -> reason), filled (ours -> the value given, with nothing of theirs),
    unexpected (theirs with no place in our model), missing (ours nothing fills),
    wrong_shape (theirs, its shape, ours). ``ok``: nothing unexpected, missing or misshapen.

    ``one_to_many`` reports the mapped keys' targets, the filled keys and the set-aside
    reasons in the summary (the ZSSeg converter's report); without it the first line is
    ``"<n> mapped, <n> set aside, <n> unexpected, <n> missing, <n> of another shape"``.
    """
    mapped: Dict[str, Union[str, List[str]]] = field(default_factory=dict)
    set_aside: Dict[str, str] = field(default_factory=dict)
    filled: Dict[str, str] = field(default_factory=dict)
    unexpected: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    wrong_shape: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    one_to_many: bool = False

    @property
    def ok(self) -> bool:
        return not (self.unexpected or self.missing or self.wrong_shape)

    def targets(self) -> List[str]:
        """Our keys that the mapped keys fill, in order."""
        return [o for v in self.mapped.values() for o in ([v] if isinstance(v, str) else v)]

    def summary(self) -> str:
        if self.one_to_many:
            head = (f"{len(self.mapped)} mapped (to {len(self.targets())} of ours), {len(self.set_aside)} set aside, "
                    f"{len(self.filled)} filled, ")
        else:
            head = f"{len(self.mapped)} mapped, {len(self.set_aside)} set aside, "
        lines = [head + f"{len(self.unexpected)} unexpected, {len(self.missing)} missing, "
                 f"{len(self.wrong_shape)} of another shape"]
        if self.one_to_many:
            reasons: Dict[str, int] = {}
            for reason in self.set_aside.values():
                reasons[reason] = reasons.get(reason, 0) + 1
            lines += [f"  set aside ({n}): {r}" for r, n in reasons.items()]
        lines += [f"  unexpected: {k}" for k in self.unexpected]
        lines += [f"  missing: {k}" for k in self.missing]
        lines += [f"  shape: {k} {a} -> ours {b}" for k, a, b in self.wrong_shape]
        return "\n".join(lines)
