"""Kiln's regressor against scikit-learn's linear baselines on the same train/test splits.

For each data set and seed, the split is the one `kiln train --seed SEED` uses (the seed
drives the split, the initialisation and the shuffling). Kiln trains with the regression
defaults (`TrainConfig.for_task("regression")`; the validation split only decides when to
stop). LinearRegression and Ridge (alpha picked by RidgeCV's leave-one-out on the training
split, features standardised on it) are fitted on the same training split. Every model is
scored on the test split by scikit-learn's metrics, so Kiln's own numbers are checked too.

    python benchmarks/regression.py [--datasets diabetes,autompg] [--seeds 0,1,2,3,4]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.linear_model import LinearRegression, RidgeCV
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from kiln.data import Dataset, load_dataset
from kiln.settings import Settings
from kiln.train import REGRESSION_DEFAULTS, TrainConfig, load_checkpoint, predict_logits, train


@dataclass(frozen=True)
class Score:
    dataset: str
    model: str
    seed: int
    mae: float
    rmse: float
    r2: float
    seconds: float


def score(ds: Dataset, model: str, seed: int, predicted: np.ndarray, seconds: float) -> Score:
    truth = ds.test.y.astype(np.float64)
    pred = np.asarray(predicted, dtype=np.float64).reshape(-1)
    return Score(
        ds.name,
        model,
        seed,
        float(mean_absolute_error(truth, pred)),
        float(np.sqrt(mean_squared_error(truth, pred))),
        float(r2_score(truth, pred)),
        seconds,
    )


def kiln_regressor(ds: Dataset, seed: int, home: Path, overrides: dict[str, Any]) -> Score:
    config = TrainConfig.for_task("regression", dataset=ds.name, seed=seed, **overrides)
    start = time.perf_counter()
    result = train(config, Settings(home=home), dataset=ds, show_progress=False)
    seconds = time.perf_counter() - start
    # Score the saved checkpoint, rebuilt from its file: what a version would serve.
    predicted = predict_logits(load_checkpoint(result.checkpoint).model, ds.test.x)
    got = score(ds, "kiln mlp", seed, predicted, seconds)
    recorded = result.metrics["test_r2"]
    if abs(recorded - got.r2) > 1e-4:
        raise SystemExit(f"kiln recorded test R^2 {recorded} but scikit-learn computes {got.r2}")
    return got


def linear(make: Callable[[], Any], label: str) -> Callable[[Dataset, int], Score]:
    def fit(ds: Dataset, seed: int) -> Score:
        x_train = ds.train.x.astype(np.float64)
        start = time.perf_counter()
        model = make().fit(x_train, ds.train.y.astype(np.float64))
        predicted = model.predict(ds.test.x.astype(np.float64))
        return score(ds, label, seed, predicted, time.perf_counter() - start)

    return fit


BASELINES = (
    linear(LinearRegression, "scikit-learn LinearRegression"),
    linear(
        lambda: make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13))),
        "scikit-learn Ridge (RidgeCV)",
    ),
)


def summarise(scores: list[Score]) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str], list[Score]] = {}
    for s in scores:
        rows.setdefault((s.dataset, s.model), []).append(s)
    out = []
    for (dataset, model), group in rows.items():
        entry: dict[str, Any] = {"dataset": dataset, "model": model, "runs": len(group)}
        for field in ("mae", "rmse", "r2", "seconds"):
            values = [getattr(s, field) for s in group]
            entry[field] = statistics.mean(values)
            entry[f"{field}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(entry)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="diabetes,autompg")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated split seeds")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override a regression default for Kiln, e.g. --set epochs=100 "
        f"(defaults: {json.dumps(REGRESSION_DEFAULTS)})",
    )
    parser.add_argument("--json", action="store_true", help="print the per-run scores as JSON")
    args = parser.parse_args()
    overrides = {k: json.loads(v) for k, _, v in (s.partition("=") for s in args.set)}
    seeds = [int(s) for s in args.seeds.split(",")]
    scores: list[Score] = []
    with tempfile.TemporaryDirectory(prefix="kiln-bench-regression-") as tmp:
        for name in args.datasets.split(","):
            for seed in seeds:
                ds = load_dataset(name, Settings(home=Path(tmp)), seed=seed)
                scores.append(kiln_regressor(ds, seed, Path(tmp), overrides))
                scores.extend(fit(ds, seed) for fit in BASELINES)
    if args.json:
        print(json.dumps([s.__dict__ for s in scores], indent=2))
        return
    table = Table(
        title=f"test split, mean ± sd over seeds {args.seeds} "
        f"({platform.machine()}, {datetime.now(UTC):%Y-%m-%d})"
    )
    for col in ("data set", "model", "test MAE", "test RMSE", "test R^2", "seconds"):
        table.add_column(col, justify="left" if col in ("data set", "model") else "right")
    for row in summarise(scores):
        table.add_row(
            row["dataset"],
            row["model"],
            f"{row['mae']:.3f} ± {row['mae_sd']:.3f}",
            f"{row['rmse']:.3f} ± {row['rmse_sd']:.3f}",
            f"{row['r2']:.3f} ± {row['r2_sd']:.3f}",
            f"{row['seconds']:.2f}",
        )
    Console(width=max(Console().width, 110)).print(table)
    if overrides:
        Console().print(f"kiln overrides: {overrides}")


if __name__ == "__main__":
    main()
