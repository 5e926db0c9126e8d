"""What mutual TLS costs on the HE link: bytes on the wire and seconds, against a plain socket.

The same query runs twice in this process, server in a thread and client here, real sockets
and real TenSEAL: once over `--insecure-channel` (plain TCP), once over mutual TLS 1.3 with
ephemeral identities (`protocols.tls`). Between them sits a `WireTap`, a TCP relay on
loopback that counts (and can keep) every byte each way, so the figures are the bytes on
the wire, TLS records, handshake and alerts included, not the application's own count.
Seconds are the client's wall time from connecting to holding the decrypted output (the
relay adds the same copy to both runs); `transfer_seconds` also times the link alone on the
same number of bytes, without the HE compute that dominates a run. Default model: the
bundled HE-friendly digits model on `images` test images (`quick`: a one-layer toy).
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import secinfer
from protocols import tls

MODEL = Path(secinfer.__file__).resolve().parent / "data" / "digits_he.pt2"


@dataclass
class WireTap:
    """A TCP relay: clients connect to `port`, each connection is forwarded to `upstream`;
    `to_server` / `to_client` count the bytes each way, `captured` keeps them when `keep`."""

    upstream: tuple[str, int]
    keep: bool = False
    to_server: int = 0
    to_client: int = 0
    captured: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _serve(self) -> None:
        while True:
            try:
                near, _ = self._listener.accept()
            except OSError:
                return
            far = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(near, far, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(far, near, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upward: bool) -> None:
        try:
            while chunk := source.recv(1 << 16):
                with self._lock:
                    if upward:
                        self.to_server += len(chunk)
                    else:
                        self.to_client += len(chunk)
                    if self.keep:
                        self.captured += chunk
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock, how in ((sink, socket.SHUT_WR), (source, socket.SHUT_RD)):
                with contextlib.suppress(OSError):
                    sock.shutdown(how)


def query_through_tap(
    graph: Any,
    plan: Any,
    inputs: tuple[torch.Tensor, ...],
    *,
    secure: bool,
    keep: bool = False,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """One query over a `WireTap`, with TLS (`secure`) or plain: the output, wire bytes each
    way, the application's own byte counts, the client's seconds and (`keep`) the capture."""
    from secinfer.backends.he import session as he_session

    with tempfile.TemporaryDirectory(prefix="secinfer-tls-bench-") as tmp:
        root = Path(tmp)
        if secure:
            keys = tls.local_identities(root / "identities")
            server_link = tls.Link(tls.load_identity(keys, "model-owner", ["data-owner"]))
            client_link = tls.Link(tls.load_identity(keys, "data-owner", ["model-owner"]))
        else:
            server_link = client_link = tls.Link(None)
        (root / "server").mkdir()
        (root / "client").mkdir()
        listener = socket.create_server(("127.0.0.1", 0))
        outcome: dict[str, Any] = {}

        def serve() -> None:
            with listener:
                try:
                    outcome["record"] = he_session.serve(
                        graph, plan, listener, root / "server", timeout=timeout, link=server_link
                    )
                except Exception as exc:  # reported below
                    outcome["error"] = exc

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        tap = WireTap(("127.0.0.1", listener.getsockname()[1]), keep=keep)
        try:
            began = time.perf_counter()
            output = he_session.query(
                ("127.0.0.1", tap.port),
                lambda names: inputs,
                root / "client",
                timeout=timeout,
                link=client_link,
            )
            seconds = time.perf_counter() - began
            thread.join(timeout)
        finally:
            tap.close()
        if "error" in outcome:
            raise outcome["error"]
        record = outcome["record"]
        time.sleep(0.05)  # the relay's last close
        return {
            "output": output,
            "seconds": seconds,
            "wire_to_server": tap.to_server,
            "wire_to_client": tap.to_client,
            "app_to_server": record["bytes_received"],
            "app_to_client": record["bytes_sent"],
            "captured": bytes(tap.captured),
        }


def run(quick: bool = False, images: int = 2, repeats: int | None = None) -> dict[str, Any]:
    """Both links on the same graph, plan and input, alternating, `repeats` times each
    (default 3 quick, 1 otherwise); the record (module docstring). The bytes TLS adds are
    the wire bytes less the application's own (framed) bytes of the same TLS run: a plain
    run's wire bytes equal its application bytes, and each run's public context (fresh
    keys, compressed) differs by a few kB, so comparing two runs' totals would mix that in.
    Seconds: the median client time of each link."""
    from secinfer.backends.he.kernels import check_he_plan
    from secinfer.core.prepare import prepare

    began = time.perf_counter()
    program, inputs, samples, name = _toy() if quick else _digits(images)
    graph, plan = prepare(program, "he", samples, None)
    check_he_plan(graph, plan)
    repeats = repeats or (3 if quick else 1)
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "tls": []}
    outputs = []
    for _ in range(repeats):
        for mode in runs:
            result = query_through_tap(graph, plan, inputs, secure=mode == "tls")
            result.pop("captured")
            outputs.append(result.pop("output"))
            runs[mode].append(result)
    record: dict[str, Any] = {"model": name, "repeats": repeats}
    for mode, results in runs.items():
        last = dict(results[-1])
        last["seconds"] = statistics.median(r["seconds"] for r in results)
        last["added_to_server"] = last["wire_to_server"] - last["app_to_server"]
        last["added_to_client"] = last["wire_to_client"] - last["app_to_client"]
        record[mode] = last
    secure = record["tls"]
    app = secure["app_to_server"] + secure["app_to_client"]
    record["bytes_overhead"] = secure["added_to_server"] + secure["added_to_client"]
    record["bytes_ratio"] = (app + record["bytes_overhead"]) / app
    record["seconds_ratio"] = secure["seconds"] / record["plain"]["seconds"]
    record["outputs_max_difference"] = max(float(abs(o - outputs[0]).max()) for o in outputs)
    plain_wire = record["plain"]["wire_to_server"] + record["plain"]["wire_to_client"]
    record["transfer"] = transfer_seconds(plain_wire)
    record["seconds"] = time.perf_counter() - began
    return record


def transfer_seconds(total: int, message: int = 1 << 20, repeats: int = 3) -> dict[str, float]:
    """The link alone: `total` bytes as framed messages of `message` bytes from a thread to
    this one over loopback (`protocols.he.messages`, as the session sends ciphertexts),
    plain and TLS, alternating; the median seconds of each. Isolates what TLS costs per byte
    from the HE compute, which dominates (and, on a shared machine, blurs) a whole run."""
    from protocols.he import messages

    payload = bytes(message)
    count = max(1, total // message)
    seconds: dict[str, list[float]] = {"plain": [], "tls": []}
    with tempfile.TemporaryDirectory(prefix="secinfer-tls-bench-") as tmp:
        keys = tls.local_identities(Path(tmp) / "identities")
        links = {
            "plain": (tls.Link(None), tls.Link(None)),
            "tls": (
                tls.Link(tls.load_identity(keys, "model-owner", ["data-owner"])),
                tls.Link(tls.load_identity(keys, "data-owner", ["model-owner"])),
            ),
        }
        for _ in range(repeats):
            for mode, (server, client) in links.items():
                listener = socket.create_server(("127.0.0.1", 0))

                def send(listener: socket.socket = listener, server: tls.Link = server) -> None:
                    with listener:
                        raw, _ = listener.accept()
                    with server.accept(raw, "data-owner", 30) as sock:
                        for _ in range(count):
                            messages.send_message(
                                sock, messages.MessageKind.JSON, payload, timeout=60
                            )

                sender = threading.Thread(target=send, daemon=True)
                sender.start()
                raw = socket.create_connection(listener.getsockname())
                began = time.perf_counter()
                with client.connect(raw, "model-owner", 30) as sock:
                    for _ in range(count):
                        messages.recv_message(sock, timeout=60, max_bytes=message)
                seconds[mode].append(time.perf_counter() - began)
                sender.join()
    plain, secure = (statistics.median(seconds[m]) for m in ("plain", "tls"))
    return {"bytes": count * message, "plain": plain, "tls": secure, "ratio": secure / plain}


def markdown(record: dict[str, Any]) -> str:
    """The TLS overhead as a markdown table, and the link-alone line."""
    move = record["transfer"]
    rows = [
        "| HE link | bytes to server (wire / app) | bytes to client (wire / app) | client s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for mode, label in (("plain", "plain TCP (--insecure-channel)"), ("tls", "mutual TLS 1.3")):
        r = record[mode]
        rows.append(
            f"| {label} | {r['wire_to_server']:,} / {r['app_to_server']:,} "
            f"| {r['wire_to_client']:,} / {r['app_to_client']:,} | {r['seconds']:.2f} |"
        )
    return (
        f"TLS on the HE link ({record['model']}; median of {record['repeats']} runs each): "
        f"+{record['bytes_overhead']:,} bytes (x{record['bytes_ratio']:.5f}), "
        f"seconds x{record['seconds_ratio']:.3f}\n\n" + "\n".join(rows) + "\n\n"
        f"The link alone, the same {move['bytes']:,} bytes as 1 MiB messages on loopback: "
        f"{move['plain']:.2f} s plain, {move['tls']:.2f} s TLS (x{move['ratio']:.2f}, "
        f"+{move['tls'] - move['plain']:.2f} s)"
    )


def _toy() -> tuple[Any, tuple[torch.Tensor, ...], list[Any], str]:
    class Toy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.fc(x)
            return (y * y).mean(-1)

    torch.manual_seed(0)
    x = torch.randn(2, 3, 8)
    program = torch.export.export(Toy().eval(), (x,))
    return program, (x,), [(x,)], "toy linear + square, input (2, 3, 8)"


def _digits(images: int) -> tuple[Any, tuple[torch.Tensor, ...], list[Any], str]:
    from secinfer import load
    from secinfer.zoo.digits import load_split

    loaded = load.load_model(MODEL)
    x = load_split(0)[2][:images]
    return loaded.program, (x,), loaded.calibration_samples(), f"{MODEL.name}, {images} images"


if __name__ == "__main__":  # pragma: no cover
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", type=int, default=2)
    args = parser.parse_args()
    result = run(quick=args.quick, images=args.images)
    print(markdown(result))
    print(json.dumps(result, indent=2))
