"""Adversarial training (ESRGAN's relativistic average GAN), warm-started from the pixel-loss model.

The generator keeps its pixel losses (``train.loss``) and adds ``train.loss.adversarial`` times the
relativistic average generator loss of Wang et al. 2018 (ESRGAN; Jolicoeur-Martineau 2018): a
discriminator judges whether a real target is more realistic than the average prediction and vice
versa. The discriminator is a small patch discriminator on the normalised, masked target grid, so
crops of any size work. Both networks take an AdamW step per batch (manual optimisation); the
checkpoints hold both and their optimisers, so a killed job resumes as training does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..errors import InputError
from .checkpoint import TrainedModel, save_model
from .data import EpochSampler, PairDataset
from .device import training_device
from .losses import loss_terms
from .train import (HISTORY_FIELDS, Restoration, _prepare_checkpoints, choose_precision, load_start_model,
                    plain_generator, resumable_trainer, weights_sum, write_history)

ADVERSARIAL_HISTORY_FIELDS = (*HISTORY_FIELDS, "train_adversarial", "train_discriminator")


class PatchDiscriminator(nn.Module):
    """Conv blocks (3x3, LeakyReLU 0.2), three of them halving the grid, then one logit per patch."""

    def __init__(self, features: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, features, 3, padding=1), nn.LeakyReLU(0.2)]
        channels = features
        for _ in range(3):
            layers += [nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
                       nn.Conv2d(2 * channels, 2 * channels, 3, padding=1), nn.LeakyReLU(0.2)]
            channels *= 2
        layers.append(nn.Conv2d(channels, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def relativistic_losses(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(generator loss, discriminator loss) of the relativistic average GAN: D(a, b) = sigmoid(C(a) - E[C(b)]);
    the discriminator wants D(real, fake) -> 1 and D(fake, real) -> 0, the generator the opposite."""
    real_rel = real_logits - fake_logits.mean()
    fake_rel = fake_logits - real_logits.mean()
    ones, zeros = torch.ones_like(real_rel), torch.zeros_like(real_rel)
    generator = 0.5 * (F.binary_cross_entropy_with_logits(real_rel, zeros)
                       + F.binary_cross_entropy_with_logits(fake_rel, ones))
    discriminator = 0.5 * (F.binary_cross_entropy_with_logits(real_rel, ones)
                           + F.binary_cross_entropy_with_logits(fake_rel, zeros))
    return generator, discriminator


class AdversarialRestoration(Restoration):
    """:class:`Restoration` plus a discriminator and the relativistic adversarial term."""

    def __init__(self, start: TrainedModel, loss_weights: dict[str, float], adversarial_weight: float, lr: float,
                 weight_decay: float, total_steps: int, min_lr_fraction: float, gradient_clip: float,
                 discriminator_features: int) -> None:
        super().__init__(start.architecture, start.normalisation, loss_weights, lr, weight_decay, 0, total_steps,
                         min_lr_fraction)
        self.generator.load_state_dict(start.generator.state_dict())
        self.discriminator = PatchDiscriminator(discriminator_features)
        self.adversarial_weight, self.gradient_clip = adversarial_weight, gradient_clip
        self.automatic_optimization = False
        self._adv: list[tuple[float, float]] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        g_opt, d_opt = self.optimizers()
        g_sched, d_sched = self.lr_schedulers()
        s = self.arch.upscale
        mask = batch["mask_target"]
        x = self.norm.forward(batch["input"], batch["exposure_input"], 1)
        target = self.norm.forward(batch["target"], batch["exposure_target"], s)
        pred = self.generator(x).float()
        mu = self.norm.inverse(pred, batch["exposure_target"], s)
        terms = loss_terms(self.loss_weights, pred, target, mu, batch["target"], mask)
        real = target * mask
        g_adv, _ = relativistic_losses(self.discriminator(real), self.discriminator(pred * mask))
        total = terms["loss"] + self.adversarial_weight * g_adv
        if not torch.isfinite(total):
            raise FloatingPointError(f"non-finite adversarial training loss at step {self.global_step}; lower "
                                     "train.adversarial.lr or train.loss.adversarial")
        g_opt.zero_grad()
        self.manual_backward(total)
        self.clip_gradients(g_opt, gradient_clip_val=self.gradient_clip or None, gradient_clip_algorithm="norm")
        g_opt.step()
        g_sched.step()

        _, d_loss = relativistic_losses(self.discriminator(real), self.discriminator(pred.detach() * mask))
        d_opt.zero_grad()
        self.manual_backward(d_loss)
        self.clip_gradients(d_opt, gradient_clip_val=self.gradient_clip or None, gradient_clip_algorithm="norm")
        d_opt.step()
        d_sched.step()

        n = batch["input"].shape[0]
        self._train_losses.append(float(total.detach()))
        self._adv.append((float(g_adv.detach()), float(d_loss.detach())))
        self._epoch_samples += n
        self.log("train_loss", total.detach(), prog_bar=True, batch_size=n)
        return total.detach()

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.trainer.sanity_checking or not self.history:
            return
        if self._adv:
            self.history[-1]["train_adversarial"] = sum(a for a, _ in self._adv) / len(self._adv)
            self.history[-1]["train_discriminator"] = sum(d for _, d in self._adv) / len(self._adv)
        self._adv = []

    @property
    def batches_done(self) -> int:
        """Generator steps so far (Lightning counts the steps of both optimisers)."""
        return int(self.global_step) // 2

    def configure_optimizers(self) -> Any:
        optimizers = [torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay, betas=(0.9, 0.99))
                      for net in (self.generator, self.discriminator)]
        return optimizers, [torch.optim.lr_scheduler.LambdaLR(o, self.lr_factor) for o in optimizers]

    def lr_factor(self, step: int) -> float:
        """Cosine decay from the start (the generator is warm)."""
        progress = min(1.0, step / max(1, self.total_steps))
        return self.min_lr_fraction + (1 - self.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class AdversarialRun:
    """Everything one adversarial training job needs."""

    task: str
    start_model: Path
    dataset: Path
    train_cfg: dict[str, Any]   # the validated train section (train.loss, train.adversarial, crops, ...)
    seed: int
    checkpoint_dir: Path


def train_adversarial(run: AdversarialRun, model_path: Path, history_path: Path, threads: int = 0,
                      callbacks: Sequence[pl.Callback] = ()) -> TrainedModel:
    """Continue the pixel-loss model ``run.start_model`` with the adversarial term; write the model file
    and the history CSV (resumes from this run's checkpoints)."""
    cfg, adv = run.train_cfg, run.train_cfg["adversarial"]
    weight = float(cfg["loss"]["adversarial"])
    if weight <= 0:
        raise InputError(None, "train.loss.adversarial", f"is {weight:g}", "give a positive weight, e.g. 0.005")
    if threads > 0:
        torch.set_num_threads(threads)
    start = load_start_model(run.start_model, run.task)
    fingerprint = {"task": run.task, "start": run.start_model.name, "train": cfg, "seed": run.seed,
                   "start_weights": weights_sum(start.generator)}
    resume = _prepare_checkpoints(run, fingerprint)  # type: ignore[arg-type]
    accelerator = training_device(cfg["accelerator"])
    precision = choose_precision(cfg["precision"], accelerator)
    pl.seed_everything(run.seed, workers=True, verbose=False)
    total = adv["epochs"] * cfg["steps_per_epoch"]
    pixel_weights = {k: v for k, v in cfg["loss"].items() if k != "adversarial"}
    module = AdversarialRestoration(start, pixel_weights, weight, adv["lr"], cfg["weight_decay"], total,
                                    cfg["min_lr_fraction"], cfg["gradient_clip"], adv["discriminator_features"])
    train_set = PairDataset.training(run.dataset, run.task, cfg)
    val_set = PairDataset(run.dataset, run.task, "val")
    loader = DataLoader(train_set, batch_size=cfg["batch_size"], drop_last=True,
                        sampler=EpochSampler(len(train_set), cfg["steps_per_epoch"] * cfg["batch_size"], run.seed))
    print(f"adversarial training of {run.task} from {run.start_model.name}: weight {weight:g}, {total} steps, "
          f"discriminator of {sum(p.numel() for p in module.discriminator.parameters()):,} parameters", flush=True)
    trainer = resumable_trainer(run.checkpoint_dir, accelerator, 1, precision, adv["epochs"], cfg["steps_per_epoch"],
                                None, callbacks, False)
    trainer.fit(module, loader, DataLoader(val_set, batch_size=1, shuffle=False), ckpt_path=resume)
    model = TrainedModel(generator=plain_generator(module.generator, start.architecture), architecture=start.architecture, normalisation=start.normalisation,
                         input_exposure_s=start.input_exposure_s, target_exposure_s=start.target_exposure_s,
                         train_config={**start.train_config, "adversarial": {"weight": weight, **adv}},
                         provenance={**start.provenance, "adversarial_from": run.start_model.name,
                                     "adversarial_steps": module.batches_done, "adversarial_seed": run.seed})
    write_history(module.history, history_path, ADVERSARIAL_HISTORY_FIELDS)
    save_model(model_path, model)
    return model
