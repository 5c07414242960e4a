"""torch layers on crossbars: tiling, programming by write-verify, inference from measured
currents, on the direct simulator and through the drivers on the emulated bench."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from drivers.write_verify import TuneParams
from memlab.simbackend import SimulatedCrossbar
from memlab.training.modules import CrossbarConv2d, CrossbarLinear, place_tiles
from simulator.device import load_preset

from helpers import assert_safe, one_torch_thread  # noqa: F401 (autouse fixture)

HEALTHY = load_preset("tio2-passive").with_faults(stuck_lrs=0, stuck_hrs=0)


def error_bound(module: CrossbarLinear, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per output: each device within the tuning tolerance of its target (a weight off by at
    most 2 x tolerance x g_max / span x w_max), plus 2 % for the read I-V nonlinearity."""
    m = module.mapping
    per_weight = 2 * module.tune.tolerance * m.g_max / (m.g_max - m.g_min) * module.w_max
    lines = x.abs().sum(-1, keepdim=True) + (module.bias is not None)
    return per_weight * lines + 0.02 * ref.abs()


def crossbars(n: int, rows: int = 8, cols: int = 8) -> list[SimulatedCrossbar]:
    return [SimulatedCrossbar.from_preset(HEALTHY, rows, cols, seed=s) for s in range(n)]


def test_tiles_cover_the_layer_once_and_never_overlap():
    pool = crossbars(5)
    tiles = place_tiles(6, 21, pool)
    covered = torch.zeros(6, 21, dtype=torch.int)
    used = {id(x): torch.zeros(8, 8, dtype=torch.int) for x in pool}
    for t in tiles:
        assert 2 * t.outputs <= 8 and t.inputs <= 8
        covered[t.out_slice, t.in_slice] += 1
        used[id(t.xbar)][t.row0:t.row0 + 2 * t.outputs, t.col0:t.col0 + t.inputs] += 1
    assert bool((covered == 1).all())
    assert max(int(u.max()) for u in used.values()) == 1
    # two half-height tiles share a crossbar: shelves stack
    assert len({id(t.xbar) for t in tiles}) < len(tiles)


def test_a_layer_that_does_not_fit_is_refused_with_its_size():
    with pytest.raises(ValueError, match=r"6 outputs x 21 input lines.*2 crossbar"):
        place_tiles(6, 21, crossbars(2))


def test_linear_on_simulated_crossbars_matches_the_software_layer_and_passes_gradients():
    # 5 outputs x 13 input lines: split both ways (4 + 1 outputs, 8 + 5 lines) into four tiles
    # on three 8x8 crossbars, the last holding two shelves
    torch.manual_seed(0)
    layer = nn.Linear(12, 5)
    module = CrossbarLinear.from_linear(layer, crossbars(5))
    assert len(module.tiles) == 4 and len({id(t.xbar) for t in module.tiles}) == 3
    report = module.program()
    assert len(report.results) == 2 * 5 * 13 and not report.failed
    x = torch.rand(16, 12, requires_grad=True)
    y = module(x)
    ref = layer(x)
    err = (y - ref).detach().abs()
    assert bool((err <= error_bound(module, x.detach(), ref.detach())).all())
    assert float(err.max()) < 0.03 * float(ref.detach().abs().max())
    assert float(err.max()) > 0          # measured, not computed
    y.sum().backward()
    assert module.weight.grad is not None and x.grad is not None
    torch.testing.assert_close(module.weight.grad.float(), x.detach().sum(0).expand(5, 12).contiguous())


def test_unprogrammed_crossbars_do_not_give_the_layer():
    torch.manual_seed(1)
    layer = nn.Linear(4, 3)
    module = CrossbarLinear.from_linear(layer, crossbars(1))
    x = torch.rand(8, 4)
    with torch.no_grad():
        assert float((module(x) - layer(x)).abs().max()) > 0.1 * float(layer(x).abs().max())


def test_the_bias_is_the_bias_whatever_the_input_range():
    """The bias line is driven at the full input voltage, which stands for x_max."""
    weight, bias = torch.tensor([[0.1, -0.2]]), torch.tensor([0.5])
    for x_max in (1.0, 4.0):
        module = CrossbarLinear(weight, bias, crossbars(1), x_max=x_max)
        assert not module.program().failed
        x = torch.tensor([[0.0, 0.0], [x_max, 0.5 * x_max]])
        with torch.no_grad():
            y, ref = module(x), F.linear(x, weight, bias)
        assert bool(((y - ref).abs() <= error_bound(module, x, ref)).all()), (x_max, y, ref)


def test_inputs_beyond_the_input_range_are_refused():
    module = CrossbarLinear(torch.ones(2, 2), None, crossbars(1), x_max=1.0)
    with pytest.raises(ValueError, match="x_max"):
        module(torch.tensor([[0.5, 1.5]]))


def test_conv2d_by_unfolding_matches_the_software_convolution():
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 3, 3, padding=1, stride=2)
    module = CrossbarConv2d(conv, crossbars(1, rows=8, cols=24))
    assert not module.program().failed
    x = torch.rand(2, 2, 7, 7)
    y, ref = module(x), conv(x)
    assert y.shape == ref.shape == (2, 3, 4, 4)
    patches = F.unfold(x, 3, padding=1, stride=2).transpose(1, 2)          # (n, 16, 18)
    bound = error_bound(module.linear, patches, ref.flatten(2).transpose(1, 2))
    assert bool(((y - ref).detach().flatten(2).transpose(1, 2).abs() <= bound.detach()).all())


def test_grouped_convolutions_are_refused():
    with pytest.raises(ValueError, match="groups"):
        CrossbarConv2d(nn.Conv2d(2, 2, 3, groups=2), crossbars(1))


def test_linear_through_the_instruments(bench_config):
    """The same layer on the emulated B1500A + E5250A bench: every device written by
    write-verify through the drivers, outputs from currents read over VISA. (Simulated
    crossbar seed 1: no stuck device under the tile; the shipped seed 7 has one at (1, 0).)"""
    from memlab.bench import emulate, open_crossbar

    config = bench_config.model_copy(update={"simulation": bench_config.simulation.model_copy(update={"seed": 1})})
    bench, live = emulate(config)
    torch.manual_seed(3)
    layer = nn.Linear(2, 2)
    with open_crossbar(live) as xbar:
        module = CrossbarLinear.from_linear(layer, [xbar], tune=TuneParams(reads_to_accept=3))
        assert not module.program().failed
        x = torch.tensor([[0.0, 0.0], [1.0, 0.5], [0.2, 1.0]])
        y = module(x)
    bench.stop()
    ref = layer(x).detach()
    assert bool(((y - ref).abs() <= error_bound(module, x, ref)).all())
    assert_safe(bench)
