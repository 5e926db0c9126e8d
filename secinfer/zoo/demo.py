"""`python -m secinfer.zoo.demo`: the bundled digits models, plain and HE-friendly, in plaintext.

Shows what the demo model is and how close its HE-friendly twin (polynomial GELU,
power-softmax, polynomial LayerNorm) stays to it on the test split. `make demo` runs the
secure two-party demo instead (examples/two_party/run_demo.py).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from secinfer.zoo.digits import accuracy, load_model, load_split, predict

DATA = Path(__file__).resolve().parents[1] / "data"
PLAIN = DATA / "digits.safetensors"
HE_FRIENDLY = DATA / "digits_he.safetensors"


def main() -> int:
    """Evaluate both bundled models on the fixed test split and print the comparison."""
    torch.set_num_threads(2)
    start = time.perf_counter()
    _, _, test_x, test_y = load_split(seed=0)
    plain = load_model(PLAIN)
    friendly = load_model(HE_FRIENDLY)
    acc_plain = accuracy(plain, test_x, test_y)
    acc_friendly = accuracy(friendly, test_x, test_y)
    agree = (predict(plain, test_x).argmax(-1) == predict(friendly, test_x).argmax(-1)).float()
    print(f"bundled digits transformer ({sum(p.numel() for p in plain.parameters())} parameters)")
    print(f"  test images:                  {len(test_y)}")
    print(f"  plain model accuracy:         {acc_plain:.4f}  ({PLAIN.name})")
    print(f"  HE-friendly model accuracy:   {acc_friendly:.4f}  ({HE_FRIENDLY.name})")
    print(f"  predictions that agree:       {agree.mean().item():.4f}")
    print(f"  ({time.perf_counter() - start:.1f} s, plaintext)")
    print("(plaintext only; `make demo` runs the secure two-party demo)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
