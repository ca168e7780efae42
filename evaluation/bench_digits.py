"""`fastslow bench permuted-digits`: the seed's Permuted-MNIST table on scikit-learn's 8x8 digits.

Import-light on purpose (torch, faiss and scikit-learn load inside the command); the benchmark
itself is `evaluation.digits`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def plot_digits(result: dict, path: Path) -> None:
    """ACC and BWT per method (mean and spread over seeds, the seed's ACC as a mark) and task 0's accuracy
    after each task, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = result["methods"]
    names = list(methods)
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, title in ((axes[0], "acc", "average accuracy after the last task"), (axes[1], "bwt", "BWT")):
        ax.bar(x, [methods[n][f"{key}_mean"] for n in names], 0.6,
               yerr=[methods[n][f"{key}_std"] for n in names], capsize=4)
        if key == "acc":
            seeded = [(i, methods[n]["seed_table_acc"]) for i, n in enumerate(names) if methods[n]["seed_table_acc"]]
            ax.plot([i for i, _ in seeded], [v for _, v in seeded], "r_", markersize=24, markeredgewidth=2,
                    label="seed's table (MNIST)")
            ax.legend(loc="lower right")
        ax.axhline(0.0, color="black", linewidth=0.5)
        ax.set_xticks(x, names)
        ax.set_title(title)
    for n in names:
        curves = np.array([[row[0] for row in run["matrix"]] for run in methods[n]["runs"]])
        axes[2].plot(np.arange(curves.shape[1]), curves.mean(axis=0), marker="o", label=n)
    axes[2].set_xlabel("after task j")
    axes[2].set_ylabel("accuracy on task 0")
    axes[2].set_title("task 0 over time (mean of seeds)")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"permuted digits, {result['config']['tasks']} tasks, seeds {result['seeds']}")
    for column in ("method", "ACC", "BWT", "seed's ACC (MNIST)"):
        table.add_column(column)
    for name, s in result["methods"].items():
        table.add_row(name, f"{s['acc_mean']:.3f} ± {s['acc_std']:.3f}", f"{s['bwt_mean']:+.3f} ± {s['bwt_std']:.3f}",
                      f"{s['seed_table_acc']:.3f}" if s["seed_table_acc"] else "-")
    Console(stderr=True).print(table)


def bench_permuted_digits(
    tasks: Annotated[int, typer.Option(min=2, help="Permutations learned one after the other.")] = 5,
    method: Annotated[Optional[list[str]], typer.Option("--method", "-m", help="finetune, ewc, replay, fast-slow "
                                                                               "(repeat; default all).")] = None,
    seed: Annotated[Optional[list[int]], typer.Option("--seed", help="Seeds (repeat; default 0 1 2).")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over each task's training data.")] = 10,
    ewc_lambda: Annotated[float, typer.Option(min=0.0, help="EWC strength (lambda / 2 convention).")] = 1000.0,
    hidden: Annotated[int, typer.Option(min=1, help="Units in each of the MLP's two hidden layers.")] = 400,
    memory: Annotated[int, typer.Option(min=1, help="fast-slow: examples the episodic memory holds.")] = 1000,
    plot: Annotated[Optional[Path], typer.Option(help="Draw ACC/BWT bars and task 0's accuracy to this PNG.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print only the JSON line (no table on stderr).")] = False,
    threads: Annotated[int, typer.Option(min=1, help="torch threads.")] = 1,
) -> None:
    """Permuted 8x8 digits: ACC and BWT of finetune, EWC, replay and fast-slow; JSON on the last line."""
    import torch

    from evaluation.digits import METHODS, DigitsConfig, permuted_digits
    from fastslow.errors import ConfigError

    torch.set_num_threads(threads)
    try:
        config = DigitsConfig(tasks=tasks, epochs=epochs, ewc_lambda=ewc_lambda, hidden=hidden, memory=memory)
        result = permuted_digits(method or METHODS, seed or (0, 1, 2), config)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    if plot is not None:
        plot_digits(result, plot)
    if not as_json:
        _print_table(result)
    typer.echo(json.dumps(result))
