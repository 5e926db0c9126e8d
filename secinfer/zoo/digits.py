"""A small transformer classifier for scikit-learn's bundled digits set (8x8 images, 10 classes).

It is the demo model of secinfer: small enough to train in seconds on a laptop CPU and to run
under MPC/HE, and written with explicit attention so that `approximations.convert` can swap
its GELU, softmax and LayerNorm modules for MPC/HE-friendly ones.

Files are safe to load: weights are safetensors, the architecture and the conversion (if any)
are JSON in the safetensors metadata; nothing is ever unpickled. A human-readable sidecar
`.json` repeats that record together with training facts (accuracy, epochs, seed, time).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

FORMAT_NAME = "secinfer.zoo.digits"
FORMAT_VERSION = 1
IMAGE_SIDE = 8
NUM_CLASSES = 10
PIXEL_MAX = 16.0


class ModelFileError(ValueError):
    """A model file that secinfer refuses to load (wrong format, missing metadata)."""


@dataclass(frozen=True)
class DigitsConfig:
    """Architecture of `DigitsTransformer`; JSON-serialisable (only ints, floats and bools)."""

    patch: int = 2
    d_model: int = 32
    n_heads: int = 2
    n_layers: int = 2
    d_mlp: int = 64
    num_classes: int = NUM_CLASSES
    image_side: int = IMAGE_SIDE
    ln_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.image_side % self.patch:
            raise ValueError(f"patch {self.patch} does not divide image side {self.image_side}")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads {self.n_heads} does not divide d_model {self.d_model}")

    @property
    def n_tokens(self) -> int:
        """Number of patches (sequence length)."""
        return (self.image_side // self.patch) ** 2

    @property
    def patch_dim(self) -> int:
        """Pixels per patch (input width of the patch embedding)."""
        return self.patch * self.patch

    def to_json(self) -> str:
        """The configuration as a JSON object string."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DigitsConfig:
        """Rebuild from a dict, refusing unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ModelFileError(f"unknown DigitsConfig fields: {sorted(unknown)}")
        return cls(**data)


# --------------------------------------------------------------------------- model


class SelfAttention(nn.Module):
    """Multi-head self-attention written out: q/k/v/out projections, scores, softmax module.

    `self.softmax` is an `nn.Softmax(dim=-1)` submodule so a converter can replace it.
    """

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.softmax = nn.Softmax(dim=-1)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, H, L, D/H)."""
        b, n, _ = x.shape
        return x.reshape(b, n, self.n_heads, self.d_head).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(self.d_head))
        weights = self.softmax(scores)
        ctx = (weights @ v).transpose(1, 2).reshape(b, n, d)
        return self.out(ctx)


class MLP(nn.Module):
    """Two linear layers with an `nn.GELU()` module between them."""

    def __init__(self, d_model: int, d_mlp: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_mlp)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(d_mlp, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderBlock(nn.Module):
    """Pre-LN encoder block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, cfg: DigitsConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.attn = SelfAttention(cfg.d_model, cfg.n_heads)
        self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.mlp = MLP(cfg.d_model, cfg.d_mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class DigitsTransformer(nn.Module):
    """Patch embedding + learned positions, pre-LN encoder blocks, mean pooling, linear head.

    Input: (B, 64) flattened 8x8 images or (B, 8, 8), pixel values in [0, 1].
    Output: (B, 10) logits.
    """

    def __init__(self, cfg: DigitsConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or DigitsConfig()
        c = self.cfg
        self.embed = nn.Linear(c.patch_dim, c.d_model)
        self.pos = nn.Parameter(torch.randn(1, c.n_tokens, c.d_model) * 0.02)
        self.blocks = nn.ModuleList([EncoderBlock(c) for _ in range(c.n_layers)])
        self.ln_f = nn.LayerNorm(c.d_model, eps=c.ln_eps)
        self.head = nn.Linear(c.d_model, c.num_classes)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 64) or (B, 8, 8) -> (B, n_tokens, patch*patch), patches in row-major order."""
        c = self.cfg
        g = c.image_side // c.patch
        x = x.reshape(-1, g, c.patch, g, c.patch)
        return x.permute(0, 1, 3, 2, 4).reshape(-1, g * g, c.patch_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(self.patchify(x)) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h).mean(dim=1))


# --------------------------------------------------------------------------- data


def load_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deterministic stratified 80/20 split of sklearn's digits set.

    Returns (train_x, train_y, test_x, test_y): x is float32 (N, 64) with pixels scaled from
    0..16 to [0, 1]; y is int64 (N,) class indices 0..9 (what cross-entropy takes).
    The split is fixed by `seed` (sklearn's random_state): 1437 train / 360 test rows.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = data.data.astype("float32") / PIXEL_MAX
    y = data.target.astype("int64")
    tr_x, te_x, tr_y, te_y = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    tr_x, tr_y, te_x, te_y = (torch.from_numpy(a.copy()) for a in (tr_x, tr_y, te_x, te_y))
    return tr_x, tr_y, te_x, te_y


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Logits of `model` on `x`, computed in eval mode in batches."""
    model.eval()
    return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows of `x` whose arg-max logit equals the label in `y`."""
    return (predict(model, x).argmax(dim=-1) == y).float().mean().item()


# --------------------------------------------------------------------------- conversion


def apply_conversion(model: nn.Module, conversion: dict[str, Any] | None) -> nn.Module:
    """`model` converted by `approximations.convert(model, **conversion)`; `model` if None.

    `conversion` is the JSON record of convert's keyword arguments (all of them, so that a
    change of convert's defaults cannot change a saved model); JSON lists are turned back
    into tuples (intervals). `model` itself is left unchanged.
    """
    if not conversion:
        return model
    from approximations.conversion import convert

    converted, _replacements = convert(model, **_tuplify(conversion))
    return converted


def _tuplify(value: Any) -> Any:
    """JSON lists back to tuples, recursively (intervals are tuples in the approximations API)."""
    if isinstance(value, dict):
        return {k: _tuplify(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value


# --------------------------------------------------------------------------- files


def save_model(
    model: DigitsTransformer,
    path: str | Path,
    conversion: dict[str, Any] | None = None,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write `model` as `<path>.safetensors` plus a sidecar `<path>.json`; returns the former.

    The safetensors metadata holds the format name/version, the architecture (`config`) and
    the keyword arguments of `approximations.convert` that were applied (`conversion`, JSON
    null for a plain model); `load_model` needs nothing else. The sidecar repeats them with
    `info` (training facts) for people to read.
    """
    path = _stem(path)
    record = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": asdict(model.cfg),
        "conversion": conversion,
    }
    meta = {k: json.dumps(v) for k, v in record.items()}
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    st_path = path.with_suffix(".safetensors")
    save_file(tensors, str(st_path), metadata=meta)
    sidecar = {**record, "weights": st_path.name, "info": info or {}}
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return st_path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The decoded secinfer metadata of a safetensors model file (format, config, conversion).

    Raises ModelFileError with a clear message if the file is not a safetensors file or was
    not written by `save_model`.
    """
    path = Path(path)
    check_safetensors(path)
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    if raw.get("format") is None:
        raise ModelFileError(
            f"{path}: a safetensors file without secinfer metadata (no architecture recorded); "
            "save it with secinfer.zoo.digits.save_model"
        )
    meta = {k: json.loads(v) for k, v in raw.items()}
    if meta["format"] != FORMAT_NAME or meta.get("version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: format {meta['format']!r} v{meta.get('version')} is not "
            f"{FORMAT_NAME!r} v{FORMAT_VERSION}"
        )
    return meta


def load_model(path: str | Path) -> DigitsTransformer:
    """Rebuild a model saved by `save_model`: architecture, then conversion, then weights.

    `path` may name the `.safetensors` file or its stem. Only safetensors is read; any other
    file (a pickle, a torch.save archive) is refused with ModelFileError.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        path = _stem(path).with_suffix(".safetensors")
    meta = read_metadata(path)
    model = DigitsTransformer(DigitsConfig.from_dict(meta["config"]))
    model = apply_conversion(model, meta.get("conversion"))
    with safe_open(str(path), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    model.load_state_dict(state, strict=True)
    return model.eval()


def check_safetensors(path: Path) -> None:
    """Raise ModelFileError unless `path` starts like a safetensors file (u64 size + JSON)."""
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) == 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n <= size - 8 and head[8:9] == b"{":
            return
    hint = ""
    if head[:2] == b"PK" or head[:1] == b"\x80":
        hint = (
            " It looks like a pickle / torch.save archive, which can run code when loaded;"
            " secinfer never unpickles model files."
        )
    raise ModelFileError(f"{path}: not a safetensors file.{hint}")


def export_program(model: nn.Module, path: str | Path) -> Path:
    """Export `model` with `torch.export` and save it as `<path>.pt2`; returns that path.

    The example input is (2, 64); the batch dimension is exported as dynamic, so the saved
    program takes any (B, 64) float32 batch.
    """
    path = _stem(path).with_suffix(".pt2")
    model.eval()
    example = torch.zeros(2, IMAGE_SIDE * IMAGE_SIDE)
    batch = torch.export.Dim("batch", min=1, max=4096)
    ep = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(path))
    return path


def _stem(path: str | Path) -> Path:
    """`path` without a `.safetensors`/`.json`/`.pt2` suffix."""
    path = Path(path)
    if path.suffix in {".safetensors", ".json", ".pt2"}:
        return path.with_suffix("")
    return path
