"""Length-aware encoding of prompts through a causal CLIP text transformer.

Exact savings over running every row to its batch's longest EOT (docs/text_encoding.md):

* rows are grouped by length and each group is cut after its own longest EOT, so a few
  long names no longer set the cost of the whole batch;
* the leading positions that are identical in every row (SOS and the context before the
  name of a shared prompt: M + 1 of the ~M + 6 positions with the class at the end) are
  computed once; every row attends to their keys and values. The transformer is causal,
  so those positions never see a row's own tokens and are the same for all rows.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

KV = Tuple[torch.Tensor, torch.Tensor]


def length_groups(lengths: torch.Tensor, min_rows: int = 16) -> List[Tuple[torch.Tensor, int]]:
    """(row indices, group length) from short to long.

    Rows of one length form a group; a group of fewer than ``min_rows`` rows joins the next
    longer one (padding a few rows by a token costs less than one more pass through the tower).
    """
    order = torch.argsort(lengths.cpu(), stable=True)
    sorted_len = lengths.cpu()[order].tolist()
    groups, start = [], 0
    for i in range(1, len(order) + 1):
        if i == len(order) or (sorted_len[i] != sorted_len[i - 1] and i - start >= min_rows):
            groups.append((order[start:i], sorted_len[i - 1]))
            start = i
    return groups


def shared_prefix(ids: torch.Tensor, eot: torch.Tensor, per_row: Optional[torch.Tensor] = None,
                  is_ctx: Optional[torch.Tensor] = None) -> int:
    """Number of leading positions whose embeddings are the same in every row.

    A position feeds every row the same vector when the rows agree on its token id and on
    whether it is a context slot (``is_ctx``): a name's own "x" token has the placeholder's
    id, so ids alone would call it equal to another row's context slot. Agreeing slot flags
    up to a position also mean the same slot index there, hence the same shared context
    vector. ``per_row`` marks vectors that differ by row even so (a class-specific context).
    At most ``min(eot)`` so every row keeps its EOT.
    """
    same = (ids == ids[:1]).all(dim=0)
    if is_ctx is not None:
        same &= (is_ctx == is_ctx[:1]).all(dim=0)
    if per_row is not None:
        same &= ~per_row.any(dim=0)
    return min(int(same.int().cumprod(dim=0).sum()), int(eot.min()))


def supports_prefix_sharing(transformer: nn.Module) -> bool:
    """Blocks we can run with shared keys/values: open_clip's plain ResidualAttentionBlock
    (packed q/k/v projection, no attention dropout)."""
    from open_clip.transformer import ResidualAttentionBlock

    blocks = getattr(transformer, "resblocks", None)
    return bool(blocks) and all(type(b) is ResidualAttentionBlock and not hasattr(b, "ln_1_kv")
                                and isinstance(b.attn, nn.MultiheadAttention) and not b.attn.dropout
                                and b.attn.in_proj_weight is not None for b in blocks)


def _block(block: nn.Module, h: torch.Tensor, mask: Optional[torch.Tensor],
           past_k: Optional[torch.Tensor], past_v: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One ResidualAttentionBlock on h [N, S, W] whose queries also see ``past`` keys/values
    [1, heads, P, d] (broadcast over rows, never copied). ``mask`` [S, P + S] is additive."""
    attn = block.attn
    n, s, w = h.shape
    heads = attn.num_heads
    q, k, v = F.linear(block.ln_1(h), attn.in_proj_weight, attn.in_proj_bias) \
        .view(n, s, 3, heads, w // heads).permute(2, 0, 3, 1, 4)  # each [N, heads, S, d]
    q = q * (w // heads) ** -0.5
    scores = q @ k.transpose(-1, -2)
    p = 0 if past_k is None else past_k.shape[2]
    if p:
        scores = torch.cat([q @ past_k.transpose(-1, -2), scores], dim=-1)
    if mask is not None:
        scores = scores + mask.to(scores.dtype)
    weights = scores.softmax(dim=-1)
    out = weights[..., p:] @ v
    if p:
        out = out + weights[..., :p] @ past_v
    out = attn.out_proj(out.transpose(1, 2).reshape(n, s, w))
    h = h + block.ls_1(out)
    h = h + block.ls_2(block.mlp(block.ln_2(h)))
    return h, k, v


def _run_blocks(blocks: Sequence[nn.Module], h: torch.Tensor, mask: Optional[torch.Tensor],
                past: Optional[List[KV]], ckpt: bool) -> Tuple[torch.Tensor, List[KV]]:
    kvs = []
    for i, block in enumerate(blocks):
        pk, pv = past[i] if past else (None, None)
        if ckpt:
            h, k, v = checkpoint(_block, block, h, mask, pk, pv, use_reentrant=False)
        else:
            h, k, v = _block(block, h, mask, pk, pv)
        kvs.append((k, v))
    return h, kvs


def encode_causal(tower, x: torch.Tensor, eot: torch.Tensor, shared: int = 0, min_rows: int = 16) -> torch.Tensor:
    """Pooled, projected features [N, D] of token embeddings x [N, L, W] (no positions yet).

    ``tower`` is a causal ``TextTower``; ``shared`` leading positions are the same in
    every row (``shared_prefix``) and are computed once when the blocks allow it.
    """
    transformer = tower.transformer
    pos, full_mask = tower.positional_embedding, tower.attn_mask
    sharing = shared > 0 and supports_prefix_sharing(transformer)
    p = shared if sharing else 0
    ckpt = bool(getattr(transformer, "grad_checkpointing", False)) and torch.is_grad_enabled()
    groups = length_groups(eot + 1, min_rows)
    order = torch.cat([rows for rows, _ in groups]).to(x.device)
    sizes = [len(rows) for rows, _ in groups]
    # one gather into length order, then contiguous pieces: slicing x once per group would
    # make backward allocate a zero gradient of the whole x for every group
    pieces = torch.split(x[order], sizes)
    eots = torch.split(eot[order], sizes)
    past = None
    if p:
        prefix = pieces[0][:1, :p] + pos[:p].to(x.dtype)  # any row: the prefix is the same in all
        _, past = _run_blocks(transformer.resblocks, prefix, full_mask[:p, :p], None, ckpt)
    feats = []
    for piece, row_eot, (_, length) in zip(pieces, eots, groups):
        h = piece[:, p:length] + pos[p:length].to(x.dtype)
        if sharing:
            h, _ = _run_blocks(transformer.resblocks, h, full_mask[p:length, :length], past, ckpt)
        else:
            h = transformer(h, attn_mask=full_mask[:length, :length])
        h = tower.ln_final(h)
        feats.append(h[torch.arange(len(h), device=h.device), row_eot - p])
    return tower.project(torch.cat(feats)[torch.argsort(order)])
