"""Noise-injection training (MAT): straight-through estimator, noise models, clipping,
seeding, and the mat-mnist reproduction (a fast version here; the full one is in test_reproductions.py, marked slow)."""

from __future__ import annotations

import io
import json

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from helpers import one_torch_thread  # noqa: F401 (autouse fixture)
from memlab.datasets import DataSplit, load_mnist
from memlab.training import noise_injection as ni
from memlab.training.noise_injection import (
    MLP,
    NoiseInjectionConfig,
    additive_relative,
    evaluate,
    make_perturbation,
    multiplicative,
    plot_accuracy_vs_noise,
    plot_training_curves,
    print_mat_mnist,
    random_shift,
    reproduce_mat_mnist,
    straight_through,
    train_mlp,
)

LEVEL_KEYS = ["0", "5", "10", "15", "20", "30"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def small_mnist() -> DataSplit:
    s = load_mnist()
    return DataSplit(s.x_train[:640], s.y_train[:640], s.x_test[:400], s.y_test[:400])


# --- straight-through estimator -------------------------------------------------------------


def test_straight_through_forward_is_noisy_gradient_is_identity():
    w = torch.randn(5, 7, generator=gen(), requires_grad=True)
    w_noisy = additive_relative(0.3)(w.detach(), gen(1))
    out = straight_through(w, w_noisy)
    assert torch.equal(out.detach(), w_noisy)
    (out * torch.arange(35.0).view(5, 7)).sum().backward()
    # d out / d w is the identity: no gradient through the noise nor through max|w|
    assert torch.equal(w.grad, torch.arange(35.0).view(5, 7))


def test_mlp_gradient_is_that_of_the_noisy_weights_applied_to_the_clean_ones():
    x = torch.rand(16, 12, generator=gen(2))
    y = torch.randint(0, 4, (16,), generator=gen(3))
    model = MLP((12, 8, 4), generator=gen(4))
    perturb = additive_relative(0.2)
    loss = F.nll_loss(model(x, perturb, gen(5)), y)
    loss.backward()
    # the same noise drawn again, on leaf copies of the noisy weights
    g = gen(5)
    noisy = [perturb(w.detach(), g).requires_grad_() for w in model.weights]
    h = F.relu(F.linear(x, noisy[0]))
    ref = F.nll_loss(F.log_softmax(F.linear(h, noisy[1]), dim=-1), y)
    ref.backward()
    assert torch.allclose(loss, ref)
    for w, wn in zip(model.weights, noisy):
        assert torch.allclose(w.grad, wn.grad)
    # and it is not the gradient of the clean forward
    clean = [w.detach().clone().requires_grad_() for w in model.weights]
    F.nll_loss(F.log_softmax(F.linear(F.relu(F.linear(x, clean[0])), clean[1]), dim=-1), y).backward()
    assert not torch.allclose(model.weights[0].grad, clean[0].grad)


def test_forward_differs_with_noise_and_equals_clean_at_level_zero():
    model = MLP((12, 8, 4), generator=gen())
    x = torch.rand(6, 12, generator=gen(1))
    clean = model(x)
    assert torch.equal(model(x, make_perturbation("additive_relative", 0.0), gen(2)), clean)
    assert make_perturbation("multiplicative", 0.0) is None
    noisy1 = model(x, make_perturbation("additive_relative", 0.1), gen(2))
    assert not torch.allclose(noisy1, clean)
    # resampled on every forward pass
    g = gen(3)
    perturb = additive_relative(0.1)
    assert not torch.allclose(model(x, perturb, g), model(x, perturb, g))


# --- noise models ---------------------------------------------------------------------------


def test_additive_relative_sd_is_level_times_2_max_abs_w_per_layer():
    model = MLP((400, 300, 200), generator=gen())
    with torch.no_grad():
        model.weights[1].mul_(7.0)  # layers at very different scales
    perturb = additive_relative(0.15)
    g = gen(1)
    for w in model.weights:
        w = w.detach()
        noise = torch.stack([perturb(w, g) - w for _ in range(3)])
        expected = 0.15 * 2 * w.abs().max().item()
        assert noise.std().item() == pytest.approx(expected, rel=0.01)
        assert noise.mean().item() == pytest.approx(0.0, abs=0.01 * expected)


def test_each_layer_is_perturbed_with_its_own_scale():
    model = MLP((50, 40, 30), generator=gen())
    with torch.no_grad():
        model.weights[0].mul_(10.0)
    seen = []
    base = additive_relative(0.2)

    def recording(w, g):
        out = base(w, g)
        seen.append((w.abs().max().item(), (out - w).std().item()))
        return out

    model(torch.rand(3, 50, generator=gen(1)), recording, gen(2))
    assert len(seen) == 2
    for max_abs, sd in seen:
        assert sd == pytest.approx(0.2 * 2 * max_abs, rel=0.1)


def test_multiplicative_noise_is_relative_per_device():
    w = torch.tensor([0.0, 1.0, -2.0, 4.0]).repeat(20000, 1)
    out = multiplicative(0.1)(w, gen())
    assert torch.equal(out[:, 0], torch.zeros(20000))
    rel = (out[:, 1:] / w[:, 1:] - 1)
    assert rel.std().item() == pytest.approx(0.1, rel=0.02)
    assert rel.mean().item() == pytest.approx(0.0, abs=0.002)


def test_database_noise_hook_is_called_with_the_generator_and_trains(small_mnist):
    calls = []

    def sampler(w: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        calls.append(w.shape)
        return w + 0.01 * torch.randn(w.shape, generator=g)

    config = NoiseInjectionConfig(epochs=1, schedule="scratch", noise_model="database", database_sampler=sampler)
    model, history = train_mlp(config, small_mnist, seed=0)
    assert calls[:2] == [torch.Size([128, 784]), torch.Size([10, 128])]
    assert len(calls) >= 2 * 640 // 32
    assert history.noisy == [True]
    # the sampler is not serialised with the configuration
    assert "database_sampler" not in config.model_dump()
    with pytest.raises(ValidationError, match="database_sampler"):
        NoiseInjectionConfig(noise_model="database")
    with pytest.raises(ValueError, match="sampler"):
        make_perturbation("database", 0.1)


def test_config_validation():
    NoiseInjectionConfig()
    with pytest.raises(ValidationError):
        NoiseInjectionConfig(noise_model="gaussian")
    with pytest.raises(ValidationError):
        NoiseInjectionConfig(noise_level=-0.1)
    with pytest.raises(ValidationError, match="pretrain_epochs"):
        NoiseInjectionConfig(schedule="finetune", epochs=5, pretrain_epochs=5)
    NoiseInjectionConfig(schedule="finetune", epochs=5, pretrain_epochs=5, noise_level=0.0)  # regular: no matter
    with pytest.raises(ValidationError):
        NoiseInjectionConfig(sizes=(784,))
    with pytest.raises(ValidationError):
        NoiseInjectionConfig(lr_milestones=(200, 100))
    with pytest.raises(ValidationError):
        NoiseInjectionConfig(unknown=1)
    with pytest.raises(ValidationError, match="square"):
        NoiseInjectionConfig(sizes=(10, 4, 2), augment_shift=1)
    c = NoiseInjectionConfig().replace(noise_level=0.0)
    assert c.noise_level == 0.0 and not c.noisy_epoch(20)
    with pytest.raises(ValidationError):
        NoiseInjectionConfig().replace(epochs=0)


# --- training -------------------------------------------------------------------------------


def test_weights_are_clipped_after_every_step(small_mnist, monkeypatch):
    clips = []
    real = ni._clip_

    def spy(model, clip_std):
        bounds = [clip_std * w.std().item() for w in model.weights]  # the std before clipping
        real(model, clip_std)
        clips.extend(w.abs().max().item() / b for w, b in zip(model.weights, bounds))

    monkeypatch.setattr(ni, "_clip_", spy)
    config = NoiseInjectionConfig(epochs=2, lr=0.05, lr_milestones=(), schedule="scratch")
    train_mlp(config, small_mnist, seed=0)
    assert len(clips) == 2 * 2 * (640 // 32)  # two layers, every step of two epochs
    assert max(clips) <= 1 + 1e-6
    assert sum(c > 0.999 for c in clips) > len(clips) / 2  # the large learning rate keeps the bound active


def test_without_clipping_weights_outgrow_the_bound(small_mnist):
    config = NoiseInjectionConfig(epochs=2, lr=0.05, lr_milestones=(), clip_std=None, noise_level=0.0)
    model, _ = train_mlp(config, small_mnist, seed=0)
    assert any(w.abs().max() > 2.5 * w.std() for w in model.weights)


def test_same_seed_same_model_and_global_rng_untouched(small_mnist):
    config = NoiseInjectionConfig(epochs=2, schedule="finetune", pretrain_epochs=1, augment_shift=1)
    state = torch.get_rng_state()
    a, ha = train_mlp(config, small_mnist, seed=3)
    b, hb = train_mlp(config, small_mnist, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    c, _ = train_mlp(config, small_mnist, seed=4)
    for wa, wb, wc in zip(a.weights, b.weights, c.weights):
        assert torch.equal(wa, wb)
        assert not torch.equal(wa, wc)
    assert ha == hb
    x, y = small_mnist.x_test, small_mnist.y_test
    assert evaluate(a, x, y, 0.2, 3, gen(9)) == evaluate(b, x, y, 0.2, 3, gen(9))
    assert evaluate(a, x, y, 0.2, 3) == evaluate(a, x, y, 0.2, 3)  # default generator is seeded


def test_schedules_and_history(small_mnist):
    scratch = NoiseInjectionConfig(epochs=3, schedule="scratch")
    finetune = NoiseInjectionConfig(epochs=3, schedule="finetune", pretrain_epochs=2, lr_milestones=(10, 30, 50))
    regular = finetune.replace(noise_level=0.0)
    _, h = train_mlp(scratch, small_mnist, seed=0)
    assert h.noisy == [True, True, True] and h.epoch == [1, 2, 3]
    _, h = train_mlp(finetune, small_mnist, seed=0)
    assert h.noisy == [False, False, True]
    assert h.lr == pytest.approx([1e-3 * 0.5, 1e-3 * 0.25, 1e-3 * 0.125])  # milestones count optimizer steps
    _, h = train_mlp(regular, small_mnist, seed=0)
    assert h.noisy == [False] * 3 and h.test_accuracy_noisy == h.test_accuracy
    assert all(0 <= a <= 100 for a in h.test_accuracy + h.train_accuracy)
    assert h.loss[-1] < h.loss[0]


def test_random_shift_translates_and_zero_fills():
    img = torch.zeros(1, 28, 28)
    img[0, 10, 12] = 1.0
    x = img.reshape(1, 784).repeat(500, 1)
    out = random_shift(x, 2, gen()).view(500, 28, 28)
    pos = out.flatten(1).argmax(dim=1)
    rows, cols = pos // 28, pos % 28
    assert torch.equal(out.flatten(1).sum(dim=1), torch.ones(500))
    assert set(rows.tolist()) == set(range(8, 13)) and set(cols.tolist()) == set(range(10, 15))
    assert torch.equal(random_shift(x, 0, gen()), x)


def test_evaluate_accuracy_percent_and_draws(small_mnist):
    model, _ = train_mlp(NoiseInjectionConfig(epochs=2, noise_level=0.0), small_mnist, seed=0)
    x, y = small_mnist.x_test, small_mnist.y_test
    clean = evaluate(model, x, y, 0.0)
    assert clean == pytest.approx(100.0 * (model(x).argmax(1) == y).float().mean().item())
    assert 70 < clean <= 100
    one = [evaluate(model, x, y, 0.3, 1, gen(s)) for s in range(4)]
    assert len(set(one)) > 1  # one draw per pass: each draw differs
    g = gen(0)
    singles = [evaluate(model, x, y, 0.3, 1, g) for _ in range(4)]
    assert evaluate(model, x, y, 0.3, 4, gen(0)) == pytest.approx(sum(singles) / 4)
    assert evaluate(model, x, y, 0.3, 4) < clean


# --- the reproduction ---------------------------------------------------------------------


def check_result_shape(result: dict) -> None:
    json.loads(json.dumps(result))
    for method in ("regular", "noise_injection"):
        assert list(result[method]) == LEVEL_KEYS
        for mean, std in result[method].values():
            assert 0 <= mean <= 100 and std >= 0
    assert isinstance(result["train_images"], int) and isinstance(result["test_images"], int)


@pytest.mark.timeout(900)
def test_noise_injection_beats_regular_training_under_20_percent_noise(tmp_path):
    """The headline of Memristor-Aware Training at a reduced size: under 20 % inference noise
    the network trained with noise injection is clearly ahead of the one trained regularly,
    at little cost without noise. The reproduction's set-up (8,000 training images, 1-pixel
    shifts, noise from scratch, 25 noise draws per level) with 10 epochs instead of 25, at
    lr 1e-3 instead of 5e-4, and one seed (0).
    Checked over seeds 0-4, accuracy % at 20 % noise, noise injection / regular (gap; gap at 0
    noise): 89.9 / 76.3 (+13.6; -1.0), 89.4 / 74.6 (+14.8; -1.1), 88.9 / 76.4 (+12.5; -0.7),
    89.4 / 74.5 (+14.9; -1.1), 89.4 / 75.4 (+14.0; -0.6); at 30 % noise at least +18.9.
    (With 10 draws instead of 25 the gap at 20 % ranged +10.9 to +16.6.)"""
    config = ni.MAT_MNIST_CONFIG.replace(lr=1e-3)
    result = reproduce_mat_mnist(seeds=1, draws=25, config=config, epochs=10)
    check_result_shape(result)
    assert result["train_images"] == 8000 and result["test_images"] == 2000 and result["epochs"] == 10
    at20, at0 = ni.criterion_margins(result)
    assert at20 >= 6, result
    assert at0 >= -3, result
    assert result["noise_injection"]["20"][0] >= 85, result
    assert result["noise_injection"]["30"][0] >= result["regular"]["30"][0] + 10, result
    assert result["regular"]["0"][1] == 0.0  # one seed: no spread
    assert result["regular"]["0"][0] > 93
    out = io.StringIO()
    print_mat_mnist(result, out)
    text = out.getvalue()
    assert "97.5" in text and "92.7" in text  # the published rows
    assert "8,000 train / 2,000 test" in text and "60k" in text
    assert f"noise injection {at20:+.1f} points vs regular" in text
    assert plot_accuracy_vs_noise(result, tmp_path / "acc.png").stat().st_size > 0
    assert plot_training_curves(result["training_curves"], tmp_path / "curves.png").stat().st_size > 0


def test_reproduction_overrides_for_quick_runs():
    threads = torch.get_num_threads()
    result = reproduce_mat_mnist(seeds=2, levels=(0, 20), draws=2, epochs=1, train_images=320)
    assert result["epochs"] == 1 and result["train_images"] == 320 and result["seeds"] == 2
    assert list(result["regular"]) == ["0", "20"]
    assert result["augment_shift"] == ni.MAT_MNIST_CONFIG.augment_shift
    assert len(result["training_curves"]["noise_injection"]["test_accuracy"]) == 1
    assert torch.get_num_threads() == threads  # restored after the run
