"""Bundled demo models. `digits`: a small transformer for scikit-learn's 8x8 digits set."""

from secinfer.zoo.digits import (
    DigitsConfig,
    DigitsTransformer,
    ModelFileError,
    accuracy,
    export_program,
    load_model,
    load_split,
    predict,
    save_model,
)

__all__ = [
    "DigitsConfig",
    "DigitsTransformer",
    "ModelFileError",
    "accuracy",
    "export_program",
    "load_model",
    "load_split",
    "predict",
    "save_model",
]
