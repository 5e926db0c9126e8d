"""How the next token is picked: greedy, or sampled with a temperature and top-k, by the
Gumbel-max rule, so that every backend picks with an argmax.

Sampling from softmax(l / T) over the vocabulary is the argmax of l / T + g, with g_i
independent standard Gumbel variables g_i = -log(-log u_i), u_i uniform on (0, 1); the
same argmax as that of l + T g. The data owner draws T g itself (`Sampling.noise`), so:

  plain, approx   argmax(l + T g) in this process;
  he              the client decrypts l (it does for greedy too) and picks locally;
  mpc             the data owner secret-shares T g (a sharing from its side costs no
                  traffic: the other share is a pseudo-random zero share), the parties add
                  it to the shared logits and run the same argmax tournament as greedy.
                  The model owner learns nothing new: it cannot tell the noise from
                  zeros, nor T, nor whether sampling is on (greedy shares zeros the same
                  way); the data owner learns the token only, as in greedy decoding.

Top-k restricts the argmax to the k largest logits. The client under `he` sees the
logits, so it applies it locally; under `mpc` the k-th largest logit would have to be
found on shares (k tournaments over the vocabulary: k times the argmax's cost, 23 MB per
tournament at GPT-2's vocabulary), so `mpc` refuses top-k.

The noise is a function of (seed, step) alone (`noise`), so a secure run and its
plaintext reference draw the same noise and pick the same tokens unless two perturbed
logits tie within the backend's error.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from secinfer.errors import UserError

TINY = 1e-12
"""u is clamped to [TINY, 1 - TINY]: g stays within [-3.3, 27.6], inside every backend's
fixed-point and CKKS ranges."""


@dataclass(frozen=True)
class Sampling:
    """Greedy (temperature 0), or sampling at `temperature` from the `top_k` largest logits
    (None: all), with Gumbel noise drawn from `seed`."""

    temperature: float = 0.0
    top_k: int | None = None
    seed: int = 0

    @classmethod
    def from_options(
        cls, temperature: float | None, top_k: int | None, seed: int | None
    ) -> Sampling:
        """The user's options, checked (UserError naming the option and the fix); a fresh
        random seed when sampling without --seed (the report records it)."""
        temperature = 0.0 if temperature is None else float(temperature)
        if not math.isfinite(temperature) or temperature < 0:
            raise UserError(f"--temperature {temperature}: give a number >= 0 (0: greedy)")
        if top_k is not None and top_k < 1:
            raise UserError(f"--top-k {top_k}: give at least 1")
        if top_k is not None and temperature == 0:
            raise UserError(f"--top-k {top_k} samples: give --temperature T > 0 too")
        if seed is not None and seed < 0:
            raise UserError(f"--seed {seed}: give a non-negative integer")
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little") if temperature > 0 else 0
        return cls(temperature, top_k, seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def noise(self, step: int, vocab: int) -> torch.Tensor:
        """T g for step `step` (0-based) over `vocab` logits, float64; zeros when greedy."""
        if self.greedy:
            return torch.zeros(vocab, dtype=torch.float64)
        generator = torch.Generator().manual_seed(self.seed * 65_537 + step)
        u = torch.rand(vocab, generator=generator, dtype=torch.float64).clamp(TINY, 1 - TINY)
        return self.temperature * -torch.log(-torch.log(u))

    def pick(self, logits: torch.Tensor, step: int) -> int:
        """The token for step `step`: argmax of the logits plus `noise`, over the top k (the
        first largest on ties, as torch.argmax)."""
        values = logits.reshape(-1).double()
        scores = values + self.noise(step, values.numel())
        if self.top_k is not None and self.top_k < values.numel():
            kept = torch.topk(values, self.top_k).indices
            masked = torch.full_like(scores, -math.inf)
            masked[kept] = scores[kept]
            scores = masked
        return int(torch.argmax(scores))

    def to_dict(self) -> dict[str, object]:
        if self.greedy:
            return {"method": "greedy"}
        return {
            "method": "sample",
            "temperature": self.temperature,
            "top_k": self.top_k,
            "seed": self.seed,
            "rule": "argmax(logits + T g), g standard Gumbel drawn by the data owner",
        }

    def arguments(self) -> list[str]:
        """The command-line options that give this sampling to a party process."""
        if self.greedy:
            return []
        found = ["--temperature", repr(self.temperature), "--seed", str(self.seed)]
        return found + (["--top-k", str(self.top_k)] if self.top_k is not None else [])


GREEDY = Sampling()

__all__ = ["GREEDY", "Sampling"]
