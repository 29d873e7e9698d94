"""The sampler's settings (``train.*`` in a config), checked before any data is read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hbt.errors import InputError


@dataclass(frozen=True)
class SamplerConfig:
    batch_size: int  # the contrastive batch: per-rank batch x world size
    alpha: float = 0.5
    mix: Literal["exact", "bernoulli"] = "exact"
    language_policy: Literal["proportional", "uniform", "temperature"] = "proportional"
    language_temperature: float = 1.0
    remainder: Literal["drop", "carry"] = "drop"
    seed: int = 0
    same_source: bool = False  # every contrastive batch from one source of a mixture

    def validate(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InputError("train.batch_size", f"must be a positive integer, got {self.batch_size!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise InputError("train.alpha", f"must be in [0, 1], got {self.alpha}")
        if self.mix not in ("exact", "bernoulli"):
            raise InputError("train.mix", f"must be 'exact' or 'bernoulli', got {self.mix!r}")
        if self.language_policy not in ("proportional", "uniform", "temperature"):
            raise InputError("train.language_policy", f"must be proportional, uniform or temperature, got {self.language_policy!r}")
        if not self.language_temperature > 0:
            raise InputError("train.language_temperature", f"must be > 0, got {self.language_temperature}")
        if self.remainder not in ("drop", "carry"):
            raise InputError("train.remainder", f"must be 'drop' or 'carry', got {self.remainder!r}")
