"""Trials per hour of whole studies on this machine, at several concurrencies.

Each row runs the default study (``studies/digits-quick.yaml``) as a fresh study through the
real CLI (local Ray, Optuna storage, MLflow SQLite store) with ``--num-samples`` trials and
reports trials per hour over the command's wall time, fixed costs (Ray start, MLflow store
creation) included, plus the time per trial. CPU rows: 1 and 2 concurrent trials at 1 CPU each,
and the most this machine holds at once, at 0.5 CPU each. GPU rows (only where torch sees a CUDA
device): SimpleCNN trials at ``resources.gpu`` 1, 0.5 and 0.25, i.e. 1, 2 and 4 per GPU.

    .venv/bin/python benchmarks/study_throughput.py [--num-samples 8] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STUDY = ROOT / "studies" / "digits-quick.yaml"


@dataclass(frozen=True)
class Row:
    label: str
    max_concurrent: int
    cpu: float
    gpu: float = 0.0
    model: dict | None = None  # None: the default study's model


def cpu_rows() -> list[Row]:
    cores = os.cpu_count() or 1
    return [
        Row("1 at a time, 1 CPU each", 1, 1.0),
        Row("2 at a time, 1 CPU each", 2, 1.0),
        Row(f"{2 * cores} at a time, 0.5 CPU each (the most that fit)", 2 * cores, 0.5),
    ]


def gpu_rows() -> list[Row]:
    cnn = {"name": "simple_cnn", "padding": "same"}
    return [Row(f"gpu {g:g} per trial ({round(1 / g)} per GPU)", round(1 / g), 1.0, g, cnn) for g in (1.0, 0.5, 0.25)]


def run_row(row: Row, num_samples: int, work: Path, name: str) -> float:
    """Seconds of wall time for one fresh study ``name`` of ``num_samples`` trials."""
    spec = yaml.safe_load(DEFAULT_STUDY.read_text())
    spec["name"] = name
    spec["search"]["max_concurrent"] = row.max_concurrent
    spec["resources"] = {"cpu": row.cpu, "gpu": row.gpu}
    if row.model is not None:
        spec["model"] = row.model
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    command = [
        sys.executable, "-m", "study", "run", str(path), "--num-samples", str(num_samples),
        "--storage", str(work), "--tracking-uri", f"sqlite:///{work / name}.db",
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=work, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{row.label}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--out", type=Path, help="keep the studies here (default: a temporary folder)")
    args = parser.parse_args()
    rows = cpu_rows()
    if torch.cuda.is_available():
        rows += gpu_rows()
    else:
        print("no CUDA device: the GPU rows (SimpleCNN at gpu 1, 0.5, 0.25) are skipped", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"{'setting':<48} {'trials':>6} {'wall s':>8} {'s/trial':>8} {'trials/h':>9}")
        for index, row in enumerate(rows):
            wall = run_row(row, args.num_samples, work, f"throughput-{index}")
            per_hour = args.num_samples / wall * 3600
            print(
                f"{row.label:<48} {args.num_samples:>6} {wall:>8.1f} {wall / args.num_samples:>8.1f} {per_hour:>9.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
