"""Memristor-Aware Training: noise injection with a straight-through estimator.

Every forward pass perturbs each layer's weights with freshly drawn noise (by default
Gaussian, sd = level x 2 max|w| of the layer, as in the EIS-Hub code); the backward pass sees
the clean weights (straight-through estimator), so the optimizer updates the weights that
will be programmed while the loss is that of the weights the devices will actually hold.

Reproduction `mat-mnist`: an MLP 784-128-10 without biases, trained regularly and with
noise injection at 20 %, evaluated under inference noise 0-30 %. memlab has only the
10,000 MNIST test images offline: they are split 8,000 train / 2,000 test with a fixed seed
(`memlab.datasets.load_mnist`), whereas the published figures used the 60k training set;
MAT_MNIST_CONFIG says how the set-up was adapted to that, and why.
"""

from __future__ import annotations

import math
import sys
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, TextIO

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import Tensor, nn

from memlab.datasets import MNIST_NOTE, DataSplit, load_mnist

Perturbation = Callable[[Tensor, torch.Generator], Tensor]
"""Maps a (detached) weight tensor and a generator to the perturbed weight tensor the
devices would hold. A device-database sampler plugs in as `noise_model="database"`; it
should draw its randomness from the generator so that runs stay reproducible."""

NoiseModel = Literal["additive_relative", "multiplicative", "database"]

# Published figures (EIS-Hub, full 60k training set, 5 models), accuracy % by noise level %.
PUBLISHED_MAT_MNIST = {
    "regular": {"0": 97.5, "5": 96.5, "10": 89.7, "15": 78.0, "20": 63.4, "30": 49.5},
    "noise_injection": {"0": 96.6, "5": 96.5, "10": 96.0, "15": 95.1, "20": 92.7, "30": 82.0},
}


# --- noise models -------------------------------------------------------------------------


def additive_relative(level: float) -> Perturbation:
    """w + N(0, (level x 2 max|w|)^2), max over the layer."""

    def perturb(w: Tensor, generator: torch.Generator) -> Tensor:
        sd = level * 2 * w.abs().max()
        return w + sd * torch.randn(w.shape, generator=generator, dtype=w.dtype)

    return perturb


def multiplicative(level: float) -> Perturbation:
    """w (1 + level N(0, 1)): relative error per device."""

    def perturb(w: Tensor, generator: torch.Generator) -> Tensor:
        return w * (1 + level * torch.randn(w.shape, generator=generator, dtype=w.dtype))

    return perturb


def make_perturbation(
    noise_model: NoiseModel, level: float, sampler: Perturbation | None = None
) -> Perturbation | None:
    """The perturbation to apply in the forward pass, or None for clean weights. For
    "database" the level is only an on/off switch (0 = off): the sampler sets the size."""
    if level == 0:
        return None
    if noise_model == "additive_relative":
        return additive_relative(level)
    if noise_model == "multiplicative":
        return multiplicative(level)
    if noise_model == "database":
        if sampler is None:
            raise ValueError("noise_model 'database' needs a sampler")
        return sampler
    raise ValueError(f"unknown noise model {noise_model!r}")


def straight_through(w: Tensor, w_noisy: Tensor) -> Tensor:
    """Forward value w_noisy, gradient that of w."""
    return w + (w_noisy - w).detach()


# --- network --------------------------------------------------------------------------------


class MLP(nn.Module):
    """Fully connected, no biases, ReLU between layers, LogSoftmax output. Initialised like
    `nn.Linear` (Kaiming uniform, a = sqrt(5)) but from the given generator."""

    def __init__(self, sizes: Sequence[int] = (784, 128, 10), generator: torch.Generator | None = None):
        super().__init__()
        self.sizes = tuple(sizes)
        self.weights = nn.ParameterList()
        for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:]):
            w = torch.empty(n_out, n_in)
            nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=generator)
            self.weights.append(nn.Parameter(w))

    def forward(
        self, x: Tensor, perturb: Perturbation | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Log-probabilities. With `perturb`, each layer's weights are perturbed afresh on
        this call (straight-through for the gradient)."""
        last = len(self.weights) - 1
        for i, w in enumerate(self.weights):
            if perturb is not None:
                w = straight_through(w, perturb(w.detach(), generator))
            x = F.linear(x, w)
            x = F.relu(x) if i < last else F.log_softmax(x, dim=-1)
        return x


# --- configuration --------------------------------------------------------------------------


class NoiseInjectionConfig(BaseModel):
    """Training set-up. Defaults: the EIS-Hub MNIST set-up (784-128-10, Adam lr 1e-3, batch 32,
    25 epochs, weights clipped to +/-2.5 std after each step, noise sd 20 % of 2 max|w|),
    except the learning-rate decay, which is off by default.

    Their step decay halves the lr at optimizer steps 100, 150 and 200 (a MultiStepLR stepped
    per batch), so on 60k images they train 46,675 of 46,875 steps at 1.25e-4. On 8,000
    images (6,250 steps) the same milestones undertrain both networks (regular, with 1-pixel
    shifts: 93.7 % clean against 96.5 % with a constant 1e-3). `lr_milestones=(100, 150, 200)`
    restores their schedule.

    `epochs` is the whole budget. `schedule="scratch"` trains every epoch with noise (their
    code); `"finetune"` trains `pretrain_epochs` clean, then the rest with noise (their
    write-up). `noise_level=0` is regular training. `augment_shift` translates each training
    image by up to that many pixels, redrawn every epoch (off in their set-up)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sizes: tuple[int, ...] = (784, 128, 10)
    epochs: int = Field(25, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    lr_milestones: tuple[int, ...] = Field((), description="optimizer steps at which lr *= lr_gamma")
    lr_gamma: float = Field(0.5, gt=0, le=1)
    clip_std: float | None = Field(2.5, gt=0, description="clip each layer to +/- clip_std x its std; None: off")
    noise_model: NoiseModel = "additive_relative"
    noise_level: float = Field(0.2, ge=0)
    schedule: Literal["scratch", "finetune"] = "scratch"
    pretrain_epochs: int = Field(10, ge=0, description="clean epochs before noise, schedule 'finetune' only")
    augment_shift: int = Field(0, ge=0, le=4, description="shift training images by up to this many pixels")
    database_sampler: Perturbation | None = Field(None, exclude=True, description="for noise_model 'database'")

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, sizes: tuple[int, ...]) -> tuple[int, ...]:
        if len(sizes) < 2 or any(s < 1 for s in sizes):
            raise ValueError("sizes: at least an input and an output size, all positive")
        return sizes

    @field_validator("lr_milestones")
    @classmethod
    def _milestones(cls, steps: tuple[int, ...]) -> tuple[int, ...]:
        if list(steps) != sorted(set(steps)) or any(s < 1 for s in steps):
            raise ValueError("lr_milestones: increasing positive step numbers")
        return steps

    @model_validator(mode="after")
    def _consistent(self) -> NoiseInjectionConfig:
        if self.schedule == "finetune" and self.noise_level > 0 and self.pretrain_epochs >= self.epochs:
            raise ValueError(f"pretrain_epochs ({self.pretrain_epochs}) must be < epochs ({self.epochs})")
        if self.augment_shift and math.isqrt(self.sizes[0]) ** 2 != self.sizes[0]:
            raise ValueError("augment_shift needs square images (sizes[0] a square number)")
        if self.noise_model == "database" and self.database_sampler is None:
            raise ValueError("noise_model 'database' needs database_sampler")
        return self

    def replace(self, **changes) -> NoiseInjectionConfig:
        """A validated copy with some fields changed (keeps the sampler)."""
        return NoiseInjectionConfig(**{**dict(self), **changes})

    def noisy_epoch(self, epoch: int) -> bool:
        if self.noise_level == 0:
            return False
        return self.schedule == "scratch" or epoch >= self.pretrain_epochs


# --- training and evaluation ----------------------------------------------------------------


@dataclass
class TrainingHistory:
    """Per epoch: mean training loss, training accuracy (on the noisy forward passes when the
    epoch was noisy), clean test accuracy, test accuracy under the training noise (one draw;
    equal to the clean one for regular training), learning rate at the end of the epoch."""

    epoch: list[int] = field(default_factory=list)
    noisy: list[bool] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    test_accuracy_noisy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def mean(cls, histories: Sequence[TrainingHistory]) -> TrainingHistory:
        """Epoch-wise mean over runs of the same length (e.g. over seeds)."""
        first = histories[0]

        def avg(name: str) -> list[float]:
            return [sum(v) / len(v) for v in zip(*(getattr(h, name) for h in histories))]

        return cls(
            epoch=list(first.epoch), noisy=list(first.noisy), loss=avg("loss"),
            train_accuracy=avg("train_accuracy"), test_accuracy=avg("test_accuracy"),
            test_accuracy_noisy=avg("test_accuracy_noisy"), lr=list(first.lr),
        )


def _accuracy(log_probs: Tensor, y: Tensor) -> float:
    return 100.0 * (log_probs.argmax(dim=-1) == y).float().mean().item()


def _clip_(model: MLP, clip_std: float) -> None:
    with torch.no_grad():
        for w in model.weights:
            bound = clip_std * w.std()
            w.clamp_(-bound, bound)


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Each flattened square image translated by a random (dx, dy) in [-max_shift, max_shift],
    zero-filled."""
    n, side = len(x), math.isqrt(x.shape[1])
    padded = F.pad(x.view(n, side, side), (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n, 1, 1), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n, 1, 1), generator=generator)
    r = torch.arange(side)
    return padded[torch.arange(n).view(n, 1, 1), dy + r.view(1, side, 1), dx + r.view(1, 1, side)].reshape(n, -1)


def train_mlp(config: NoiseInjectionConfig, data: DataSplit, seed: int) -> tuple[MLP, TrainingHistory]:
    """Train an MLP on data.x_train / y_train (y: class indices). Everything random
    (initialisation, shuffling, noise) comes from one generator seeded with `seed`: the same
    seed gives the same model, and the global torch RNG is neither used nor changed."""
    g = torch.Generator().manual_seed(seed)
    monitor = torch.Generator().manual_seed(seed)  # for the history only: keeps training independent of it
    model = MLP(config.sizes, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(config.lr_milestones), gamma=config.lr_gamma)
    train_noise = make_perturbation(config.noise_model, config.noise_level, config.database_sampler)
    x, y = data.x_train, data.y_train
    n = len(y)
    history = TrainingHistory()
    for epoch in range(config.epochs):
        noisy = config.noisy_epoch(epoch)
        perturb = train_noise if noisy else None
        model.train()
        if config.augment_shift:
            x = random_shift(data.x_train, config.augment_shift, g)
        order = torch.randperm(n, generator=g)
        loss_sum, correct = 0.0, 0.0
        for start in range(0, n, config.batch_size):
            idx = order[start:start + config.batch_size]
            out = model(x[idx], perturb, g)
            loss = F.nll_loss(out, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if config.clip_std is not None:
                _clip_(model, config.clip_std)
            loss_sum += loss.item() * len(idx)
            correct += (out.argmax(dim=-1) == y[idx]).sum().item()
        history.epoch.append(epoch + 1)
        history.noisy.append(noisy)
        history.loss.append(loss_sum / n)
        history.train_accuracy.append(100.0 * correct / n)
        history.test_accuracy.append(evaluate(model, data.x_test, data.y_test, 0.0))
        history.test_accuracy_noisy.append(
            evaluate(model, data.x_test, data.y_test, config.noise_level, draws=1, generator=monitor,
                     noise_model=config.noise_model, sampler=config.database_sampler)
            if config.noise_level > 0 else history.test_accuracy[-1]
        )
        history.lr.append(opt.param_groups[0]["lr"])
    model.eval()
    return model, history


@torch.no_grad()
def evaluate(
    model: MLP,
    x: Tensor,
    y: Tensor,
    noise_level: float,
    draws: int = 10,
    generator: torch.Generator | None = None,
    noise_model: NoiseModel = "additive_relative",
    sampler: Perturbation | None = None,
) -> float:
    """Accuracy in % (0-100) with the weights perturbed at `noise_level` (a fraction, 0.2 =
    20 %): one fresh draw per pass over (x, y), averaged over `draws` passes. Without a
    generator, draws come from a generator seeded with 0 (reproducible, global RNG untouched)."""
    perturb = make_perturbation(noise_model, noise_level, sampler)
    if perturb is None:
        return _accuracy(model(x), y)
    if draws < 1:
        raise ValueError("draws must be >= 1")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    return sum(_accuracy(model(x, perturb, g), y) for _ in range(draws)) / draws


# --- the mat-mnist reproduction -------------------------------------------------------------


def _key(level: float) -> str:
    return f"{level:g}"


MAT_MNIST_CONFIG = NoiseInjectionConfig(schedule="scratch", augment_shift=1, lr=5e-4)
"""The reproduction's set-up: the published network, loss, optimizer, batch size, epochs and
clipping (see NoiseInjectionConfig), noise from scratch as in their code, and two changes
forced by having 8,000 training images instead of 60k, applied to both networks alike:

- Training images shifted at random by up to 1 pixel. Without this the regular network stays
  much more robust than the published one (77 % at 20 % noise against 63.4 %) and noise
  injection gains only 13.9 points there (the issue asks for 15). The gain grows with the
  training set (10, 12 and 15 points with 2k, 4k and 8k images, one seed), as the published
  29 points with 60k suggest; the shifts stand in for part of the missing variety and bring
  the regular curve close to the published one.
- A constant learning rate of 5e-4. Their run spends 46,675 steps at 1.25e-4; ours has 6,250
  steps. Matching the summed learning rate would give 1e-3, matching its square-root growth
  (a random walk) 3.4e-4; 5e-4 lies between.

Measured, 5 seeds x 25 draws: points gained by noise injection over regular training at 20 %
noise / at 0 noise (one run each; other random streams move these by about 0.3):

    lr 5e-4, noise from scratch (this set-up)    +18.5 / -1.2
    lr 1e-3, noise from scratch                  +21.3 / -1.6
    lr 1e-3, 5 clean then 20 noisy epochs        +20.4 / -1.4
    lr 1e-3 halved at epochs 5, 10 and 15        +16.7 / -0.9
    lr 3.4e-4, noise from scratch                +16.2 / -0.9
    lr 1e-3, no shifts                           +13.9 / +0.4

Noise injection's clean accuracy stays near 95 % in all of them; what moves is the regular
network (trained further: more accurate clean, less robust). This set-up keeps a margin on
both sides of the criterion (>= +15 and >= -2). Fine-tuning, the write-up's schedule, kept
no more clean accuracy than noise from scratch, so the reproduction follows their code."""


def reproduce_mat_mnist(
    seeds: int = 5,
    levels: Sequence[float] = (0, 5, 10, 15, 20, 30),
    train_noise: float = 0.20,
    draws: int = 25,
    config: NoiseInjectionConfig | None = None,
    epochs: int | None = None,
    train_images: int | None = None,
    split_seed: int = 0,
    threads: int | None = 1,
    progress: TextIO | None = None,
) -> dict:
    """Regular and noise-injection training (same network, same epochs, same seeds) on the
    8,000 / 2,000 split of the shipped MNIST test images; accuracy (%) at each inference
    noise level in `levels` (percent), each the mean of `draws` noise draws, then mean and
    std over `seeds`. `config` (default MAT_MNIST_CONFIG) sets everything but the training
    noise level: 0 for regular training, `train_noise` (a fraction) for noise injection.
    `epochs` overrides the config's, and `train_images` keeps only the first n training
    images (both for quick checks). `threads` sets
    torch's CPU threads for the run (restored after): one thread is faster for a network
    this small, and much faster on a busy machine.

    Returns {"regular": {"0": [mean, std], ...}, "noise_injection": {...},
    "train_images": n, "test_images": n, ...} (more keys: set-up, runtime, mean training
    curves per method).
    """
    t0 = time.perf_counter()
    config = config or MAT_MNIST_CONFIG
    if epochs is not None:
        config = config.replace(epochs=epochs)
    data = load_mnist(split_seed)
    if train_images is not None:
        data = DataSplit(data.x_train[:train_images], data.y_train[:train_images], data.x_test, data.y_test)
    methods = {"regular": config.replace(noise_level=0.0), "noise_injection": config.replace(noise_level=train_noise)}
    accuracies: dict[str, dict[str, list[float]]] = {m: {_key(lv): [] for lv in levels} for m in methods}
    curves: dict[str, list[TrainingHistory]] = {m: [] for m in methods}
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for seed in range(seeds):
            for method, method_config in methods.items():
                model, history = train_mlp(method_config, data, seed)
                curves[method].append(history)
                # the same noise stream for both methods
                g = torch.Generator().manual_seed(10_000 + seed)
                for level in levels:
                    accuracies[method][_key(level)].append(
                        evaluate(model, data.x_test, data.y_test, level / 100, draws, g, config.noise_model,
                                 config.database_sampler)
                    )
                if progress is not None:
                    print(f"seed {seed} {method}: " + " ".join(
                        f"{k}%={v[-1]:.1f}" for k, v in accuracies[method].items()), file=progress, flush=True)
    finally:
        torch.set_num_threads(saved_threads)
    result: dict = {
        method: {k: [_mean(v), _std(v)] for k, v in by_level.items()} for method, by_level in accuracies.items()
    }
    result.update(
        train_images=len(data.y_train),
        test_images=len(data.y_test),
        seeds=seeds,
        draws=draws,
        train_noise=train_noise,
        noise_model=config.noise_model,
        schedule=config.schedule,
        epochs=config.epochs,
        pretrain_epochs=config.pretrain_epochs if config.schedule == "finetune" else 0,
        lr=config.lr,
        lr_milestones=list(config.lr_milestones),
        lr_gamma=config.lr_gamma,
        augment_shift=config.augment_shift,
        data=MNIST_NOTE,
        training_curves={m: TrainingHistory.mean(h).as_dict() for m, h in curves.items()},
        runtime_s=round(time.perf_counter() - t0, 1),
    )
    return result


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _std(values: Sequence[float]) -> float:
    """Sample std (ddof 1); 0 for a single value."""
    if len(values) < 2:
        return 0.0
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def criterion_margins(result: dict) -> tuple[float, float]:
    """(noise injection minus regular at 20 % noise, the same at 0 %), in points. Issue 4
    asks for >= 15 and >= -2."""
    ni, reg = result["noise_injection"], result["regular"]
    return ni["20"][0] - reg["20"][0], ni["0"][0] - reg["0"][0]


def _setup(result: dict) -> str:
    parts = []
    if "schedule" in result:
        if result["schedule"] == "finetune":
            noisy = result["epochs"] - result["pretrain_epochs"]
            parts.append(f"pre-trained {result['pretrain_epochs']} epochs, fine-tuned {noisy} with noise")
        else:
            parts.append(f"{result['epochs']} epochs with noise from scratch")
    if "lr" in result:
        decay = " constant"
        if result.get("lr_milestones"):
            decay = f", x{result.get('lr_gamma', 0.5):g} at steps {result['lr_milestones']}"
        parts.append(f"Adam lr {result['lr']:g}{decay}")
    if result.get("augment_shift"):
        parts.append(f"training images shifted by up to {result['augment_shift']} px (both methods)")
    return "; ".join(parts)


def print_mat_mnist(result: dict, out: TextIO = sys.stdout) -> None:
    """The table beside the published one, and the acceptance criterion of issue 4."""
    keys = list(result["regular"])
    header = ["inference noise"] + ["0" if k == "0" else f"{k} %" for k in keys]
    ni_label = f"noise-injection training, sd {result.get('train_noise', 0.2):g}"
    rows = []
    for method, label in (("regular", "regular training"), ("noise_injection", ni_label)):
        published = PUBLISHED_MAT_MNIST[method]
        rows.append([f"{label} (published)"] + [f"{published[k]:.1f}" if k in published else "" for k in keys])
        rows.append([f"{label} (memlab)"] + [f"{m:.1f} ± {s:.1f}" for m, s in (result[method][k] for k in keys)])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    print("MAT on MNIST, 784-128-10 MLP without biases: test accuracy (%) under Gaussian weight noise,", file=out)
    print("sd = level x 2 max|w| per layer, fresh per evaluation pass.", file=out)
    print(line(header), file=out)
    print("| " + " | ".join("-" * w for w in widths) + " |", file=out)
    for row in rows:
        print(line(row), file=out)
    print("published: full 60k MNIST training set, 10k test images, 5 models per row.", file=out)
    note = (
        f"memlab: {result['train_images']:,} train / {result['test_images']:,} test images split from the 10,000 "
        f"MNIST test images with a fixed seed (the 60k training set is not available offline); "
        f"mean ± std over {result.get('seeds', '?')} seeds, each the mean of {result.get('draws', '?')} noise draws; "
        f"{_setup(result)}."
    )
    print(textwrap.fill(note, width=110), file=out)
    if "20" in result["regular"] and "0" in result["regular"]:
        at20, at0 = criterion_margins(result)
        ok = at20 >= 15 and at0 >= -2
        print(
            f"criterion (issue 4): at 20 % noise, noise injection {at20:+.1f} points vs regular (need >= +15); "
            f"at 0, {at0:+.1f} points (need >= -2): {'holds' if ok else 'FAILS'}.",
            file=out,
        )
    if "runtime_s" in result:
        print(f"runtime {result['runtime_s']:.0f} s", file=out)


# --- plots ------------------------------------------------------------------------------------


def plot_accuracy_vs_noise(result: dict, path: str | Path) -> Path:
    """Both methods, mean ± std over seeds, with the published points as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    styles = {"regular": ("regular training", "C0"), "noise_injection": ("noise-injection training", "C3")}
    for method, (label, colour) in styles.items():
        keys = list(result[method])
        levels = [float(k) for k in keys]
        means = [result[method][k][0] for k in keys]
        stds = [result[method][k][1] for k in keys]
        ax.errorbar(levels, means, yerr=stds, color=colour, marker="o", capsize=3, label=f"{label} (memlab)")
        published = PUBLISHED_MAT_MNIST[method]
        ax.plot([float(k) for k in published], list(published.values()), color=colour, marker="x", ls="none",
                markersize=9, label=f"{label} (published, 60k train)")
    ax.set_xlabel("inference noise (% of 2 max|w|)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"MNIST 784-128-10, {result['train_images']:,}/{result['test_images']:,} split of the test set",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_training_curves(histories: Mapping[str, TrainingHistory | dict], path: str | Path) -> Path:
    """Loss and test accuracy (clean, and under the training noise) per epoch, one colour per
    run; e.g. `result["training_curves"]` from the reproduction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (name, h) in enumerate(histories.items()):
        h = TrainingHistory(**h) if isinstance(h, dict) else h
        colour = f"C{i}"
        ax_loss.plot(h.epoch, h.loss, color=colour, label=name)
        ax_acc.plot(h.epoch, h.test_accuracy, color=colour, label=f"{name}: clean")
        if h.test_accuracy_noisy != h.test_accuracy:
            ax_acc.plot(h.epoch, h.test_accuracy_noisy, color=colour, ls="--", label=f"{name}: with training noise")
        noisy_from = next((e for e, n in zip(h.epoch, h.noisy) if n), None)
        if noisy_from is not None and noisy_from > h.epoch[0]:
            for ax in (ax_loss, ax_acc):
                ax.axvline(noisy_from - 0.5, color=colour, ls=":", lw=1)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss (NLL)")
    ax_loss.set_yscale("log")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
