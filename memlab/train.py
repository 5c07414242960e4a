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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .config import BenchFileError, describe
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
    preset: str = Field("tio2-passive", description="hardware_aware: the device preset the transfers are simulated on")
    database: Path | None = Field(None, description="device database file (DeviceDatabase.save, `memlab sim calibrate "
                                                     "--database-out`); default: the shipped TiO2 measurements")

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, name: str) -> str:
        from simulator.device import load_preset

        load_preset(name)          # an unknown name fails here, before any training
        return name

    @field_validator("database")
    @classmethod
    def _readable_database(cls, path: Path | None) -> Path | None:
        if path is not None:
            from .devicedb import DeviceDatabase

            if not path.is_file():
                raise ValueError(f"no device database file {str(path)!r}")
            DeviceDatabase.load(path)   # a malformed file fails here, before any training
        return path

    def device_database(self):
        from .devicedb import DeviceDatabase

        return DeviceDatabase.tio2_measured() if self.database is None else DeviceDatabase.load(self.database)

    @model_validator(mode="after")
    def _valid_config(self) -> "TrainJob":
        try:
            self.method_config()   # a bad field fails here, before any training
        except ValidationError as exc:
            raise ValueError("; ".join(f"config.{problem}" for problem in describe(exc).split("; "))) from None
        return self

    def method_config(self):
        """`config` validated as the method's configuration (NoiseInjectionConfig, MoonsConfig
        or InLoopConfig), with the job's seed where the method takes one."""
        if self.method == "noise_injection":
            from .training.hardware_aware import database_sampler
            from .training.noise_injection import MAT_MNIST_CONFIG

            overrides = dict(self.config)
            if overrides.get("noise_model") == "database":
                overrides["database_sampler"] = database_sampler(self.device_database())
            return MAT_MNIST_CONFIG.replace(**overrides)
        if self.method == "hardware_aware":
            from .training.hardware_aware import MoonsConfig

            return MoonsConfig.model_validate({"seed": self.seed, **self.config})
        from .training.in_the_loop import InLoopConfig

        return InLoopConfig.model_validate({"seed": self.seed, **self.config})


def load_job(path: str | Path) -> TrainJob:
    path = Path(path)
    if not path.suffix and not path.exists():
        path = JOBS / f"{path}.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise BenchFileError(f"{path}: cannot read the job file ({exc})") from exc
    if isinstance(data, dict) and data.get("database"):   # relative to the job file
        data = {**data, "database": str(path.parent / Path(data["database"]).expanduser())}
    try:
        return TrainJob.model_validate(data)
    except ValidationError as exc:
        raise BenchFileError(f"{path}: {describe(exc)}") from exc


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
    from .training.noise_injection import evaluate, plot_training_curves, train_mlp

    config = job.method_config()
    data = load_mnist()
    model, history = train_mlp(config, data, job.seed)
    gen = torch.Generator().manual_seed(job.seed)
    # inference noise of the kind trained with (for `database`, any level above 0 is one database draw)
    table = {str(level): evaluate(model, data.x_test, data.y_test, level / 100, job.evaluate.draws, gen,
                                  config.noise_model, config.database_sampler)
             for level in job.evaluate.noise_levels}
    plot_training_curves({"training": history}, run.path / "training.png")
    text = _table(f"noise injection ({config.noise_model}, level {config.noise_level}): test accuracy, "
                  f"mean of {job.evaluate.draws} noise draws", ("inference noise %", "accuracy %"),
                  [(k, v) for k, v in table.items()])
    return {"accuracy_by_noise_pct": table}, text


def _hardware_aware(job: TrainJob, run: Run) -> tuple[dict, str]:
    from simulator.device import load_preset

    from .datasets import half_moons
    from .training.hardware_aware import train_moons
    from .training.moons import plot_moons, robustness, transfer_accuracy

    config = job.method_config()
    data, db = half_moons(), job.device_database()
    model, losses = train_moons(config, data.x_train, data.y_train, db)
    measured = transfer_accuracy(model, data, db, job.evaluate.transfers, load_preset(job.preset), job.seed)
    correct, sw = measured["correct"], measured["software_accuracy"]
    kind = "hardware_aware" if config.hardware_aware else "regular"
    result = {kind: robustness(correct), "transfers": job.evaluate.transfers,
              "point_fraction_correct": {kind: correct.float().mean(0).tolist()}, "losses": {kind: losses}}
    plot_moons(result, run.path / "transfers.png")
    text = _table(f"{kind}: % of the {len(data.y_test)} test points classified correctly by at least q % of "
                  f"{job.evaluate.transfers} simulated transfers (software accuracy {sw:.1f} %)",
                  ("q %", "test points %"), [(q, v) for q, v in result[kind].items()])
    return {kind: result[kind], "software_accuracy": sw, "transfers": job.evaluate.transfers}, text


def _in_the_loop(job: TrainJob, run: Run) -> tuple[dict, str]:
    from .datasets import load_mnist
    from .training.in_the_loop import plot_connectivity, plot_training_curves, train_in_the_loop

    config = job.method_config()
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
