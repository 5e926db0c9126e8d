"""Shared wording and quiet context of the loaders: the export recipe, one-line errors."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator

EXPORT_RECIPE = (
    "export it instead: "
    'torch.export.save(torch.export.export(model.eval(), example_args), "model.pt2")'
)


_NOISY_LOGGERS = ("torch._export", "torch.export", "torch.fx.experimental.symbolic_shapes")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence warnings and (once imported) transformers' progress bars and logs."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    hf_logging = sys.modules.get("transformers.utils.logging")
    hf_state = (
        (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) if hf_logging else None
    )
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    if hf_logging:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if hf_logging and hf_state:
            hf_logging.set_verbosity(hf_state[0])
            if hf_state[1]:
                hf_logging.enable_progress_bar()


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text[:200] + ("..." if len(text) > 200 else "")
