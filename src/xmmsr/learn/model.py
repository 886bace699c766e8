"""The RRDB generator of ESRGAN (Wang et al. 2018) with a de-noising or a 2x super-resolution head.

Reference size (Sweere et al. 2022): 16 features, growth 16, 3 RRDBs of 3 dense blocks of 5 convolutions,
residual scaling 0.2: 325,985 parameters with the SR head.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from . import TASKS, UPSCALE


@dataclass(frozen=True)
class Architecture:
    """Hyperparameters of the generator; stored in every checkpoint."""

    task: str
    features: int = 16
    growth: int = 16
    blocks: int = 3
    dense_blocks: int = 3
    residual_scale: float = 0.2
    in_channels: int = 1

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {TASKS}")

    @property
    def upscale(self) -> int:
        return UPSCALE[self.task]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_config(cls, task: str, model_cfg: dict[str, Any]) -> Architecture:
        return cls(task=task, **{k: model_cfg[k] for k in ("features", "growth", "blocks", "dense_blocks",
                                                            "residual_scale")})


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)


class DenseBlock(nn.Module):
    """Five densely connected 3x3 convolutions with a scaled residual."""

    def __init__(self, features: int, growth: int, residual_scale: float) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_conv(features + i * growth, growth) for i in range(4))
        self.fuse = _conv(features + 4 * growth, features)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        self.residual_scale = residual_scale
        for conv in [*self.convs, self.fuse]:  # ESRGAN initialisation: Kaiming scaled by 0.1
            nn.init.kaiming_normal_(conv.weight, a=0.0, mode="fan_in")
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in self.convs:
            feats.append(self.act(conv(torch.cat(feats, dim=1))))
        return x + self.residual_scale * self.fuse(torch.cat(feats, dim=1))


class RRDB(nn.Module):
    """Residual-in-residual dense block: dense blocks in sequence with a scaled outer residual."""

    def __init__(self, features: int, growth: int, dense_blocks: int, residual_scale: float) -> None:
        super().__init__()
        self.body = nn.Sequential(*(DenseBlock(features, growth, residual_scale) for _ in range(dense_blocks)))
        self.residual_scale = residual_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual_scale * self.body(x)


class Generator(nn.Module):
    """RRDB trunk; DN head adds the input back, SR head upsamples x2 by PixelShuffle."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        f = arch.features
        self.arch = arch
        self.head = _conv(arch.in_channels, f)
        self.trunk = nn.Sequential(*(RRDB(f, arch.growth, arch.dense_blocks, arch.residual_scale)
                                     for _ in range(arch.blocks)))
        self.trunk_conv = _conv(f, f)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        self.upsample = nn.Sequential(_conv(f, 4 * f), nn.PixelShuffle(2), nn.LeakyReLU(0.2, inplace=True)) \
            if arch.upscale == 2 else nn.Identity()
        self.hr_conv = _conv(f, f)
        self.out_conv = _conv(f, arch.in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.head(x)
        feat = feat + self.trunk_conv(self.trunk(feat))
        out = self.out_conv(self.act(self.hr_conv(self.upsample(feat))))
        return out + x if self.arch.upscale == 1 else out


def build_generator(arch: Architecture) -> Generator:
    """A freshly initialised generator (call ``torch.manual_seed`` first for reproducible weights)."""
    return Generator(arch)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
