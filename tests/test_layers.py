"""The one layer parser (interp.layers) and every place that reads a layer through it."""

from __future__ import annotations

import numpy as np
import pytest

from interp.errors import InterpError
from interp.layers import parse_layers
from interp.store import ActivationStore, ItemRecord, StoreWriter


def test_parse_layers():
    assert parse_layers("all", 3) == ["embed", "0", "1", "2"]
    assert parse_layers("all", 3, embed_by_default=False) == ["0", "1", "2"]
    assert parse_layers("2,0,-1", 4) == ["0", "2", "3"]
    assert parse_layers([2, -4], 4) == ["0", "2"] and parse_layers(-1, 4) == ["3"]
    assert parse_layers("embed,1", 4) == ["embed", "1"]
    with pytest.raises(InterpError, match="out of range"):
        parse_layers("0,9", 4)
    with pytest.raises(InterpError, match="out of range"):
        parse_layers("-5", 4)
    with pytest.raises(InterpError, match="bad layer 'x'"):
        parse_layers("0,x", 4)
    assert parse_layers("0,9", 4, in_range=False) == ["0", "9"]


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    layers = ["embed", "0", "1", "2"]
    writer = StoreWriter.create(tmp_path / "s.h5", {"n_model_layers": 3}, layers, 4, "float32")
    writer.append([ItemRecord(f"i{i}", {"id": f"i{i}"}, {l: rng.standard_normal((3, 4)).astype(np.float32) for l in layers},
                              np.zeros(3, np.int64), np.arange(3), np.ones(3, bool), np.zeros(3), np.ones(3), 1.0, False)
                   for i in range(2)])
    writer.finish()
    return tmp_path / "s.h5"


def test_a_store_reads_negative_layers_as_every_tool_does(store):
    """`store.read(-1)` is the last block, as `-1` is on the command line (it used to fail)."""
    with ActivationStore(store) as s:
        np.testing.assert_array_equal(s.read(-1), s.read("2"))
        np.testing.assert_array_equal(s.read(-3, items=[1]), s.read(0, items=[1]))
        assert s.resolve_layers("embed,-1") == ["embed", "2"] and s.resolve_layers([-2, 0]) == ["0", "1"]
        assert s.pooled(-1).shape == (2, 4)
        with pytest.raises(InterpError, match=r"layer\(s\) 7 not in the store"):
            s.read(7)
        with pytest.raises(InterpError, match="out of range"):
            s.read(-4)
