"""Every backend's kernels registered before the conformance suite walks the registry."""

from __future__ import annotations

import secinfer.backends

secinfer.backends.load_all()
