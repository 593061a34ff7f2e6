"""Search: the channel grouping of each regrouped conv that keeps the most weight energy.

A grouped conv keeps the diagonal blocks ``W[out_g, in_g]``; the balanced partition of its
channels that maximises ``Σ_g ‖W[out_g, in_g]‖² / ‖W‖²`` is searched by
:func:`surgery.partition.search_chain`, one chain per run of linked convs (a single conv is a
chain of one); a fixed side keeps contiguous blocks.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from surgery import partition
from surgery.regroup.plan import Target


def energy(conv: nn.Conv2d) -> torch.Tensor:
    """``‖W[o, i]‖²`` summed over the kernel: (out, in)."""
    return conv.weight.detach().double().pow(2).sum(dim=tuple(range(2, conv.weight.dim())))


def _sizes(n: int, groups: int) -> list[int]:
    return [n // groups] * groups


def search_groups(targets: list[Target], links: Mapping[str, str], seed: int) -> None:
    """Set each target's ``out_groups``, ``in_groups``, ``retained`` and ``contiguous``."""
    by_name = {t.unit.name: t for t in targets}
    linked_to = set(links.values())
    for t in targets:
        if t.unit.name in linked_to:
            continue  # searched as part of the chain that starts upstream
        chain = [t]
        while chain[-1].unit.name in links:
            chain.append(by_name[links[chain[-1].unit.name]])
        G = t.groups
        es = [energy(c.unit.conv) for c in chain]
        es = [e / e.sum() if e.sum() > 0 else e for e in es]  # every layer of a chain weighs the same
        first, last = chain[0].unit.conv, chain[-1].unit.conv
        parts = partition.search_chain(
            es, [_sizes(c.unit.conv.out_channels, G) for c in chain], torch.eye(G, dtype=torch.bool),
            first_in=partition.contiguous(_sizes(first.in_channels, G)) if "in" in chain[0].fixed else None,
            first_in_sizes=_sizes(first.in_channels, G),
            last_out=partition.contiguous(_sizes(last.out_channels, G)) if "out" in chain[-1].fixed else None,
            seed=seed)
        for c, p in zip(chain, parts):
            c.out_groups, c.in_groups, c.retained, c.contiguous = p.out_groups, p.in_groups, p.retained, p.baseline
