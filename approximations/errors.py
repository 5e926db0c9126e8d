"""Errors raised by the approximations library.

Every error names the argument at fault and, where there is one, the fix.
They subclass ValueError so callers that already catch bad arguments keep working.
"""


class ApproximationError(ValueError):
    """A bad argument to an approximation: interval, degree, function, method."""


class ConversionError(ValueError):
    """`approximations.convert` could not convert the given model."""
