"""The device physics: presets, switching law, drift, relaxation, faults, noise, seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError

from simulator import noise
from simulator.crossbar import CrossbarArray
from simulator.device import DevicePreset, load_preset, preset_names


def v3(n: int, v: float, row: int, col: int) -> tuple[torch.Tensor, torch.Tensor]:
    v_rows = torch.full((n,), v / 3, dtype=torch.float64)
    v_cols = torch.full((n,), 2 * v / 3, dtype=torch.float64)
    v_rows[row], v_cols[col] = v, 0.0
    return v_rows, v_cols


def test_presets_are_configuration():
    assert {"tio2-passive", "hfo2-1t1r"} <= set(preset_names())
    tio2, hfo2 = load_preset("tio2-passive"), load_preset("hfo2-1t1r")
    assert tio2.architecture == "passive" and hfo2.architecture == "1t1r"
    assert hfo2.drift.noise == 0 and tio2.drift.noise > 0
    with pytest.raises(ValueError, match="unknown device preset 'nope'.*tio2-passive"):
        load_preset("nope")
    bad = tio2.model_dump()
    bad["g_min"] = 1e-3
    with pytest.raises(ValidationError, match="g_min must be below g_max"):
        DevicePreset.model_validate(bad)
    with pytest.raises(ValidationError, match="add up to more than 1"):
        tio2.with_faults(stuck_lrs=0.6, discordant=0.6).faults.model_validate(
            {**tio2.faults.model_dump(), "stuck_lrs": 0.6, "discordant": 0.6})


def test_preset_from_a_yaml_file(tmp_path):
    data = load_preset("hfo2-1t1r").model_dump(mode="json")
    data["name"] = "mine"
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_preset(path).name == "mine"


def test_switching_depends_on_amplitude_polarity_width_and_state():
    p = load_preset("tio2-passive").with_faults(stuck_lrs=0, stuck_hrs=0)
    p = p.model_copy(update={"cycle_noise": 0.0})

    def moved(v, width, g0=200e-6):
        a = CrossbarArray(1, 1, p, seed=0)
        a.g[:] = g0
        a.apply(torch.tensor([[v]]), width)
        return float(a.conductance()[0, 0]) - g0

    assert moved(1.5, 1e-6) > moved(1.4, 1e-6) > 0                  # amplitude
    assert moved(-1.6, 1e-6) < 0 < moved(1.6, 1e-6)                 # polarity
    assert moved(1.4, 2e-6) > moved(1.4, 1e-6)                       # width
    assert moved(1.4, 1e-6, g0=100e-6) > moved(1.4, 1e-6, g0=500e-6)  # state (soft bound)
    assert 0 < moved(0.47, 1e-6) < 0.02 * moved(1.4, 1e-6)           # small but non-zero below threshold
    assert moved(0.0, 1.0) == 0.0
    # the published 1 us switching voltages
    assert p.set.voltage_for(0.01, 1e-6) == pytest.approx(1.4, abs=0.01)
    assert p.reset.voltage_for(0.01, 1e-6) == pytest.approx(1.6, abs=0.01)


def test_soft_bounds_and_stuck_devices_hold():
    p = load_preset("tio2-passive").with_faults(stuck_lrs=0.2, stuck_hrs=0.2)
    a = CrossbarArray(16, 16, p, seed=5)
    stuck_before = a.conductance()[a.stuck].clone()
    for _ in range(100):
        a.apply(torch.full((16, 16), 2.5), 1e-3)
    g = a.conductance()
    assert torch.all(g <= a.g_max + 1e-15) and torch.equal(g[a.stuck], stuck_before)
    free = ~a.stuck
    assert torch.all(g[free] > 0.99 * a.g_max[free])
    for _ in range(100):
        a.apply(torch.full((16, 16), -2.8), 1e-3)
    assert torch.all(a.conductance()[free] < 1.01 * a.g_min[free])


def test_fault_fractions_and_factors():
    p = load_preset("tio2-passive").with_faults(stuck_lrs=0.15, stuck_hrs=0.15, discordant=0.3)
    a = CrossbarArray(200, 200, p, seed=3)
    n = a.n_devices
    assert a.stuck_lrs.sum() / n == pytest.approx(0.15, abs=0.01)
    assert a.stuck_hrs.sum() / n == pytest.approx(0.15, abs=0.01)
    assert a.discordant.sum() / n == pytest.approx(0.3, abs=0.01)
    f = a.fault_factor
    assert torch.all(f[a.stuck] == 0)
    disc, conc = f[a.discordant], f[~a.stuck & ~a.discordant]
    assert disc.min() >= -2 and disc.max() <= -0.1 and disc.mean() == pytest.approx(-1, abs=0.05)
    assert conc.min() >= 0.1 and conc.max() <= 2
    lrs = a.conductance()[a.stuck_lrs]
    assert float(lrs.mean()) == pytest.approx(p.faults.lrs_conductance.mean, rel=0.03)
    assert float(lrs.std()) == pytest.approx(p.faults.lrs_conductance.sd, rel=0.1)
    hrs = a.conductance()[a.stuck_hrs]
    assert hrs.min() >= p.faults.hrs_conductance.low and hrs.max() <= p.faults.hrs_conductance.high


def test_a_discordant_device_moves_the_wrong_way():
    p = load_preset("tio2-passive").with_faults(stuck_lrs=0, stuck_hrs=0, discordant=1.0)
    a = CrossbarArray(4, 4, p, seed=1)
    before = a.conductance().clone()
    a.apply(torch.full((4, 4), 1.5), 1e-6)
    assert torch.all(a.conductance() < before)


def test_half_select_drift_mean_is_negative_and_depends_on_dose_only():
    """Realizing the drift early, late or never in between gives the same conductances
    (away from the bounds, where clamping makes the path matter)."""
    p = load_preset("tio2-passive")
    a, b = CrossbarArray(8, 8, p, seed=9), CrossbarArray(8, 8, p, seed=9)
    a.g[~a.stuck] = b.g[~b.stuck] = 300e-6
    for k in range(40):
        lines = v3(8, -1.7 if k % 3 else 1.5, k % 8, (3 * k) % 8)
        a.apply_lines(*lines, 1e-6)
        b.apply_lines(*lines, 1e-6)
        a.sample()  # a looks at every device after every pulse; b never does
    # (only the far sub-threshold switching term sees the realized drift: 1e-7 level)
    assert torch.allclose(a.conductance(), b.conductance(), rtol=1e-6, atol=0)
    assert (b.conductance() - 300e-6)[~b.stuck].mean() < -0.5e-6  # and they did drift, downwards


def test_lazy_drift_is_the_eager_drift_across_switching():
    """Reading after every pulse (each read realizes the drift so far: single devices or the
    whole map) and reading once at the end give the same conductances while devices switch
    again and again (each switch starts a new drift epoch) and keep collecting half-select
    doses in between. The per-device drift caches stay what they stand for: the random part
    of each device's drift is the one drawn for (seed, device, present epoch), and a device
    with no dose since it switched has no drift applied."""
    p = load_preset("tio2-passive")
    eager, lazy = CrossbarArray(8, 8, p, seed=11), CrossbarArray(8, 8, p, seed=11)
    for a in (eager, lazy):
        a.g[~a.stuck] = 300e-6
    for k in range(60):
        # device (2, 5) is selected every other pulse, the others in turn
        row, col = (2, 5) if k % 2 else divmod((7 * k + 3) % 64, 8)
        lines = v3(8, [1.5, -1.75, 1.45, -1.7][k % 4], row, col)
        eager.apply_lines(*lines, 1e-6)
        lazy.apply_lines(*lines, 1e-6)
        eager.sample() if k % 3 == 0 else eager.sample(torch.tensor([2 * 8 + 5, row * 8 + col, 63]))
    assert int(lazy._n_switch.view(-1)[2 * 8 + 5]) >= 20 and int((lazy._n_switch > 0).sum()) > 20
    assert torch.allclose(eager.conductance(), lazy.conductance(), rtol=1e-6, atol=0)
    for a in (eager, lazy):
        dev, epoch = torch.arange(a.n_devices), a._n_switch.view(-1)
        fresh = a._epoch_noise(*(noise.keyed_normal(11, noise.DRIFT, dev, 2 * epoch + j) for j in (0, 1)))
        assert torch.equal(a._unit_noise.view(-1), fresh)
        undosed = a._dose.sum(dim=0) == 0
        assert undosed.any() and torch.all(a._applied[undosed] == 0)
    never = (lazy._n_switch == 0) & ~lazy.stuck
    assert (lazy.conductance() - 300e-6)[never].abs().mean() > 0.5e-6  # and the others did drift


def test_disturbance_grows_with_the_number_of_half_select_pulses():
    p = load_preset("tio2-passive").with_faults(stuck_lrs=0, stuck_hrs=0)
    a = CrossbarArray(32, 32, p, seed=4)
    start = a.conductance().clone()
    half = torch.zeros(32, 32, dtype=torch.bool)
    half[0, 1:], half[1:, 0] = True, True
    spread = []
    for k in range(60):
        a.apply_lines(*v3(32, -1.8, 0, 0), 1e-6)  # RESET pulses on device (0, 0)
        if k in (4, 59):
            d = a.conductance() - start
            spread.append((float(d[half].mean()), float(d[1:, 1:].std())))
    (m5, s5), (m60, s60) = spread
    # half-selected devices feel RESET-polarity stress and drift down; everyone spreads
    assert m60 < m5 < 0 and s60 > s5 > 0


def test_relaxation_decays_over_virtual_time():
    p = load_preset("tio2-passive").with_faults(stuck_lrs=0, stuck_hrs=0)
    p = p.model_copy(update={"relaxation": p.relaxation.model_copy(update={"fraction": 0.3, "tau": 1.0})})
    a = CrossbarArray(1, 1, p, seed=0)
    a.g[:] = 100e-6
    a.apply(torch.tensor([[1.6]]), 1e-6)
    jumped = float(a.conductance()[0, 0])
    a.advance(1.0)
    one_tau = float(a.conductance()[0, 0])
    a.advance(20.0)
    settled = float(a.conductance()[0, 0])
    step = jumped - 100e-6
    assert settled == pytest.approx(100e-6 + 0.7 * step, rel=1e-6)
    assert one_tau - settled == pytest.approx(0.3 * step * math.exp(-1), rel=1e-6)


def test_read_noise_and_nonlinear_read():
    p = load_preset("tio2-passive")
    a = CrossbarArray(64, 64, p, seed=2)
    g = a.conductance()
    reads = torch.stack([a.sample() for _ in range(50)])
    sd = torch.hypot(p.read.noise_relative * g, torch.tensor(p.read.noise_absolute))
    ratio = (reads.std(dim=0) / sd).mean()
    assert 0.9 < float(ratio) < 1.1
    i_read = a.device_currents(g, torch.tensor(0.2))
    assert torch.allclose(i_read, 0.2 * g)  # G is defined at the read voltage
    assert torch.all(a.device_currents(g, torch.tensor(0.6)) > 3 * i_read)  # superlinear above it


def test_program_applies_fault_factors_and_reads_back():
    p = load_preset("tio2-passive").with_faults(stuck_lrs=0.15, stuck_hrs=0.15, discordant=0.3)
    a = CrossbarArray(100, 100, p, seed=6)
    before = a.conductance().clone()
    request = torch.full((100, 100), 5e-6, dtype=torch.float64)
    read_back = a.program(request)
    change = a.conductance() - before
    assert torch.all(change[a.stuck] == 0)
    assert change[a.discordant].mean() < -2e-6 and change[~a.stuck & ~a.discordant].mean() > 2e-6
    assert torch.allclose(read_back, a.conductance(), rtol=0.02, atol=3e-6)


def test_keyed_noise_depends_only_on_its_key():
    dev = torch.arange(1000)
    cnt = torch.zeros(1000, dtype=torch.int64)
    a = noise.keyed_normal(7, noise.C2C, dev, cnt)
    assert torch.equal(a[500:], noise.keyed_normal(7, noise.C2C, dev[500:], cnt[500:]))
    assert not torch.equal(a, noise.keyed_normal(7, noise.C2C, dev, cnt + 1))
    assert not torch.equal(a, noise.keyed_normal(8, noise.C2C, dev, cnt))
    both = noise.keyed_normal(7, torch.tensor([[noise.C2C], [noise.DRIFT]]), dev, cnt)  # a stream per draw
    assert torch.equal(both[0], a) and torch.equal(both[1], noise.keyed_normal(7, noise.DRIFT, dev, cnt))
    big = noise.keyed_normal(1, noise.DRIFT, torch.arange(200_000), torch.zeros(200_000, dtype=torch.int64))
    assert abs(float(big.mean())) < 0.01 and abs(float(big.std()) - 1) < 0.01


def test_same_seed_is_bit_identical():
    def run(seed):
        a = CrossbarArray(16, 16, load_preset("tio2-passive"), seed=seed)
        for k in range(10):
            a.apply_lines(*v3(16, 1.45 if k % 2 else -1.7, k, 15 - k), 1e-6)
        a.program(torch.full((16, 16), 1e-6, dtype=torch.float64))
        return a.conductance().numpy(), a.sample().numpy()

    g1, r1 = run(12)
    g2, r2 = run(12)
    g3, _ = run(13)
    assert np.array_equal(g1, g2) and np.array_equal(r1, r2)
    assert not np.array_equal(g1, g3)


def test_stuck_distributions_are_the_published_fits_to_the_dead_crossbars():
    from memlab.calibrate import fit_stuck

    fit, f = fit_stuck(), load_preset("tio2-passive").faults
    assert fit["lrs"]["n"] == 208 and fit["hrs"]["n"] == 62
    pub = fit["published"]
    assert (f.lrs_conductance.kind, f.lrs_conductance.mean, f.lrs_conductance.sd) == \
        ("normal", pytest.approx(pub["lrs_mean"]), pytest.approx(pub["lrs_sd"]))
    assert (f.hrs_conductance.kind, f.hrs_conductance.low, f.hrs_conductance.high) == \
        ("uniform", pytest.approx(pub["hrs_low"]), pytest.approx(pub["hrs_high"]))
    # memlab's own fit to every map is much higher: arrays that died whole sit at 1-8 mS
    assert fit["lrs"]["median"] > 2 * pub["lrs_mean"]


def test_distributions():
    from simulator.device import Distribution

    n, u = torch.randn(200_000, dtype=torch.float64), torch.rand(200_000, dtype=torch.float64)
    assert Distribution(median=1e-3, sigma=0.5).kind == "lognormal"
    assert Distribution(low=1e-6, high=1e-4).kind == "loguniform"
    g = Distribution(kind="normal", mean=5e-4, sd=1e-4).sample(n, u)
    assert float(g.mean()) == pytest.approx(5e-4, rel=0.01) and float(g.std()) == pytest.approx(1e-4, rel=0.02)
    g = Distribution(kind="uniform", low=1e-5, high=1e-4).sample(n, u)
    assert float(g.min()) >= 1e-5 and float(g.max()) <= 1e-4 and float(g.mean()) == pytest.approx(5.5e-5, rel=0.01)
    with pytest.raises(ValidationError, match="needs sd"):
        Distribution(kind="normal", mean=1e-4)
