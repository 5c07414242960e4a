"""Weight mappings, hardware-aware layers, and the batched transfer simulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import one_torch_thread  # noqa: F401 (autouse fixture)
from memlab.calibrate import MEASURED_BENCH, MEASURED_TUNING
from memlab.devicedb import DeviceDatabase
from memlab.simbackend import SimulatedCrossbar
from memlab.training.hardware_aware import DatabasePerturbation, HardwareAwareLinear, database_sampler
from memlab.training.mapping import (DifferentialMapping, SingleDeviceMapping, disturbance_keys,
                                     programming_order, split_tiles, with_bias)
from memlab.training.transfer import CrossbarNetwork, program_tiles
from simulator.device import load_preset


def test_differential_mapping_round_trip():
    m = DifferentialMapping(100e-6, 500e-6)
    w = torch.tensor([[-2.0, 0.0, 1.0], [0.5, -0.25, 2.0]])
    g_pos, g_neg = m.to_conductance(w, w.abs().max())
    assert torch.all((g_pos >= 100e-6) & (g_pos <= 500e-6 + 1e-12)) and torch.all(g_neg >= 100e-6)
    assert torch.all((g_pos == 100e-6) | (g_neg == 100e-6))  # one device of each pair rests at g_min
    assert torch.allclose(m.to_weight(g_pos, g_neg, w.abs().max()), w, atol=1e-6)


def test_single_device_mapping_is_the_published_one():
    m = SingleDeviceMapping(r_min=6843.97 * 1.01, r_max=14109.06 * 0.99, w_max=0.5)
    assert m.r_c == pytest.approx(2 * m.r_min * m.r_max / (m.r_min + m.r_max))
    assert float(m.to_weight(torch.tensor(m.r_min, dtype=torch.float64))) == pytest.approx(0.5)
    assert float(m.to_weight(torch.tensor(m.r_c, dtype=torch.float64))) == pytest.approx(0.0, abs=1e-12)
    w = torch.linspace(-0.4, 0.5, 11, dtype=torch.float64)
    assert torch.allclose(m.to_weight(m.to_resistance(w)), w, atol=1e-9)


def test_layout_order_keys_and_tiles():
    assert programming_order(2, 3) == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]  # top to bottom first
    keys = disturbance_keys(2, 3)
    assert keys[0, 0] == 5 and keys[1, 2] == 0 and sorted(keys.flatten().tolist()) == list(range(6))
    assert disturbance_keys(2, 3, "row-major")[0, 1] == 4
    assert split_tiles(10, 20, 8, 8) == [(slice(0, 8), slice(0, 8)), (slice(0, 8), slice(8, 16)),
                                         (slice(0, 8), slice(16, 20)), (slice(8, 10), slice(0, 8)),
                                         (slice(8, 10), slice(8, 16)), (slice(8, 10), slice(16, 20))]
    assert with_bias(torch.ones(3, 2), torch.zeros(3)).shape == (3, 3)


def test_hardware_aware_layer_perturbs_forward_and_passes_gradients():
    db = DeviceDatabase.tio2_measured()
    layer = HardwareAwareLinear(2, 8, database_sampler(db))
    x = torch.rand(64, 2)
    clean = torch.nn.functional.linear(x, layer.weight, layer.bias)
    out = layer(x)
    assert not torch.allclose(out, clean)
    out.sum().backward()
    expected = torch.autograd.grad(clean.sum(), layer.weight)[0]
    assert torch.allclose(layer.weight.grad, expected)  # reparametrized: the clean gradient
    layer.hardware = False
    assert torch.allclose(layer(x), clean)


def test_perturbation_follows_the_database():
    db = DeviceDatabase.tio2_measured()
    g = torch.full((200, 300), 300e-6)
    keys = torch.full((200, 300), 10, dtype=torch.long)
    healthy = db.model_copy(update={"stuck": db.stuck.model_copy(update={"lrs_fraction": 0, "hrs_fraction": 0})})
    d = DatabasePerturbation(healthy)(g, keys, torch.Generator().manual_seed(0)) - g
    assert float(d.mean()) == pytest.approx(-4.1e-6 - 300e-6 * 0.00589, abs=0.6e-6)  # key 10 + offset
    assert float(d.std()) == pytest.approx(np.hypot(12.1e-6, 300e-6 * 0.006), rel=0.1)
    perturb = DatabasePerturbation(db)
    out = perturb(g, keys, torch.Generator().manual_seed(0))
    stuck = (out > 420e-6) | (out < 101e-6)
    assert float(stuck.float().mean()) == pytest.approx(0.01, abs=0.002)  # 0.5 % + 0.5 %


def test_batched_transfer_is_the_physics_of_write_verify():
    """With read noise off, tuning each device of a tile on the direct backend (drivers'
    write-verify) and the batched lockstep tuner take the same pulses and end on the same
    conductances, up to the sub-threshold switching the batched path leaves out."""
    preset = load_preset("tio2-passive")
    preset = preset.model_copy(update={"read": preset.read.model_copy(update={"noise_relative": 0.0,
                                                                              "noise_absolute": 0.0})})
    targets = torch.tensor([[150e-6, 420e-6, 260e-6], [330e-6, 120e-6, 480e-6]], dtype=torch.float64)
    tiles, stats = program_tiles(preset, [targets], batch=1, seed=3, tune=MEASURED_TUNING,
                                 waveform=MEASURED_BENCH, dtype=torch.float64)
    direct = SimulatedCrossbar.from_preset(preset, 2, 3, seed=3 * 7919, waveform=MEASURED_BENCH)
    pulses = np.zeros((2, 3), dtype=int)
    for r, c in programming_order(2, 3):
        pulses[r, c] = direct.tune(r, c, float(targets[r, c]), MEASURED_TUNING).pulses
    np.testing.assert_array_equal(stats[0].pulses[0].numpy(), pulses)
    np.testing.assert_allclose(tiles[0][0].numpy(), direct.array.conductance().numpy(), rtol=2e-3)


def test_crossbar_network_on_ideal_tiles_is_the_software_network():
    torch.manual_seed(0)
    w1, w2 = torch.randn(8, 3), torch.randn(1, 9)
    net = CrossbarNetwork([w1, w2], ["sigmoid", "none"], DifferentialMapping())
    preset = load_preset("tio2-passive")
    preset = preset.model_copy(update={"read": preset.read.model_copy(update={"nonlinearity": 0.0})})
    tiles = [t[None] for t in net.targets()]
    x = torch.rand(50, 2)
    h = torch.sigmoid(torch.cat([x, torch.ones(50, 1)], 1) @ w1.T)
    y = torch.cat([h, torch.ones(50, 1)], 1) @ w2.T
    assert torch.allclose(net.forward(x, tiles, preset)[0], y, atol=1e-5)


def test_database_noise_for_noise_injection_training():
    from memlab.datasets import load_mnist
    from memlab.training.hardware_aware import database_sampler
    from memlab.training.noise_injection import MAT_MNIST_CONFIG, train_mlp

    sample = database_sampler()
    w = torch.randn(16, 40) * 0.1
    gen = torch.Generator().manual_seed(0)
    a, b = sample(w, gen), sample(w, gen)
    assert a.shape == w.shape and not torch.equal(a, b)  # fresh draws each pass
    assert float((a - w).abs().mean()) < 0.2 * float(w.abs().max())
    data = load_mnist()
    small = type(data)(data.x_train[:512], data.y_train[:512], data.x_test[:256], data.y_test[:256],
                       data.train_indices[:512], data.test_indices[:256])
    config = MAT_MNIST_CONFIG.replace(epochs=1, noise_model="database", database_sampler=sample)
    model, history = train_mlp(config, small, seed=0)
    assert history is not None
