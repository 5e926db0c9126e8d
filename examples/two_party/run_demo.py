"""`make demo`: classify digits under MPC with the three example scripts as separate processes.

The model owner (examples/two_party/model_owner.py) holds the bundled digits transformer,
the data owner (data_owner.py) holds test images, the dealer (dealer.py) deals Beaver
triples. They meet on a loopback rendezvous. Afterwards this script, which played neither
role and has both files only because it is a demo, compares the data owner's secure
predictions with plaintext torch and prints the communication bill. The images go in as
`--queries` separate queries of one session: the weights' masks are opened once, before
the first, and every query pays only its own online traffic.

    python examples/two_party/run_demo.py [--images 50] [--queries 2] [--timeout 60]
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path

import numpy as np
import torch

from protocols.mpc import rendezvous as meeting
from protocols.mpc.runtime import Role
from protocols.tls import local_identities
from secinfer.backends.mpc.party import output_names
from secinfer.backends.parties import run_parties
from secinfer.backends.processes import private_directory, stopping_on_signals
from secinfer.errors import Interrupted, PartyError, UserError
from secinfer.report.mpc import estimate
from secinfer.zoo.digits import load_model, load_split

HERE = Path(__file__).resolve().parent
MODEL = HERE.parents[1] / "secinfer" / "data" / "digits.safetensors"
SCRIPTS = {
    Role.MODEL_OWNER: HERE / "model_owner.py",
    Role.DATA_OWNER: HERE / "data_owner.py",
    Role.DEALER: HERE / "dealer.py",
}


def start_parties(root: Path, queries: list[Path], timeout: float) -> dict[str, dict]:
    with meeting.listen("127.0.0.1", 0) as listener:  # handed to the model owner
        return _run(root, queries, timeout, listener)


def _run(root: Path, queries: list[Path], timeout: float, listener: socket.socket) -> dict:
    rendezvous = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    # one machine plays all three organisations: throw-away keys for the three roles, in
    # the demo's private folder (on real hosts each keeps its own: `secinfer keys`)
    identities = local_identities(root / "identities")
    common = ["--rendezvous", rendezvous, "--timeout", str(timeout)]
    common += ["--identity", str(identities)]
    inputs = [arg for path in queries for arg in ("--input", str(path))]
    extra = {
        Role.MODEL_OWNER: ["--model", str(MODEL), "--out", str(root)],
        Role.DATA_OWNER: [*inputs, "--out", str(root)],
        Role.DEALER: [],
    }
    commands = {
        role: [sys.executable, str(script), *common, *extra[role]]
        for role, script in SCRIPTS.items()
    }
    run_parties(commands, root, timeout=20 * timeout, listeners={Role.MODEL_OWNER: listener})
    return {
        role.label: json.loads((root / f"{role.label}.json").read_text())
        for role in (Role.MODEL_OWNER, Role.DATA_OWNER)
    }


def main(argv: list[str] | None = None) -> int:
    """The demo; SIGTERM, SIGINT or SIGHUP stop the three parties and remove the demo's
    temporary folder (its images and outputs) before it exits with 128 + the signal."""
    try:
        with stopping_on_signals():
            return _demo(argv)
    except Interrupted as exc:
        print(f"error: {exc}: stopped the parties and removed the demo's files", file=sys.stderr)
        return exc.exit_code


def _demo(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50, help="test images to classify")
    parser.add_argument("--queries", type=int, default=2, help="queries to split them into")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a peer")
    args = parser.parse_args(argv)
    _, _, test_x, test_y = load_split(0)
    if not 1 <= args.images <= len(test_x):
        parser.error(f"--images {args.images}: choose 1 to {len(test_x)}")
    if not 1 <= args.queries <= args.images:
        parser.error(f"--queries {args.queries}: choose 1 to --images ({args.images})")
    x, y = test_x[: args.images], test_y[: args.images]
    print(
        f"two-party demo: {args.images} digit images in {args.queries} queries, "
        "model owner + data owner + dealer"
    )
    began = time.perf_counter()
    with private_directory("secinfer-demo-") as root:
        queries = []
        for k, part in enumerate(torch.tensor_split(x, args.queries), start=1):
            queries.append(root / f"images-{k}.npy")
            np.save(queries[-1], part.numpy())
        try:
            records = start_parties(root, queries, args.timeout)
        except (UserError, PartyError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2 if isinstance(exc, UserError) else 1
        names = ["output.npy"] if args.queries == 1 else output_names(args.queries)
        secure = np.concatenate([np.load(root / n, allow_pickle=False) for n in names])
    seconds = time.perf_counter() - began
    with torch.no_grad():
        plain = load_model(MODEL)(x).numpy()
    secure_class, plain_class = secure.argmax(-1), plain.argmax(-1)
    print(f"{'image':>5} {'label':>5} {'plain':>5} {'secure':>6}")
    for i in range(min(10, args.images)):
        print(f"{i:>5} {int(y[i]):>5} {plain_class[i]:>5} {secure_class[i]:>6}")
    if args.images > 10:
        print(f"  ... ({args.images - 10} more)")
    agree = (secure_class == plain_class).mean()
    print(
        f"secure predictions equal plaintext's: {agree:.4f} "
        f"({int((secure_class == plain_class).sum())}/{args.images})"
    )
    print(
        f"accuracy: secure {(secure_class == y.numpy()).mean():.4f}, "
        f"plaintext {(plain_class == y.numpy()).mean():.4f}"
    )
    print(f"max abs logit difference: {np.abs(secure - plain).max():.4f}")
    mo, do = records["model-owner"]["run"], records["data-owner"]["run"]
    dealer = mo["dealer_bytes_received"] + do["dealer_bytes_received"]
    rounds = max(mo["rounds"], do["rounds"])
    compute = max(records["model-owner"]["seconds"], records["data-owner"]["seconds"])
    print(
        f"communication: model owner sent {mo['bytes_sent'] / 1e6:.1f} MB, data owner "
        f"{do['bytes_sent'] / 1e6:.1f} MB, dealer {dealer / 1e6:.1f} MB; {rounds} rounds "
        "(all queries, online)"
    )
    off = records["model-owner"]["offline"]
    print(
        f"  before the images existed (once per session): {off['weights_opened']} weights "
        f"shared and opened, {off['bytes_sent'] / 1e6:.2f} MB, {off['rounds']} round(s)"
    )
    for k, query in enumerate(records["data-owner"]["queries"], start=1):
        print(
            f"  query {k}: data owner sent {query['bytes_sent'] / 1e6:.1f} MB in "
            f"{query['rounds']} rounds, {query['seconds']:.1f} s"
        )
    est = estimate(compute, rounds, max(mo["bytes_sent"], do["bytes_sent"]))
    print(
        f"secure computation {compute:.1f} s here (3 processes on 2 cores), estimated "
        f"LAN {est['lan']:.1f} s, WAN {est['wan']:.1f} s; whole demo {seconds:.1f} s"
    )
    return 0 if agree == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
