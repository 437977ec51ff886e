"""TransFusionBBoxCoder: encode/decode round trip and the BEV cell geometry."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse3d.models.bevfusion.heads.box_coder import TransFusionBBoxCoder


def make_coder():
    return TransFusionBBoxCoder((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.1, 0.1, 0.2), 8)


def wrap(a):
    return torch.atan2(torch.sin(a), torch.cos(a))


def test_grid_and_cell_size():
    coder = make_coder()
    assert coder.grid_size == (128, 128)
    assert coder.cell_size == pytest.approx((0.8, 0.8))
    rect = TransFusionBBoxCoder((-20.0, -8.0, -5, 28.0, 8.0, 3), (0.4, 0.2), 2)  # non-square grid and cells
    assert rect.grid_size == (60, 40)
    assert rect.cell_size == pytest.approx((0.8, 0.4))


def test_encode_values():
    coder = make_coder()
    boxes = torch.tensor([[-51.2, -51.2, 0.3, 4.0, 2.0, 1.5, 0.5, 1.0, -2.0],
                          [-51.2 + 0.8 * 10.5, -51.2 + 0.8 * 3.5, -1.0, 1.0, 1.0, 1.0, -math.pi / 2, 0.0, 0.0]])
    codes = coder.encode(boxes)
    assert codes.shape == (2, 10)
    torch.testing.assert_close(codes[0], torch.tensor([0.0, 0.0, 0.3, math.log(4), math.log(2), math.log(1.5),
                                                       math.sin(0.5), math.cos(0.5), 1.0, -2.0]))
    torch.testing.assert_close(codes[1, :2], torch.tensor([10.5, 3.5]))  # cell (10, 3) centre; x first
    assert codes[1, 2].item() == pytest.approx(-1.0)  # z stays the box centre (no bottom shift)
    torch.testing.assert_close(codes[1, 6:8], torch.tensor([-1.0, 0.0]), atol=1e-6, rtol=0)


def test_round_trip_batched_and_empty():
    coder = make_coder()
    g = torch.Generator().manual_seed(0)
    b, p = 3, 17
    boxes = torch.cat([torch.rand(b, p, 2, generator=g) * 100 - 50, torch.rand(b, p, 1, generator=g) * 4 - 2,
                       torch.rand(b, p, 3, generator=g) * 10 + 0.1, torch.rand(b, p, 1, generator=g) * 20 - 10,
                       torch.randn(b, p, 2, generator=g)], -1)
    back = coder.decode(coder.encode(boxes))
    assert back.shape == boxes.shape
    torch.testing.assert_close(back[..., [0, 1, 2, 3, 4, 5, 7, 8]], boxes[..., [0, 1, 2, 3, 4, 5, 7, 8]],
                               atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(wrap(back[..., 6] - boxes[..., 6]), torch.zeros(b, p), atol=1e-5, rtol=0)
    assert bool((back[..., 6] > -math.pi - 1e-6).all() and (back[..., 6] <= math.pi + 1e-6).all())
    assert coder.encode(torch.zeros(0, 9)).shape == (0, 10)
    assert coder.decode(torch.zeros(0, 10)).shape == (0, 9)


@settings(max_examples=100, deadline=None)
@given(st.floats(-60, 60), st.floats(-60, 60), st.floats(-5, 3), st.floats(0.01, 20), st.floats(0.01, 20),
       st.floats(0.01, 5), st.floats(-10, 10), st.floats(-30, 30), st.floats(-30, 30))
def test_property_round_trip_float64(x, y, z, length, width, height, yaw, vx, vy):
    coder = TransFusionBBoxCoder((-40.0, -30.0, -5, 40.0, 30.0, 3), (0.3, 0.25), 4)
    box = torch.tensor([[x, y, z, length, width, height, yaw, vx, vy]], dtype=torch.float64)
    back = coder.decode(coder.encode(box))
    assert back.dtype == torch.float64
    torch.testing.assert_close(back[:, [0, 1, 2, 3, 4, 5, 7, 8]], box[:, [0, 1, 2, 3, 4, 5, 7, 8]],
                               atol=1e-9, rtol=1e-9)
    assert abs(float(wrap(back[0, 6] - box[0, 6]))) < 1e-9
    # decode o encode on codes is the identity too (for normalised sin/cos)
    codes = coder.encode(box)
    torch.testing.assert_close(coder.encode(coder.decode(codes)), codes, atol=1e-9, rtol=1e-9)


def test_cells_helpers_are_inverse():
    coder = TransFusionBBoxCoder((-20.0, -8.0, -5, 28.0, 8.0, 3), (0.4, 0.2), 2)
    xy = torch.tensor([[-20.0, -8.0], [27.9, 7.9], [0.0, 0.0]])
    cells = coder.to_cells(xy)
    torch.testing.assert_close(cells[0], torch.tensor([0.0, 0.0]))
    assert cells[1, 0].item() < 60 and cells[1, 1].item() < 40
    torch.testing.assert_close(coder.from_cells(cells), xy)


def test_bad_input_raises():
    coder = make_coder()
    with pytest.raises(ValueError, match="boxes"):
        coder.encode(torch.zeros(2, 7))
    with pytest.raises(ValueError, match="sizes"):
        coder.encode(torch.tensor([[0.0, 0, 0, 0.0, 1, 1, 0, 0, 0]]))
    with pytest.raises(TypeError, match="boxes"):
        coder.encode(torch.ones(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="codes"):
        coder.decode(torch.zeros(2, 9))
    with pytest.raises(ValueError, match="pc_range"):
        TransFusionBBoxCoder((0, 0, 0, 1, 1), (0.1, 0.1), 8)
    with pytest.raises(ValueError, match="pc_range"):
        TransFusionBBoxCoder((1, 0, 0, 0, 1, 1), (0.1, 0.1), 8)
    with pytest.raises(ValueError, match="voxel_size"):
        TransFusionBBoxCoder((0, 0, 0, 1, 1, 1), (0.1, -0.1), 8)
    with pytest.raises(ValueError, match="out_size_factor"):
        TransFusionBBoxCoder((0, 0, 0, 1, 1, 1), (0.1, 0.1), 0)
