"""`LoadedModel`: what a loader returns (program, default sample, input names) and its checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from secinfer.errors import UserError
from secinfer.load.checks import (
    InputSpec,
    ShapeMismatch,
    check_count_and_types,
    expected_inputs,
)
from secinfer.load.messages import EXPORT_RECIPE, one_line, quiet

TEXT_INPUTS = ["input_ids", "attention_mask"]


@dataclass
class LoadedModel:
    """A loaded model: its exported program, a default sample, and what its inputs are.

    `program` is None only for TorchScript and pickled modules before their inputs are known
    (see `program_for`). `input_names` follow the program's user inputs in order;
    `output_name` says what the first output is ("logits", "last_hidden_state", "output").
    """

    program: torch.export.ExportedProgram | None
    source: str
    path: Path
    example_inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_name: str = "output"
    tokenizer: Any = None
    tokenizer_problem: str | None = field(default=None, repr=False)
    source_module: Any = field(default=None, repr=False)
    """TorchScript or pickled module exported by `program_for`; None for other formats."""
    calibration_inputs: tuple[torch.Tensor, ...] | None = field(default=None, repr=False)
    """The model owner's calibration batch when the format has one (the digits models: 256
    training images); else calibration uses `example_inputs`."""

    def calibration_samples(self) -> list[tuple[torch.Tensor, ...]]:
        """What calibration runs `plain` on: the calibration batch, else the default sample."""
        if self.calibration_inputs:
            return [tuple(self.calibration_inputs)]
        return [tuple(self.example_inputs)] if self.example_inputs else []

    def program_for(self, inputs: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
        """The exported program, checked against `inputs`.

        For TorchScript and pickled modules, export (again) with `inputs` when there is no
        program yet or `inputs` do not fit the one made before. Raises UserError when the
        inputs are missing, wrong, or the export fails.
        """
        if self.source_module is None:
            self.check_inputs(inputs)
            assert self.program is not None
            return self.program
        if self.program is None or not inputs:
            self.check_inputs(inputs)  # the "pass --input" message when there are none
        if self.program is not None:
            try:
                self.check_inputs(inputs)
                return self.program
            except ShapeMismatch:
                pass  # other sizes than the last export: export again below
        self.program = export_deferred(self.source_module, inputs, self.path)
        if len(self.input_names) != len(inputs):
            self.input_names = list(self.program.graph_signature.user_inputs)
        return self.program

    def ensure_program(self, inputs: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
        """Same as `program_for` (the name the CLI uses)."""
        return self.program_for(inputs)

    def check_inputs(self, inputs: tuple[torch.Tensor, ...]) -> None:
        """UserError unless `inputs` match the program's user inputs in count, dtype, shape.

        Symbolic dimensions are checked against the program's range constraints (an upper
        bound, and a lower bound above 2: export reports a minimum of 2 for dimensions that
        still accept 1). Before a deferred export only the count and types are checked.
        """
        if self.program is None:
            if not inputs:
                raise UserError(
                    f"{self.path}: a {self.source} model records no input shapes; "
                    "pass --input FILE (.npy or .pt)"
                )
            check_count_and_types(inputs, self.input_names, self.path)
            return
        expected = expected_inputs(self.program)
        names = self.input_names if len(self.input_names) == len(expected) else None
        names = names or list(self.program.graph_signature.user_inputs)
        check_count_and_types(inputs, names, self.path)
        for name, got, want in zip(names, inputs, expected, strict=True):
            if isinstance(want, torch.Tensor):
                InputSpec.of(name, want, self.program.range_constraints).check(got)
        if names == TEXT_INPUTS and inputs[0].shape != inputs[1].shape:
            raise UserError(
                f"input attention_mask: shape {tuple(inputs[1].shape)} differs from "
                f"input_ids {tuple(inputs[0].shape)}; give one mask entry per token"
            )


def export_deferred(module: Any, inputs: tuple[torch.Tensor, ...], path: Path) -> Any:
    """Export a TorchScript module (TS2EPConverter) or an nn.Module (torch.export) on `inputs`."""
    if not inputs:
        raise UserError(f"{path}: this format records no input shapes; pass --input FILE")
    try:
        with quiet():
            if isinstance(module, torch.jit.ScriptModule):
                from torch._export.converter import TS2EPConverter

                return TS2EPConverter(module, tuple(inputs)).convert()
            auto = torch.export.Dim.AUTO
            dynamic = tuple({d: auto for d in range(t.dim())} for t in inputs)
            return torch.export.export(module, tuple(inputs), dynamic_shapes=dynamic, strict=False)
    except Exception as exc:
        raise UserError(
            f"{path}: could not export the model on these inputs ({one_line(exc)}); "
            f"check --input, or {EXPORT_RECIPE}"
        ) from None
