"""Hardware-aware ex-situ training from a device database (after Drolet et al. 2023).

Every forward pass maps each layer's weights (with the bias as an extra input) onto a pair
of tiles (G+ and G-, one device per weight each) in the database's conductance range
(min-max scaled per pass), then perturbs the tiles as programming them would: tuning imprecision drawn for each device's
target level, a V/3 disturbance sample drawn from the database by the device's position in
the programming order, and a fraction of devices replaced by stuck conductances. The
perturbed tile is mapped back, and the difference is added to the weights as a constant
(a reparametrization): gradients flow through the ideal weights, none through the stuck
substitutions.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..devicedb import DeviceDatabase
from .mapping import DifferentialMapping, Order, disturbance_keys, with_bias


class DatabasePerturbation:
    """Programming a tile as the database says it goes: a function of (tile, keys, generator)."""

    def __init__(self, db: DeviceDatabase, clip_sigma: float = 4.5):
        self.db, self.clip = db, clip_sigma
        max_key = max(db.disturbance)
        table, counts = db.disturbance_table(max_key)
        self.table = torch.tensor(table, dtype=torch.float32)
        self.counts = torch.tensor(counts)

    def __call__(self, g: torch.Tensor, keys: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        db, shape = self.db, g.shape
        imp = db.imprecision
        normal = lambda: torch.randn(shape, generator=gen).clamp_(-self.clip, self.clip)  # noqa: E731
        sigma = imp.sigma_pct(g * 1e6) / 100
        offset = (imp.offset_mean_pct + imp.offset_sd_pct * normal()) / 100
        g = g * (1 + offset + sigma * normal())
        keys = keys.clamp(max=len(self.counts) - 1)
        counts = self.counts[keys]
        pick = (torch.rand(shape, generator=gen) * counts).long().clamp(max=self.table.shape[1] - 1)
        g = g + torch.where(counts > 0, self.table[keys, pick], 0.0)
        s = db.stuck
        u = torch.rand(shape, generator=gen)
        lrs = u < s.lrs_fraction
        hrs = (u >= s.lrs_fraction) & (u < s.lrs_fraction + s.hrs_fraction)
        lrs_g = s.lrs.sample(torch.randn(shape, generator=gen), torch.rand(shape, generator=gen))
        hrs_g = s.hrs.sample(torch.randn(shape, generator=gen), torch.rand(shape, generator=gen))
        return torch.where(lrs, lrs_g, torch.where(hrs, hrs_g, g))


def database_sampler(db: DeviceDatabase | None = None, order: Order = "column-major"):
    """Database-driven noise for noise-injection training (`noise_model: database`): a weight
    matrix (out, in) perturbed as if programmed on a differential pair of tiles."""
    db = db or DeviceDatabase.tio2_measured()
    perturb, mapping = DatabasePerturbation(db), DifferentialMapping(*db.g_range)
    keys: dict[tuple[int, ...], torch.Tensor] = {}

    def sample(w: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        k = keys.get(tuple(w.shape))
        if k is None:
            k = keys[tuple(w.shape)] = disturbance_keys(*w.shape, order)
        w_max = w.abs().max()
        g_pos, g_neg = (perturb(g, k, gen) for g in mapping.to_conductance(w, w_max))
        return mapping.to_weight(g_pos, g_neg, w_max).to(w.dtype)

    return sample


class HardwareAwareLinear(nn.Linear):
    """nn.Linear whose forward pass sees its weights (bias last) as programmed on a crossbar
    tile: `sample` is a `database_sampler`."""

    def __init__(self, in_features: int, out_features: int, sample, gen: torch.Generator | None = None):
        super().__init__(in_features, out_features)
        self.sample = sample
        self.gen = gen or torch.Generator().manual_seed(0)
        self.hardware = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = with_bias(self.weight, self.bias)
        if self.hardware:
            with torch.no_grad():
                delta = self.sample(w, self.gen) - w
            w = w + delta
        return x @ w[:, :-1].T + w[:, -1]


class MoonsConfig(BaseModel):
    """The half-moons set-up of Drolet et al.: 2-8-1 sigmoid, BCE, Adam, batch 256."""

    model_config = ConfigDict(extra="forbid")

    hidden: int = 8
    pretrain_epochs: int = Field(0, ge=0, description="regular training first (both networks)")
    pretrain_lr: float = Field(0.1, gt=0)
    epochs: int = Field(100, ge=1, description="then these epochs, hardware-aware or not")
    batch_size: int = 256
    lr: float = Field(0.01, gt=0, description="the paper's value (their settings file uses 0.1)")
    weight_decay: float = Field(0.0, ge=0, description="their settings file uses 1e-4")
    hardware_aware: bool = True
    order: Order = "column-major"
    seed: int = 0


def make_moons_network(config: MoonsConfig, db: DeviceDatabase | None = None) -> nn.Sequential:
    torch.manual_seed(config.seed)
    if config.hardware_aware:
        sample = database_sampler(db, config.order)
        gen = torch.Generator().manual_seed(config.seed + 1)
        layers = [HardwareAwareLinear(2, config.hidden, sample, gen), nn.Sigmoid(),
                  HardwareAwareLinear(config.hidden, 1, sample, gen)]
    else:
        layers = [nn.Linear(2, config.hidden), nn.Sigmoid(), nn.Linear(config.hidden, 1)]
    return nn.Sequential(*layers)


def train_moons(config: MoonsConfig, x: torch.Tensor, y: torch.Tensor,
                db: DeviceDatabase | None = None) -> tuple[nn.Sequential, list[float]]:
    """Train; returns the network (logit output) and the loss per epoch."""
    net = make_moons_network(config, db)
    gen = torch.Generator().manual_seed(config.seed + 2)
    losses = []
    if config.pretrain_epochs:
        set_hardware(net, False)
        losses += _epochs(net, x, y, config.pretrain_epochs, config.pretrain_lr, 0.0, config.batch_size, gen)
        set_hardware(net, True)
    losses += _epochs(net, x, y, config.epochs, config.lr, config.weight_decay, config.batch_size, gen)
    set_hardware(net, False)
    return net, losses


def _epochs(net: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, weight_decay: float,
            batch: int, gen: torch.Generator) -> list[float]:
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            opt.zero_grad()
            loss = loss_fn(net(x[idx]).squeeze(-1), y[idx].float())
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x))
    return losses


def set_hardware(net: nn.Module, on: bool) -> None:
    for m in net.modules():
        if isinstance(m, HardwareAwareLinear):
            m.hardware = on


def layer_weights(net: nn.Sequential) -> list[torch.Tensor]:
    """Each linear layer's (out, in + 1) weights with the bias last."""
    return [with_bias(m.weight.detach(), m.bias.detach()) for m in net if isinstance(m, nn.Linear)]
