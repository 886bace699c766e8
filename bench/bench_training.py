"""Training throughput and inference time of the DN and SR generators (a benchmark, not a test).

Prints optimizer steps per second, samples/s and input pixels/s for the embedded default model
(``config.yaml``) and the reference size (``config/paper.yaml``), at the configured crop and batch
size, and the inference time per full 416 x 416 frame. Uses Poisson-noise batches (the cost does
not depend on the pixel values).
Run: python bench/bench_training.py [--device cpu|cuda|mps] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from xmmsr.config import default_config, load_config
from xmmsr.learn.checkpoint import TrainedModel
from xmmsr.learn.model import Architecture, count_parameters
from xmmsr.learn.normalise import Normalisation
from xmmsr.learn.predict import predict_counts
from xmmsr.learn.train import Restoration

REPO = Path(__file__).resolve().parents[1]


def batch(task: str, size: int, crop: int, device: torch.device) -> dict[str, torch.Tensor]:
    s = 2 if task == "sr" else 1
    rng = torch.Generator().manual_seed(0)
    return {"input": torch.poisson(torch.full((size, 1, crop, crop), 0.3), rng).to(device),
            "target": torch.poisson(torch.full((size, 1, s * crop, s * crop), 0.4), rng).to(device),
            "mask_target": torch.ones(size, 1, s * crop, s * crop, device=device),
            "exposure_input": torch.full((size,), 2e4, device=device),
            "exposure_target": torch.full((size,), 1e5, device=device)}


def bench_training(name: str, cfg: dict, task: str, device: torch.device, steps: int) -> None:
    arch = Architecture.from_config(task, cfg["model"])
    train = cfg["train"]
    crop = train["crop"] or 416
    module = Restoration(arch, Normalisation(**train["normalisation"]), dict(train["loss"]), 1e-4, 0.0, 0, 100, 1.0)
    module.to(device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    data = batch(task, train["batch_size"], crop, device)

    def step() -> None:
        loss = module._step(data)[0]["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - tic) / steps
    n = train["batch_size"]
    print(f"{name:8s} {task}: {count_parameters(module.generator):>8,} params, batch {n} x {crop}^2: "
          f"{1 / dt:6.2f} steps/s, {n / dt:7.1f} samples/s, {n * crop * crop / dt / 1e6:6.2f} M input px/s")


def bench_inference(name: str, cfg: dict, task: str, device: torch.device, repeats: int = 3) -> None:
    arch = Architecture.from_config(task, cfg["model"])
    from xmmsr.learn.model import build_generator

    model = TrainedModel(build_generator(arch).eval().to(device), arch, Normalisation(), 2e4, 1e5)
    frame = np.random.default_rng(0).poisson(0.3, (416, 416)).astype(np.float32)
    predict_counts(model, frame, 2e4)
    tic = time.perf_counter()
    for _ in range(repeats):
        predict_counts(model, frame, 2e4)
    print(f"{name:8s} {task}: inference {1e3 * (time.perf_counter() - tic) / repeats:7.1f} ms per 416^2 frame")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"{platform.machine()}, torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads")
    configs = {"default": default_config(), "paper": load_config(REPO / "config" / "paper.yaml")}
    for name, cfg in configs.items():
        for task in ("dn", "sr"):
            bench_training(name, cfg, task, device, args.steps)
    for name, cfg in configs.items():
        for task in ("dn", "sr"):
            bench_inference(name, cfg, task, device)


if __name__ == "__main__":
    main()
