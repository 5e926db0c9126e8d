"""What mutual TLS costs on the MPC links: bytes on the wire and seconds, against gloo.

One small private computation (the data owner's 8 x 64 input through a 64 x 64 linear
layer, ReLU, a second linear layer and a softmax: Beaver products from the dealer,
comparisons, exponentials, openings) runs as three real processes (`protocols.mpc.local`)
over both channels in the same benchmark run, alternating, `repeats` times each:

  - gloo: CrypTen's torch.distributed sockets in clear (`--insecure-channel`);
  - TLS: the mesh of `protocols.mpc.tls_communicator`, mutual TLS 1.3 with ephemeral
    identities (`protocols.tls.local_identities`).

Bytes: `payload` is what the meter counts (the same protocol messages on both channels:
both computing parties' sends and the dealer's replies; not the dealer's two seeds);
over TLS, `framed` adds the mesh's 8-byte frame headers and set-up messages (settings),
and `wire` is what went through the sockets (TLS records, handshakes), measured by the
mesh. All are this party's sent bytes, summed over the three parties' links, in both
directions once. Seconds: the computing parties' time inside the computation (after the
connections are up), and the wall time of the whole run (process start to exit,
connections and handshakes included); medians over the repeats. Without `quick` it also
times the product's own `secinfer run --backend mpc` path
(`secinfer.backends.mpc.local.run_local_parties`) on the bundled digits model with 2 rows,
TLS and gloo.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import secinfer

DIGITS = Path(secinfer.__file__).resolve().parent / "data" / "digits.safetensors"


def workload(role: Any) -> dict[str, Any]:
    """The computation each computing party runs (importable: spawned processes)."""
    import crypten
    import torch

    from protocols.mpc.crypten_setup import import_crypten

    import_crypten()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 64, generator=generator)
    w1 = torch.randn(64, 64, generator=generator) / 8
    w2 = torch.randn(64, 10, generator=generator) / 8
    began = time.perf_counter()
    sx = crypten.cryptensor(x, src=1)
    h = sx.matmul(crypten.cryptensor(w1, src=0)).relu()
    y = h.matmul(crypten.cryptensor(w2, src=0)).softmax(dim=-1)
    out = y.get_plain_text().double().numpy()
    seconds = time.perf_counter() - began
    comm = crypten.communicator.get()
    links = comm.link_traffic() if hasattr(comm, "link_traffic") else {}
    plain = torch.softmax(torch.relu(x @ w1) @ w2, dim=-1).double().numpy()
    return {"error": float(np.abs(out - plain).max()), "seconds": seconds, "links": links}


def _one(identity: str | None) -> dict[str, Any]:
    from protocols.mpc.local import run_local
    from protocols.mpc.runtime import Role

    began = time.perf_counter()
    parties = run_local(workload, timeout=300, peer_timeout=60, identity=identity)
    wall = time.perf_counter() - began
    computing = (Role.MODEL_OWNER, Role.DATA_OWNER)
    traffic = [parties[r].traffic for r in computing]
    payload = sum(t.bytes_sent + t.dealer_bytes_sent + t.dealer_bytes_received for t in traffic)
    record: dict[str, Any] = {
        "wall_seconds": wall,
        "seconds": max(parties[r].value["seconds"] for r in computing),
        "payload_bytes": payload,
        "max_abs_error": max(parties[r].value["error"] for r in computing),
    }
    links = [parties[r].value["links"] for r in computing]
    if any(links):
        record["framed_bytes"] = sum(v["app_sent"] for party in links for v in party.values())
        record["wire_bytes"] = sum(v["wire_sent"] for party in links for v in party.values())
        # the dealer's side of its two links, as the computing parties received it
        record["framed_bytes"] += sum(
            party["dealer"]["app_received"] for party in links if "dealer" in party
        )
        record["wire_bytes"] += sum(
            party["dealer"]["wire_received"] for party in links if "dealer" in party
        )
    return record


def _digits_run(insecure: bool) -> float:
    import torch

    from secinfer.backends.base import RunOptions
    from secinfer.backends.mpc.local import run_local_parties
    from secinfer.zoo.digits import load_split

    _, _, test_x, _ = load_split(0)
    began = time.perf_counter()
    inputs = (torch.as_tensor(test_x[:2]),)
    run_local_parties(DIGITS, inputs, RunOptions(), insecure_channel=insecure)
    return time.perf_counter() - began


def run(quick: bool = False, repeats: int | None = None) -> dict[str, Any]:
    """Both channels, alternating, `repeats` times each (default 1 quick, 2 otherwise);
    the record (module docstring)."""
    began = time.perf_counter()
    repeats = repeats or (1 if quick else 2)
    runs: dict[str, list[dict[str, Any]]] = {"gloo": [], "tls": []}
    with tempfile.TemporaryDirectory(prefix="secinfer-mpc-tls-") as root:
        from protocols.tls import local_identities

        identity = str(local_identities(Path(root) / "identities"))
        for _ in range(repeats):
            for mode in runs:
                runs[mode].append(_one(identity if mode == "tls" else None))
    record: dict[str, Any] = {"workload": "8x64 -> linear 64 -> ReLU -> linear 10 -> softmax"}
    record["repeats"] = repeats
    for mode, results in runs.items():
        last = dict(results[-1])
        for key in ("seconds", "wall_seconds"):
            last[key] = statistics.median(r[key] for r in results)
        record[mode] = last
    tls, gloo = record["tls"], record["gloo"]
    record["bytes_overhead"] = tls["wire_bytes"] - tls["payload_bytes"]
    record["bytes_ratio"] = tls["wire_bytes"] / tls["payload_bytes"]
    record["seconds_ratio"] = tls["seconds"] / gloo["seconds"]
    record["wall_ratio"] = tls["wall_seconds"] / gloo["wall_seconds"]
    if not quick:
        record["digits_2_rows"] = {
            "gloo_seconds": _digits_run(insecure=True),
            "tls_seconds": _digits_run(insecure=False),
        }
    record["seconds_total"] = time.perf_counter() - began
    record["seconds"] = record["seconds_total"]
    return record


def markdown(record: dict[str, Any]) -> str:
    """The TLS overhead on the MPC links as a markdown table."""
    rows = [
        "| MPC links | payload bytes | framed bytes | wire bytes | compute s | whole run s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode, label in (("gloo", "gloo in clear (--insecure-channel)"), ("tls", "mutual TLS 1.3")):
        r = record[mode]
        framed = f"{r['framed_bytes']:,}" if "framed_bytes" in r else "-"
        wire = f"{r['wire_bytes']:,}" if "wire_bytes" in r else "(not measured)"
        rows.append(
            f"| {label} | {r['payload_bytes']:,} | {framed} | {wire} "
            f"| {r['seconds']:.2f} | {r['wall_seconds']:.1f} |"
        )
    text = (
        f"TLS on the MPC links ({record['workload']}; median of {record['repeats']} runs "
        f"each): +{record['bytes_overhead']:,} bytes on the wire over the payload "
        f"(x{record['bytes_ratio']:.4f}), compute seconds x{record['seconds_ratio']:.2f}, "
        f"whole run x{record['wall_ratio']:.2f}\n\n" + "\n".join(rows)
    )
    digits = record.get("digits_2_rows")
    if digits:
        text += (
            f"\n\n`secinfer run --backend mpc` on digits, 2 rows, wall seconds: "
            f"{digits['gloo_seconds']:.1f} gloo, {digits['tls_seconds']:.1f} TLS"
        )
    return text


__all__ = ["markdown", "run", "workload"]
