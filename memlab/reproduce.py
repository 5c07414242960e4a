"""`memlab reproduce NAME`: the published results memlab reproduces, each printed beside the
published table, stored as a run (summary, JSON, plots) in the run store."""

from __future__ import annotations

import inspect
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .store import RunStore


@dataclass(frozen=True)
class Reproduction:
    run: Callable[..., dict]
    show: Callable[..., None]
    plot: Callable[[dict, Path], object] | None
    quick: dict                   # arguments for a fast smoke run (tests, --quick)
    about: str


def _moons():
    from .training.moons import plot_moons, print_moons, reproduce_moons
    # quick: one training seed, 1,000 transfers per network; the simulated transfers cost about
    # the same from 200 to 1,000 (a fixed number of lockstep write-verify steps), and at 1,000
    # the quick run is also the default suite's headline check (tests/test_reproductions.py)
    return Reproduction(reproduce_moons, print_moons, plot_moons, {"transfers": 1000, "seeds": 1},
                        "half-moons: hardware-aware vs regular training, 10,000 simulated transfers, 5 seeds")


def _mat_mnist():
    from .training.noise_injection import plot_accuracy_vs_noise, print_mat_mnist, reproduce_mat_mnist
    return Reproduction(reproduce_mat_mnist, print_mat_mnist, plot_accuracy_vs_noise,
                        {"seeds": 1, "epochs": 1, "train_images": 2000, "draws": 5},
                        "MNIST 784-128-10: noise-injection training against regular training")


def _fault_pruning():
    from .training.in_the_loop import print_fault_pruning, reproduce_fault_pruning
    return Reproduction(reproduce_fault_pruning, print_fault_pruning, None, {"seeds": 1, "epochs": 1},
                        "MNIST in-the-loop training with fault pruning, 30 % stuck + 30 % discordant")


def _bench_loop():
    from .training.bench_loop import print_bench_loop, reproduce_bench_loop
    return Reproduction(reproduce_bench_loop, print_bench_loop, None, {"epochs": 1, "n_train": 32, "n_test": 40},
                        "the instrument path: in-the-loop and ex-situ on the emulated bench")


REPRODUCTIONS: dict[str, Callable[[], Reproduction]] = {
    "moons": _moons, "mat-mnist": _mat_mnist, "fault-pruning": _fault_pruning, "bench-loop": _bench_loop}


def _takes_seeds(name: str) -> bool:
    return "seeds" in inspect.signature(REPRODUCTIONS[name]().run).parameters


def run_reproduction(name: str, store: RunStore, *, quick: bool = False, json_path: Path | None = None,
                     seeds: int | None = None, **overrides) -> dict:
    """Run one reproduction into a new run of `store`. `seeds` (`--seeds N`): the number of
    training seeds, for the reproductions that take one (moons, mat-mnist, fault-pruning);
    it wins over the quick version's."""
    if name not in REPRODUCTIONS:
        raise ValueError(f"unknown reproduction {name!r} (known: {', '.join(REPRODUCTIONS)})")
    rep = REPRODUCTIONS[name]()
    accepts = inspect.signature(rep.run).parameters
    if seeds is not None:
        if "seeds" not in accepts:
            raise ValueError(f"reproduction {name!r} has no training seeds (--seeds is for "
                             f"{', '.join(n for n in REPRODUCTIONS if n != name and _takes_seeds(n))})")
        if seeds < 1:
            raise ValueError(f"--seeds must be at least 1, not {seeds}")
        overrides = {**overrides, "seeds": seeds}
    kwargs = {**(rep.quick if quick else {}), **overrides}
    with store.start_run(f"reproduce-{name}", params={"name": name, "quick": quick, **kwargs}) as run:
        if "run" in accepts:          # operations go into this run
            kwargs["run"] = run
        if "out_dir" in accepts:      # plots go into its folder
            kwargs.setdefault("out_dir", run.path)
        result = rep.run(**kwargs)
        text = io.StringIO()
        rep.show(result, out=text)
        print(text.getvalue(), end="")
        (run.path / "table.txt").write_text(text.getvalue())
        (run.path / "result.json").write_text(json.dumps(result, indent=1, default=str))
        if rep.plot is not None:
            rep.plot(result, run.path / f"{name}.png")
        run.set_summary({k: v for k, v in result.items() if not isinstance(v, (list, dict)) or k in (
            "hardware_aware", "regular", "noise_injection", "fault_free", "pruning", "freezing", "unpruned")})
        print(f"run data: {run.path}")
    if json_path:
        json_path.write_text(json.dumps(result, indent=1, default=str))
    return result
