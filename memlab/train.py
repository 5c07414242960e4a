"""`memlab train CONFIG.yaml`: one training job, written to the run store with its plots.

A job file names the method and its validated configuration:

    method: noise_injection | hardware_aware | in_the_loop
    config: {...}          # NoiseInjectionConfig, MoonsConfig or InLoopConfig fields
    evaluate: {...}        # optional: noise levels, transfers, ...

Shipped jobs live in memlab/jobs/ (`memlab train noise-injection` runs the shipped one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from .config import BenchFileError
from .store import Run, RunStore

JOBS = Path(__file__).parent / "jobs"


class Evaluation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    noise_levels: list[float] = Field([0, 5, 10, 15, 20, 30], description="noise_injection: % levels")
    draws: int = Field(10, ge=1, description="noise_injection: noise draws per level")
    transfers: int = Field(1000, ge=1, description="hardware_aware: simulated transfers")


class TrainJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["noise_injection", "hardware_aware", "in_the_loop"]
    config: dict = {}
    evaluate: Evaluation = Evaluation()
    seed: int = 0


def load_job(path: str | Path) -> TrainJob:
    path = Path(path)
    if not path.suffix and not path.exists():
        path = JOBS / f"{path}.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise BenchFileError(f"{path}: cannot read the job file ({exc})") from exc
    try:
        return TrainJob.model_validate(data)
    except Exception as exc:
        raise BenchFileError(f"{path}: {exc}") from exc


def run_job(job: TrainJob, store: RunStore) -> dict:
    runner = {"noise_injection": _noise_injection, "hardware_aware": _hardware_aware,
              "in_the_loop": _in_the_loop}[job.method]
    with store.start_run(f"train-{job.method.replace('_', '-')}", params=job.model_dump()) as run:
        summary, table = runner(job, run)
        print(table)
        (run.path / "table.txt").write_text(table + "\n")
        summary["run_path"] = str(run.path)
        run.set_summary(summary)
        (run.path / "result.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def _table(title: str, header: tuple[str, ...], rows: list[tuple]) -> str:
    """The final table of a job, as printed and kept in the run folder."""
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    cells = [header] + [tuple(fmt(v) for v in row) for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join([title, *lines])


def _noise_injection(job: TrainJob, run: Run) -> tuple[dict, str]:
    import torch

    from .datasets import load_mnist
    from .training.hardware_aware import database_sampler
    from .training.noise_injection import MAT_MNIST_CONFIG, evaluate, plot_training_curves, train_mlp

    overrides = dict(job.config)
    if overrides.get("noise_model") == "database":
        overrides["database_sampler"] = database_sampler()
    config = MAT_MNIST_CONFIG.replace(**overrides)
    data = load_mnist()
    model, history = train_mlp(config, data, job.seed)
    gen = torch.Generator().manual_seed(job.seed)
    table = {str(level): evaluate(model, data.x_test, data.y_test, level / 100, job.evaluate.draws, gen)
             for level in job.evaluate.noise_levels}
    plot_training_curves({"training": history}, run.path / "training.png")
    text = _table(f"noise injection ({config.noise_model}, level {config.noise_level}): test accuracy, "
                  f"mean of {job.evaluate.draws} noise draws", ("inference noise %", "accuracy %"),
                  [(k, v) for k, v in table.items()])
    return {"accuracy_by_noise_pct": table}, text


def _hardware_aware(job: TrainJob, run: Run) -> tuple[dict, str]:
    import torch

    from simulator.device import load_preset

    from .datasets import half_moons
    from .devicedb import DeviceDatabase
    from .training.hardware_aware import MoonsConfig, layer_weights, train_moons
    from .training.mapping import DifferentialMapping
    from .training.moons import plot_moons, robustness, simulate_transfers
    from .training.transfer import CrossbarNetwork

    config = MoonsConfig.model_validate({"seed": job.seed, **job.config})
    data, db = half_moons(), DeviceDatabase.tio2_measured()
    model, losses = train_moons(config, data.x_train, data.y_train, db)
    net = CrossbarNetwork(layer_weights(model), ["sigmoid", "none"], DifferentialMapping(*db.g_range))
    preset = load_preset("tio2-passive")
    tiles = simulate_transfers(net, job.evaluate.transfers, preset, job.seed)
    correct = (net.forward(data.x_test, tiles, preset).squeeze(-1) > 0) == (data.y_test > 0.5)
    kind = "hardware_aware" if config.hardware_aware else "regular"
    result = {kind: robustness(correct), "transfers": job.evaluate.transfers,
              "point_fraction_correct": {kind: correct.float().mean(0).tolist()}, "losses": {kind: losses}}
    with torch.no_grad():
        sw = float(((model(data.x_test).squeeze(-1) > 0) == (data.y_test > 0.5)).float().mean() * 100)
    plot_moons(result, run.path / "transfers.png")
    text = _table(f"{kind}: % of the {len(data.y_test)} test points classified correctly by at least q % of "
                  f"{job.evaluate.transfers} simulated transfers (software accuracy {sw:.1f} %)",
                  ("q %", "test points %"), [(q, v) for q, v in result[kind].items()])
    return {kind: result[kind], "software_accuracy": sw, "transfers": job.evaluate.transfers}, text


def _in_the_loop(job: TrainJob, run: Run) -> tuple[dict, str]:
    from .datasets import load_mnist
    from .training.in_the_loop import InLoopConfig, plot_connectivity, plot_training_curves, train_in_the_loop

    config = InLoopConfig.model_validate({"seed": job.seed, **job.config})
    model, history = train_in_the_loop(config, load_mnist(), log_every=1)
    for epoch, maps in enumerate(history.removed):       # the pruned map of every epoch
        for layer, removed in enumerate(maps):
            run.save_array(f"removed_epoch{epoch + 1:03d}_layer{layer}", removed)
    plot_connectivity(history, run.path / "connectivity.png")
    plot_training_curves({config.mode: history}, run.path / "training.png")
    text = _table(f"in-the-loop training ({config.mode}): test accuracy and connectivity after each epoch",
                  ("epoch", "test accuracy %", "connectivity %"),
                  [(e + 1, a, 100 * c) for e, (a, c) in enumerate(zip(history.test_accuracy, history.connectivity))])
    return {"final_accuracy": history.final_accuracy, "connectivity": history.connectivity[-1],
            "test_accuracy_per_epoch": history.test_accuracy, "programmed": history.programmed}, text
