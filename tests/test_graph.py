"""The layer table's name resolution (surgery.core.graph.resolve)."""

from __future__ import annotations

import pytest
from torch import nn

from surgery.core.errors import SurgeryError
from surgery.core.graph import layer_graph, resolve


class Reused(nn.Module):
    """One ReLU module called three times, inside a container with two convs."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1))
        self.relu = nn.ReLU()
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        x = self.relu(self.block[0](x))  # layers 0, 1
        x = self.relu(self.block[1](x))  # layers 2, 3
        return self.relu(self.head(x))  # layers 4, 5


def test_a_reused_module_name_is_refused_with_every_index():
    lg = layer_graph(Reused())
    with pytest.raises(SurgeryError) as e:
        resolve(lg, "relu")
    msg = str(e.value)
    assert "'relu' is used by 3 layers (1, 3, 5)" in msg and "index" in msg
    assert resolve(lg, 3).name == "relu"  # the index picks one call


def test_a_container_name_means_its_last_layer():
    lg = layer_graph(Reused())
    assert (resolve(lg, "block").index, resolve(lg, "block").name) == (2, "block.1")
    assert resolve(lg, "head").index == 4


def test_unknown_names_and_indices_still_fail_with_suggestions():
    lg = layer_graph(Reused())
    with pytest.raises(SurgeryError, match="did you mean"):
        resolve(lg, "haed")
    with pytest.raises(SurgeryError, match="0..5"):
        resolve(lg, 6)
