"""The import contracts: layers, independence and where CrypTen and TenSEAL may be imported
(`.importlinter`, checked by import-linter's `lint-imports`), no import cycle among the
modules of secinfer, protocols and approximations (grimp, import-linter's graph library),
and the plain interpreter without either cryptography library.

Each test fails on a real import: a module that imports a higher layer, a cycle, or a
module of the core that pulls in `tenseal` or `crypten`.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("secinfer", "protocols", "approximations")


def test_the_import_contracts_are_kept() -> None:
    """`lint-imports` (from this interpreter's environment) keeps every contract."""
    lint = Path(sys.executable).parent / "lint-imports"
    assert lint.exists(), f"{lint} is missing: run `make setup` (import-linter is a dev extra)"
    done = subprocess.run(
        [str(lint), "--no-cache", "--no-logo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"lint-imports failed:\n{output}"
    assert "0 broken" in output, output


def import_cycles(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """The strongly connected components of more than one module (or a module importing
    itself) of the direct-import graph restricted to `modules` (Tarjan, iterative): each is
    a set of modules that import one another in a circle."""
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & modules) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    for root in sorted(modules):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, position = work.pop()
            if position == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if position < len(edges[node]):
                work.append((node, position + 1))
                child = edges[node][position]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges[node]:
                    cycles.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return cycles


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The finder itself: a circle of three modules and a self-import are found, a chain
    is not."""
    graph = grimp.ImportGraph()
    for name in ("p", "p.a", "p.b", "p.c", "p.d", "p.e"):
        graph.add_module(name)
    for importer, imported in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.d", "p.a")]:
        graph.add_import(importer=importer, imported=imported)
    graph.add_import(importer="p.e", imported="p.e")
    found = import_cycles(graph, {"p.a", "p.b", "p.c", "p.d", "p.e"})
    assert sorted(found) == [["p.a", "p.b", "p.c"], ["p.e"]]


def test_no_import_cycle() -> None:
    """No module of secinfer, protocols or approximations reaches itself through its
    imports (imports inside functions count: grimp reads every import statement)."""
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    modules = {m for m in graph.modules if m.split(".")[0] in PACKAGES}
    assert len(modules) > 100  # the whole project was read
    cycles = import_cycles(graph, modules)
    assert cycles == [], "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


BLOCKED_RUN = textwrap.dedent(
    """
    import importlib.abc
    import sys

    BLOCKED = ("tenseal", "crypten")


    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this process")
            return None


    sys.meta_path.insert(0, Blocker())
    for name in BLOCKED:
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"the blocker let {name} through")

    import torch

    from secinfer.core.calibrate import calibrate
    from secinfer.core.execute import Executor
    from secinfer.core.graph import build_graph
    from secinfer.core.plan import make_plan

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8),
        torch.nn.GELU(),
        torch.nn.LayerNorm(8),
        torch.nn.Linear(8, 3),
        torch.nn.Softmax(dim=-1),
    ).eval()
    x = torch.randn(5, 4)
    graph = build_graph(torch.export.export(model, (x,)))
    with torch.no_grad():
        expected = model(x)
    plain = Executor(graph, "plain").run((x,)).outputs[0]
    plan = make_plan(graph, "approx", calibration=calibrate(graph, [(x,)]))
    approx = Executor(graph, "approx", plan).run((x,)).outputs[0]
    plain_error = float((plain - expected).abs().max())
    approx_error = float((approx.float() - expected).abs().max())
    loaded = sorted({m.split(".")[0] for m in sys.modules} & set(BLOCKED))
    print(f"plain {plain_error:.3g} approx {approx_error:.3g} loaded {loaded}")
    assert plain_error < 1e-5, plain_error
    assert 0 < approx_error < 2e-2, approx_error
    assert not loaded, loaded
    """
)


def test_the_plain_interpreter_runs_without_tenseal_and_crypten() -> None:
    """In a process where importing `tenseal` or `crypten` raises ImportError, the executor
    imports and runs a torch.export program under `plain` (within 1e-5 of torch) and
    `approx` (the default mpc plan's approximations, calibrated on the input: within 2e-2
    of torch on softmax probabilities, and not exact)."""
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "loaded []" in done.stdout, done.stdout
