"""The model owner <-> dealer link without pickle: both ends, and the dealer's arithmetic.

The dealer (rank 2) deals correlated randomness: Beaver triples, squares, binary triples,
wrap counts, random bits, and the kept-mask products of `protocols.mpc.reuse`. Only the
model owner (rank 0) asks; the data owner draws its shares from the generator it shares
with the dealer. This replaces both ends of CrypTen's TTP link, which sent pickled dicts
(read through CrypTen's restricted unpickler) and let the dealer call `getattr(torch, op)`
and `getattr(self, function)` on names its peer sent.

Frames (torch.distributed point-to-point on CrypTen's TTP group, ranks 0 and 2, or the
TLS mesh's link between them when the run has identities; every call goes through
`_send` / `_recv`):

    length   int64 tensor of shape (1,): the header's byte count n, 1 <= n <= MAX_HEADER_BYTES
    header   uint8 tensor of shape (n,): a UTF-8 JSON object (`protocols.mpc.dealer_requests`)
    payload  replies only: the int64 tensor the header describes, its raw bytes (nothing
             when it has no elements)

Guarantees:
  - Nothing on this link is unpickled or evaluated, in either direction; the length is
    checked before anything is allocated, the header against the allow-list before
    anything is computed, and a reply's dtype and shape against what was asked.
  - The dealer answers only the functions of `FIELDS`, applying ops from its own tables.
    On a request outside them it answers `refused`, stops, and `serve` raises
    `RequestRefused` (one line naming the field): the run ends, exit 1 under the CLI.
  - The values dealt are drawn exactly as CrypTen's TTPServer draws them (same generators,
    same order, same arithmetic): the parties' shares are unchanged. Seeds come from the
    OS's CSPRNG (`secrets`).
  - The model owner's requests are reported to `observe`rs (the meter) with their bytes.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from typing import Any

import numpy as np
import torch

from protocols.mpc.crypten_setup import import_crypten
from protocols.mpc.dealer_requests import (
    ADDITIVE_OPS,
    MAX_HEADER_BYTES,
    MAX_REASON_CHARS,
    REUSE_OPS,
    VERSION,
    DealerError,
    Request,
    RequestRefused,
    Shape,
    decode_header,
    encode_header,
    parse_reply,
    parse_request,
    refused,
    reply_shape,
    show,
)
from protocols.mpc.fss import dealing

MAX_KEPT_ELEMENTS = 1 << 30
"""All masks the dealer keeps for a session together (8 GiB of int64)."""


# --- frames ------------------------------------------------------------------------------
_observers: list[Callable[[int, int], None]] = []


def observe(callback: Callable[[int, int], None]) -> None:
    """Call `callback(bytes_sent, bytes_received)` after each of this process's requests
    (frames counted whole: length prefixes, headers and raw tensor bytes)."""
    _observers.append(callback)


def unobserve(callback: Callable[[int, int], None]) -> None:
    if callback in _observers:
        _observers.remove(callback)


def _tls() -> Any:
    """The TLS communicator when this run uses it (`--identity`), else None (gloo)."""
    from protocols.mpc.tls_communicator import TlsCommunicator

    return TlsCommunicator.instance


def _send(tensor: torch.Tensor, dst: int, group: Any) -> None:
    """The link's only way out: the tensor's raw bytes to `dst`."""
    import torch.distributed as dist

    comm = _tls()
    if comm is not None:
        comm.send_to(tensor, dst)
        return
    dist.send(tensor, dst=dst, group=group)


def _recv(tensor: torch.Tensor, src: int, group: Any) -> None:
    """The link's only way in: raw bytes from `src` into `tensor` (its size is the
    number of bytes expected)."""
    import torch.distributed as dist

    comm = _tls()
    if comm is not None:
        comm.recv_into(tensor, src)
        return
    dist.recv(tensor, src=src, group=group)


def send_frame(
    header: dict[str, Any], dst: int, group: Any, payload: torch.Tensor | None = None
) -> int:
    """Send one frame; returns the bytes put on the wire."""
    data = encode_header(header)
    _send(torch.tensor([len(data)], dtype=torch.int64), dst, group)
    _send(torch.frombuffer(bytearray(data), dtype=torch.uint8), dst, group)
    sent = 8 + len(data)
    if payload is not None and payload.numel():
        _send(payload.contiguous(), dst, group)
        sent += payload.numel() * payload.element_size()
    return sent


def receive_header(src: int, group: Any) -> tuple[dict[str, Any], int]:
    """One frame's header (decoded, not yet checked against the allow-list) and its bytes;
    the length is checked before anything is allocated."""
    length = torch.zeros(1, dtype=torch.int64)
    _recv(length, src, group)
    n = int(length.item())
    if not 1 <= n <= MAX_HEADER_BYTES:
        raise refused("header", f"length {n} bytes, 1..{MAX_HEADER_BYTES} allowed")
    data = torch.empty(n, dtype=torch.uint8)
    _recv(data, src, group)
    return decode_header(data.numpy().tobytes()), 8 + n


# --- rank 0: the client ------------------------------------------------------------------
class DealerClient:
    """The model owner's end of the link."""

    def __init__(self, group: Any, dealer_rank: int) -> None:
        self.group = group
        self.dealer_rank = dealer_rank

    def request(self, request: Request) -> torch.Tensor:
        """Send `request` (checked against the dealer's own allow-list first) and return
        this party's share from the reply."""
        header = request.to_header()
        parse_request(decode_header(encode_header(header)))  # what the dealer will check
        expected = reply_shape(request)
        sent = send_frame(header, self.dealer_rank, self.group)
        reply, received = receive_header(self.dealer_rank, self.group)
        shape = parse_reply(reply, expected)
        out = torch.empty(shape, dtype=torch.int64)
        if out.numel():
            _recv(out, self.dealer_rank, self.group)
            received += out.numel() * out.element_size()
        for callback in list(_observers):
            callback(sent, received)
        return out

    def reuse_products(
        self,
        operands: list[tuple[str | None, Shape]],
        products: list[tuple[str, int, int]],
        release: tuple[str, ...] = (),
    ) -> torch.Tensor:
        """Party 0's shares of a_i op a_j for each product, flattened together (see
        `protocols.mpc.reuse`)."""
        return self.request(
            Request(
                "reuse_products",
                operands=tuple((key, tuple(int(d) for d in size)) for key, size in operands),
                products=tuple((op, int(i), int(j)) for op, i, j in products),
                release=tuple(release),
            )
        )

    def fss_sign(self, size: Shape, bits: int, selects: int) -> torch.Tensor:
        """Party 0's payload of FSS comparison keys (`protocols.mpc.fss.dealing`)."""
        return self.request(Request("fss_sign", sizes=(tuple(size),), bits=bits, selects=selects))

    def ttp_request(self, function: str, device: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """CrypTen's `TTPClient.ttp_request(func_name, device, *args, **kwargs)`, carried
        as a checked header (CrypTen's TrustedThirdParty provider calls this)."""
        if device is not None and torch.device(device).type != "cpu":
            raise DealerError(f"the dealer deals on the CPU only, asked for {device}")

        def shape(size: Any) -> Shape:
            return tuple(int(d) for d in size)

        if function == "additive" and len(args) == 3:
            size0, size1, op = args
            options = {k: list(v) if isinstance(v, tuple | list) else v for k, v in kwargs.items()}
            return self.request(
                Request(function, op=op, sizes=(shape(size0), shape(size1)), options=options)
            )
        if function == "binary" and len(args) == 2 and not kwargs:
            return self.request(Request(function, sizes=(shape(args[0]), shape(args[1]))))
        if function in ("square", "wraps", "B2A") and len(args) == 1 and not kwargs:
            return self.request(Request(function, sizes=(shape(args[0]),)))
        raise DealerError(f"no dealer request {function!r} with {len(args)} arguments")

    def terminate(self, outcome: str) -> None:
        send_frame(Request("terminate", outcome=outcome).to_header(), self.dealer_rank, self.group)


_client: DealerClient | None = None


def install_client() -> DealerClient:
    """On the model owner after `crypten.init()` with the dealer provider: route CrypTen's
    TTP requests through this link, and stop CrypTen's own shutdown from sending its
    pickled "terminate" (`close_client` sends ours)."""
    global _client
    crypten = import_crypten()
    from crypten.mpc.provider.ttp_provider import TTPClient

    comm = crypten.communicator.get()
    _client = DealerClient(comm.ttp_group, comm.get_ttp_rank())
    TTPClient.get().ttp_request = _client.ttp_request
    comm.ttp_initialized = False
    return _client


def client() -> DealerClient:
    """The installed client (the model owner of a run with the dealer)."""
    if _client is None:
        raise DealerError("no dealer link: start the model owner with runtime.start_party")
    return _client


def close_client(failed: bool) -> None:
    """Tell the dealer the run is over ("failed" makes it exit non-zero); a no-op where no
    client is installed. A dealer already gone is not an error here."""
    global _client
    if _client is None:
        return
    link, _client = _client, None
    with suppress(RuntimeError, DealerError):
        link.terminate("failed" if failed else "ok")


# --- rank 2: the dealer ------------------------------------------------------------------
class Dealer:
    """The dealer's arithmetic, given the generator it shares with each party (party 0's
    first). Every draw is CrypTen's TTPServer's: a plaintext value is the sum (or XOR) of
    one draw per party, and party 0's share is that value minus party 1's next draw."""

    def __init__(self, generators: list[torch.Generator]) -> None:
        self.generators = generators
        self.kept: dict[str, torch.Tensor] = {}
        self.held = 0  # elements in `kept`
        self.private = np.random.default_rng(secrets.randbits(128))  # no party knows it

    def _ring(self, size: Shape, generators: list[torch.Generator]) -> torch.Tensor:
        from crypten.common.rng import generate_random_ring_element

        draws = [generate_random_ring_element(size, generator=g) for g in generators]
        total = draws[0]
        for draw in draws[1:]:
            total = total + draw
        return total

    def _bits(
        self, size: Shape, generators: list[torch.Generator], bitlength: int | None = None
    ) -> torch.Tensor:
        from crypten.common.rng import generate_kbit_random_tensor

        draws = [
            generate_kbit_random_tensor(size, bitlength=bitlength, generator=g) for g in generators
        ]
        total = draws[0]
        for draw in draws[1:]:
            total = total ^ draw
        return total

    def _party_0_share(self, value: torch.Tensor) -> torch.Tensor:
        return value - self._ring(tuple(value.size()), self.generators[1:])

    def answer(self, request: Request) -> torch.Tensor:
        """Party 0's share for a checked request (not "terminate")."""
        from crypten.common.rng import generate_random_ring_element
        from crypten.common.util import count_wraps

        function, every = request.function, self.generators
        if function == "additive":
            a = self._ring(request.sizes[0], every)
            b = self._ring(request.sizes[1], every)
            return self._party_0_share(ADDITIVE_OPS[request.op](a, b, **request.options))
        if function == "square":
            r = self._ring(request.sizes[0], every)
            return self._party_0_share(r.mul(r))
        if function == "binary":
            c = self._bits(request.sizes[0], every) & self._bits(request.sizes[1], every)
            return c ^ self._bits(tuple(c.size()), every[1:])
        if function == "wraps":
            shares = [generate_random_ring_element(request.sizes[0], generator=g) for g in every]
            return self._party_0_share(count_wraps(shares))
        if function == "B2A":
            return self._party_0_share(self._bits(request.sizes[0], every, bitlength=1))
        if function == "reuse_products":
            return self._reuse_products(request)
        if function == "fss_sign":
            draws = tuple(partial(draw_words, generator=g) for g in every[:2])
            payload = dealing.deal(math.prod(request.sizes[0]), request.bits, request.selects,
                                   draws, self.private)  # type: ignore[arg-type]  # fmt: skip
            return torch.from_numpy(payload.view(np.int64))
        raise refused("function", f"{show(function)} has no answer")

    def _mask(self, key: str | None, size: Shape, where: str) -> torch.Tensor:
        if key is not None and key in self.kept:
            kept = self.kept[key]
            if tuple(kept.shape) != size:
                raise refused(where, f"key {show(key)} was kept for shape {list(kept.shape)}")
            return kept
        mask = self._ring(size, self.generators)
        if key is not None:
            if self.held + mask.numel() > MAX_KEPT_ELEMENTS:
                raise refused(where, f"keeping it would hold over {MAX_KEPT_ELEMENTS} elements")
            self.kept[key] = mask
            self.held += mask.numel()
        return mask

    def _reuse_products(self, request: Request) -> torch.Tensor:
        masks = [
            self._mask(key, size, f"operands[{i}]")
            for i, (key, size) in enumerate(request.operands)
        ]
        shares = [
            self._party_0_share(REUSE_OPS[op](masks[i], masks[j])).reshape(-1)
            for op, i, j in request.products
        ]
        for key in request.release:
            released = self.kept.pop(key, None)
            self.held -= 0 if released is None else released.numel()
        return torch.cat(shares) if shares else torch.empty(0, dtype=torch.long)


def draw_words(count: int, generator: torch.Generator) -> np.ndarray:
    """`count` uniform 64-bit words (uint64) from a generator a party shares with the
    dealer: CrypTen's ring draw, so that party and dealer draw alike
    (`protocols.mpc.fss.dealing.Draw`)."""
    from crypten.common.rng import generate_random_ring_element

    return generate_random_ring_element((count,), generator=generator).numpy().view(np.uint64)


def party_generator() -> torch.Generator:
    """On a computing party: the generator it shares with the dealer (CrypTen's TTP
    client's), which `draw_words` draws from."""
    from crypten.mpc.provider.ttp_provider import TTPClient

    return TTPClient.get().get_generator()


def _seed_parties(group: Any, parties: int) -> list[torch.Generator]:
    """Send each party its generator seed (a uniform 64-bit value from the OS) as CrypTen's
    TTPClient expects it: an int64 scalar on the TTP group, then a barrier."""
    import torch.distributed as dist

    seeds = [int.from_bytes(secrets.token_bytes(8), "little", signed=True) for _ in range(parties)]
    comm = _tls()
    if comm is not None:  # the same messages over the TLS links
        for rank, seed in enumerate(seeds):
            comm.send_to(torch.tensor(seed, dtype=torch.long), rank)
        comm.barrier(group)
        return [_generator(seed) for seed in seeds]
    requests = [
        dist.isend(torch.tensor(seed, dtype=torch.long), dst=rank, group=group)
        for rank, seed in enumerate(seeds)
    ]
    generators = []
    for seed, sent in zip(seeds, requests, strict=True):
        g = torch.Generator(device="cpu")
        g.manual_seed(seed)
        generators.append(g)
        sent.wait()
    dist.barrier(group=group)
    return generators


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def serve() -> None:
    """The dealer's process (CrypTen configured as rank 2): join, seed both parties, and
    answer the model owner's requests until it sends "terminate". Raises `RequestRefused`
    (after answering `refused`) on a request outside the allow-list, `DealerError` when
    the model owner reports the run failed or is lost (its link fails or times out)."""
    crypten = import_crypten()
    crypten.init()
    comm = crypten.communicator.get()
    group, model_owner = comm.ttp_group, 0
    dealer = Dealer(_seed_parties(group, comm.get_world_size()))
    while True:
        try:
            try:
                header, _ = receive_header(model_owner, group)
            except RuntimeError as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
                raise DealerError(
                    f"lost the model owner before it ended the run ({first})"
                ) from None
            request = parse_request(header)
            if request.function == "terminate":
                if request.outcome != "ok":
                    raise DealerError("the model owner reports that the run failed")
                return
            share = dealer.answer(request)
        except RequestRefused as exc:
            _refusal(str(exc), model_owner, group)
            raise RequestRefused(f"refused a request from the model owner: {exc}") from None
        send_frame(
            {"version": VERSION, "tensor": {"dtype": "int64", "shape": list(share.shape)}},
            model_owner,
            group,
            share,
        )


def _refusal(reason: str, dst: int, group: Any) -> None:
    with suppress(RuntimeError, DealerError):
        send_frame({"version": VERSION, "refused": reason[:MAX_REASON_CHARS]}, dst, group)


__all__ = [
    "ADDITIVE_OPS",
    "REUSE_OPS",
    "Dealer",
    "DealerClient",
    "DealerError",
    "RequestRefused",
    "client",
    "close_client",
    "install_client",
    "observe",
    "receive_header",
    "send_frame",
    "serve",
    "unobserve",
]
