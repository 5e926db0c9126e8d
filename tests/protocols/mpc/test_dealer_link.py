"""The model owner <-> dealer link (`protocols.mpc.dealer`): JSON headers, raw tensor bytes,
an allow-list on the dealer, no pickle in either direction.

In-process: the header codec round-trips, every malformed or hostile header is refused
with one line naming its field, and the dealer's arithmetic is bit-for-bit CrypTen's
TTPServer's for the same generator seeds (so the shares dealt are unchanged).

Real processes: a dealer started with `secinfer party --role dealer` next to a hostile
model owner (two fresh Python processes, rank 0 and 1) refuses a crafted request, answers
`refused`, exits 1 with one line, and never runs it (a pickle payload whose unpickling
would create a marker file leaves no file); and one run of the three parties computes
products through the new link (every request kind CrypTen and `reuse` make), metered.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from protocols.mpc.dealer_requests import (
    MAX_ELEMENTS,
    MAX_HEADER_BYTES,
    DealerError,
    Request,
    RequestRefused,
    decode_header,
    encode_header,
    parse_reply,
    parse_request,
    reply_shape,
)
from protocols.mpc.fss import dealing

REPO = Path(__file__).resolve().parents[3]


# --- the codec -----------------------------------------------------------------------------
REQUESTS = [
    Request("additive", op="mul", sizes=((4, 1, 3), (5, 3))),
    Request("additive", op="matmul", sizes=((2, 4, 3), (3, 5))),
    Request(
        "additive",
        op="conv2d",
        sizes=((1, 2, 5, 5), (3, 2, 3, 3)),
        options={"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1},
    ),
    Request("square", sizes=((3, 0),)),
    Request("wraps", sizes=((),)),
    Request("B2A", sizes=((7,),)),
    Request("binary", sizes=((3, 4), (4,))),
    Request(
        "reuse_products",
        operands=(("w", (4, 5)), (None, (3, 4)), ("x#2", (3, 4))),
        products=(("matmul", 1, 0), ("mul", 2, 2)),
        release=("x#2", "never-kept"),
    ),
    Request("fss_sign", sizes=((3, 4),), bits=22, selects=1),
    Request("terminate", outcome="failed"),
]


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: f"{r.function}-{r.op}")
def test_the_header_codec_round_trips(request_: Request) -> None:
    data = encode_header(request_.to_header())
    assert parse_request(decode_header(data)) == request_
    assert data.decode("ascii")  # compact JSON, nothing but text


def test_reply_shapes() -> None:
    shapes = [reply_shape(r) for r in REQUESTS[:-1]]
    fss = (dealing.payload_words(12, 22, 1),)
    assert shapes == [(4, 5, 3), (2, 4, 5), (1, 3, 5, 5), (3, 0), (), (7,), (3, 4), (3 * 5 + 12,),
                      fss]  # fmt: skip


class _Marker:
    """Unpickling this creates a file (what a pickle-reading dealer would do)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (self.path, "w"))


def _additive(**change: object) -> dict:
    header = {"version": 1, "function": "additive", "op": "mul", "sizes": [[2], [2]]}
    header["options"] = {}
    header.update(change)
    return header


def _fss(**change: object) -> dict:
    header = {"version": 1, "function": "fss_sign", "size": [4], "bits": 22, "selects": 0}
    header.update(change)
    return header


BIG = int(MAX_ELEMENTS**0.5) + 1
REFUSED: dict[str, tuple[object, str]] = {
    "op load": (_additive(op="load"), "field op: 'load' is not one of mul, matmul"),
    "op __class__": (_additive(op="__class__"), "field op: '__class__'"),
    "op not a string": (_additive(op=["mul"]), "field op: ['mul']"),
    "function getattr": ({"version": 1, "function": "__getattribute__"}, "field function"),
    "private method": ({"version": 1, "function": "_get_additive_PRSS"}, "field function"),
    "pickle": (pickle.dumps({"function": "additive"}), "field header: not UTF-8"),
    "pickle protocol 0": (pickle.dumps(_Marker("/x"), protocol=0), "field header: not JSON"),
    "oversized shape": (_additive(sizes=[[BIG, BIG], [2]]), "field sizes[0]: "),
    "oversized result": (_additive(op="matmul", sizes=[[BIG, 1], [1, BIG]]), "field sizes: "),
    "negative dim": (_additive(sizes=[[-1], [2]]), "field sizes[0][0]: -1 is outside"),
    "float dim": (_additive(sizes=[[2.0], [2]]), "field sizes[0][0]: 2.0 is not an integer"),
    "bool dim": (_additive(sizes=[[True], [2]]), "field sizes[0][0]: True is not an integer"),
    "shape a string": ({"version": 1, "function": "square", "size": "4"}, "field size: '4'"),
    "too many dims": ({"version": 1, "function": "square", "size": [1] * 9}, "field size: 9"),
    "three sizes": (_additive(sizes=[[2], [2], [2]]), "field sizes: 3 items"),
    "shapes that do not fit": (_additive(op="matmul", sizes=[[2, 3], [4, 5]]), "do not fit"),
    "option of mul": (_additive(options={"stride": 1}), "field options: 'stride' is not an"),
    "unknown option": (
        _additive(op="conv2d", sizes=[[1, 1, 3, 3], [1, 1, 1, 1]], options={"bias": 1}),
        "field options: 'bias'",
    ),
    "string option": (
        _additive(op="conv2d", sizes=[[1, 1, 3, 3], [1, 1, 1, 1]], options={"padding": "same"}),
        "field options.padding: 'same' is not an integer",
    ),
    "extra field": (_additive(device="cuda"), "field 'device': not a field of additive"),
    "missing field": ({"version": 1, "function": "square"}, "field size: missing"),
    "wrong version": ({"version": 2, "function": "square", "size": [1]}, "field version"),
    "duplicate key": (b'{"version":1,"function":"square","size":[1],"size":[2]}', "twice"),
    "NaN": (b'{"version":1,"function":"square","size":[NaN]}', "NaN is not a number"),
    "not an object": (b"[1, 2]", "a JSON list, expected an object"),
    "nested": (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    "too long": (b" " * (MAX_HEADER_BYTES + 1), f"at most {MAX_HEADER_BYTES}"),
    "reuse op": (
        {
            "version": 1,
            "function": "reuse_products",
            "operands": [[None, [2]]],
            "products": [["conv2d", 0, 0]],
            "release": [],
        },
        "field products[0][0]: 'conv2d'",
    ),
    "reuse index": (
        {
            "version": 1,
            "function": "reuse_products",
            "operands": [[None, [2]]],
            "products": [["mul", 0, 1]],
            "release": [],
        },
        "field products[0][2]: 1 is outside 0..0",
    ),
    "key not a string": (
        {
            "version": 1,
            "function": "reuse_products",
            "operands": [[7, [2]]],
            "products": [],
            "release": [],
        },
        "field operands[0][0]: 7 is not a string",
    ),
    "key too long": (
        {
            "version": 1,
            "function": "reuse_products",
            "operands": [["k" * 600, [2]]],
            "products": [],
            "release": [],
        },
        "field operands[0][0]: 600 characters",
    ),
    "bad outcome": ({"version": 1, "function": "terminate", "outcome": "maybe"}, "field outcome"),
    "fss width": (_fss(bits=65), "field bits: 65 is outside 2..64"),
    "fss width of one": (_fss(bits=1), "field bits: 1 is outside 2..64"),
    "fss selects": (_fss(selects=9), "field selects: 9 is outside 0..8"),
    "fss width a string": (_fss(bits="22"), "field bits: '22' is not an integer"),
    "fss keys beyond a reply": (_fss(size=[1 << 24]), "field size: keys for 16777216"),
    "fss extra field": (_fss(alpha=[1]), "field 'alpha': not a field of fss_sign"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_header_outside_the_allow_list_is_refused_naming_the_field(case: str) -> None:
    message, expected = REFUSED[case]
    data = message if isinstance(message, bytes) else json.dumps(message).encode()
    with pytest.raises(RequestRefused) as refused:
        parse_request(decode_header(data))
    text = str(refused.value)
    assert expected in text and "\n" not in text and len(text) < 300, text


def test_a_reply_is_checked_before_it_is_read() -> None:
    good = {"version": 1, "tensor": {"dtype": "int64", "shape": [3, 4]}}
    assert parse_reply(good, (3, 4)) == (3, 4)
    for header, expected in [
        ({"version": 1, "tensor": {"dtype": "int64", "shape": [4, 3]}}, r"asked \[3, 4\]"),
        ({"version": 1, "tensor": {"dtype": "float64", "shape": [3, 4]}}, "not int64"),
        ({"version": 1, "tensor": {"dtype": "int64", "shape": [3, 4]}, "x": 1}, "fields"),
        ({"version": 1, "refused": "field op: 'load'\nsecond line"}, "refused the request"),
    ]:
        with pytest.raises(DealerError, match=expected) as error:
            parse_reply(header, (3, 4))
        assert "\n" not in str(error.value)


# --- the dealer's arithmetic is CrypTen's TTPServer's ----------------------------------------
def _generators(seeds: tuple[int, int]) -> list[torch.Generator]:
    out = []
    for seed in seeds:
        g = torch.Generator()
        g.manual_seed(seed)
        out.append(g)
    return out


def test_the_dealer_deals_exactly_what_crypten_ttp_server_deals() -> None:
    """Same seeds, same requests in sequence (each draw moves the generators): identical
    tensors, so the shares both parties derive are CrypTen's, bit for bit."""
    from protocols.mpc.crypten_setup import import_crypten
    from protocols.mpc.dealer import Dealer

    import_crypten()
    from crypten.mpc.provider.ttp_provider import TTPServer

    seeds = (11, -(2**62))
    ours = Dealer(_generators(seeds))
    theirs = object.__new__(TTPServer)  # its arithmetic only: no process group, no loop
    theirs.generators, theirs.generators_cuda, theirs.device = _generators(seeds), [None] * 2, "cpu"
    ours_only = ("reuse_products", "fss_sign", "terminate")  # CrypTen has no such request
    for request in [r for r in REQUESTS if r.function not in ours_only]:
        dealt = ours.answer(request)
        if request.function == "additive":
            expected = theirs.additive(*request.sizes, request.op, **request.options)
        else:
            expected = getattr(theirs, request.function)(*request.sizes)
        assert dealt.dtype == torch.int64 and torch.equal(dealt, expected), request
        assert tuple(dealt.shape) == reply_shape(request)


def test_kept_masks_are_reused_and_released() -> None:
    """reuse_products: a kept key's mask is drawn once; party 0's share of a op b plus
    party 1's draw is the product of the masks (sum of both parties' draws)."""
    from crypten.common.rng import generate_random_ring_element

    from protocols.mpc.dealer import Dealer

    seeds = (3, 4)
    dealer, (g0, g1) = Dealer(_generators(seeds)), _generators(seeds)
    first = Request(
        "reuse_products", operands=(("w", (2, 3)), (None, (4, 2))), products=(("matmul", 1, 0),)
    )
    share0 = dealer.answer(first)
    w = generate_random_ring_element((2, 3), generator=g0) + generate_random_ring_element(
        (2, 3), generator=g1
    )
    x = generate_random_ring_element((4, 2), generator=g0) + generate_random_ring_element(
        (4, 2), generator=g1
    )
    share1 = generate_random_ring_element((4, 3), generator=g1)
    assert torch.equal(share0 + share1.reshape(-1), (x @ w).reshape(-1))
    again = Request(
        "reuse_products", operands=(("w", (2, 3)),), products=(("mul", 0, 0),), release=("w",)
    )
    share0 = dealer.answer(again)  # w is kept: no new draw for it
    assert torch.equal(
        share0 + generate_random_ring_element((2, 3), generator=g1).reshape(-1), (w * w).reshape(-1)
    )
    assert dealer.kept == {} and dealer.held == 0
    with pytest.raises(RequestRefused, match=r"operands\[0\]: key 'v' was kept for shape"):
        dealer.answer(Request("reuse_products", operands=(("v", (2,)),)))
        dealer.answer(Request("reuse_products", operands=(("v", (3,)),)))


# --- a real dealer process refuses a crafted request ---------------------------------------
HOSTILE_PARTY = textwrap.dedent(
    """
    import json, os, pickle, sys
    import torch
    from protocols.mpc import dealer
    from protocols.mpc.crypten_setup import import_crypten
    from protocols.mpc.runtime import PartySettings, Role, start_party, stop_party

    role, rendezvous, case, marker = sys.argv[1:5]
    torch.set_num_threads(1)
    start_party(Role.from_label(role), PartySettings(rendezvous, timeout=30))
    if role == "data-owner":
        os._exit(0)  # set up (seeds from the dealer), then gone: the dealer talks to rank 0

    class Marker:
        def __reduce__(self):
            return (open, (marker, "w"))

    group = import_crypten().communicator.get().ttp_group
    def frame(data):
        dealer._send(torch.tensor([len(data)], dtype=torch.int64), 2, group)
        dealer._send(torch.frombuffer(bytearray(data), dtype=torch.uint8), 2, group)
    if case == "pickle":
        frame(pickle.dumps({"function": "additive", "args": (Marker(),)}))
    elif case == "crypten pickle":  # CrypTen's own client: send_obj, int32 length + pickle
        import_crypten().communicator.get().send_obj({"function": Marker()}, 2, group)
    elif case == "op load":
        frame(json.dumps({"version": 1, "function": "additive", "op": "load",
                          "sizes": [[2], [2]], "options": {}}).encode())
    elif case == "op __class__":
        frame(json.dumps({"version": 1, "function": "additive", "op": "__class__",
                          "sizes": [[2], [2]], "options": {}}).encode())
    elif case == "oversized shape":
        frame(json.dumps({"version": 1, "function": "square", "size": [2**20, 2**20]}).encode())
    elif case == "wrong type":
        frame(json.dumps({"version": 1, "function": "binary", "sizes": [[2], "2"]}).encode())
    elif case == "failed run":
        stop_party(failed=True)
    try:
        reply, _ = dealer.receive_header(2, group)
        print(json.dumps(reply))
    except Exception as exc:
        print(json.dumps({"no reply": type(exc).__name__}))
    sys.stdout.flush()
    os._exit(0)
    """
)

CRAFTED = {
    "pickle": "field header: not UTF-8",
    "op load": "field op: 'load' is not one of",
    "crypten pickle": "",  # a frame that is not ours: any one-line refusal
    "op __class__": "field op: '__class__' is not one of",
    "oversized shape": "field size: 1099511627776 elements",
    "wrong type": "field sizes[1]: '2' is not a list",
    "failed run": "the model owner reports that the run failed",
}
FAST = ("pickle",)  # the others are slow (about 10 s each); in-process tests cover them


def _run_dealer_against(case: str, tmp_path: Path) -> tuple[int, str, dict, Path]:
    from protocols.net import free_port

    rendezvous = f"tcp://127.0.0.1:{free_port()}"
    marker = tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    dealer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "secinfer.cli",
            "party",
            "--insecure-channel",
            "--role",
            "dealer",
            "--rendezvous",
            rendezvous,
            "--timeout",
            "30",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    parties = [
        subprocess.Popen(
            [sys.executable, "-c", HOSTILE_PARTY, role, rendezvous, case, str(marker)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=env,
        )
        for role in ("model-owner", "data-owner")
    ]
    try:
        _, err = dealer.communicate(timeout=120)
        out, party_err = parties[0].communicate(timeout=60)
        parties[1].communicate(timeout=60)
    finally:
        for process in (dealer, *parties):
            if process.poll() is None:
                process.kill()
                process.wait()
    lines = out.strip().splitlines()
    assert lines, party_err[-2000:]
    return dealer.returncode, err, json.loads(lines[-1]), marker


@pytest.mark.parametrize(
    "case",
    [c if c in FAST else pytest.param(c, marks=pytest.mark.slow) for c in CRAFTED],
)
def test_a_real_dealer_refuses_a_crafted_request_and_exits_non_zero(
    case: str, tmp_path: Path
) -> None:
    code, err, reply, marker = _run_dealer_against(case, tmp_path)
    lines = [line for line in err.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("warning: --insecure-channel")]
    assert code == 1, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: dealer: "), err[-2000:]
    assert CRAFTED[case] in lines[0]
    assert not marker.exists()  # nothing was unpickled
    if case not in ("crypten pickle", "failed run"):  # the dealer says why before it stops
        assert CRAFTED[case] in reply["refused"], reply


# --- a real run through the new link ---------------------------------------------------------
def _values() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(9)
    return {
        "x": torch.rand(6, 16, generator=g) * 4 - 2,
        "y": torch.rand(6, 16, generator=g) * 4 - 2,
        "w": torch.rand(16, 5, generator=g) * 2 - 1,
        "image": torch.rand(1, 2, 5, 5, generator=g) * 2 - 1,
        "kernel": torch.rand(3, 2, 3, 3, generator=g) * 2 - 1,
    }


def products_through_the_link(role: object) -> dict[str, object]:
    """Every request kind our runs make: CrypTen's mul, matmul, conv2d, square, and a
    comparison (binary triples, B2A), and reuse's kept-mask products; revealed to both."""
    from protocols.mpc import reuse
    from protocols.mpc.crypten_setup import import_crypten
    from protocols.mpc.dealer_requests import encode_header
    from protocols.mpc.meter import Meter
    from protocols.mpc.runtime import Role

    crypten = import_crypten()
    data = _values()

    def share(name: str, owner: Role) -> object:
        value = data[name] if role is owner else torch.zeros_like(data[name])
        return crypten.cryptensor(value, src=int(owner))

    x, y = share("x", Role.DATA_OWNER), share("y", Role.DATA_OWNER)
    image = share("image", Role.DATA_OWNER)
    w, kernel = share("w", Role.MODEL_OWNER), share("kernel", Role.MODEL_OWNER)
    meter = Meter().install()
    before = meter.snapshot()
    xy = x * y  # exactly one "additive" request
    one = meter.snapshot() - before
    results = {
        "mul": xy,
        "matmul": x.matmul(w),
        "conv2d": image.conv2d(kernel, stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1),
        "square": x.square(),
        "greater": (x > y),
        "reuse": reuse.product(x, w, "matmul", y_key="w"),
        "reuse_again": reuse.product(y, w, "matmul", y_key="w", release=("w",)),
    }
    total = meter.snapshot()
    meter.remove()
    reply = encode_header({"version": 1, "tensor": {"dtype": "int64", "shape": [6, 16]}})
    request = encode_header(
        {
            "version": 1,
            "function": "additive",
            "op": "mul",
            "sizes": [[6, 16], [6, 16]],
            "options": {},
        }
    )
    return {
        "values": {k: v.get_plain_text().double().numpy() for k, v in results.items()},
        "one_request": (one.dealer_bytes_sent, one.dealer_bytes_received, one.dealer_rounds),
        "expected_one": (8 + len(request), 8 + len(reply) + 6 * 16 * 8, 1),
        "dealer_total": (total.dealer_bytes_sent, total.dealer_rounds),
    }


def test_three_processes_compute_products_through_the_new_link() -> None:
    from protocols.mpc.local import run_local
    from protocols.mpc.runtime import Role

    results = run_local(products_through_the_link, timeout=240)
    mo, do = results[Role.MODEL_OWNER].value, results[Role.DATA_OWNER].value
    v = {k: t.double() for k, t in _values().items()}
    plain = {
        "mul": v["x"] * v["y"],
        "matmul": v["x"] @ v["w"],
        "conv2d": torch.nn.functional.conv2d(v["image"], v["kernel"], padding=1),
        "square": v["x"] ** 2,
        "greater": (v["x"] > v["y"]).double(),
        "reuse": v["x"] @ v["w"],
        "reuse_again": v["y"] @ v["w"],
    }
    for name, expected in plain.items():
        for party in (mo, do):
            # fixed point: 16 fractional bits, operands |.| <= 2, up to 18 terms summed
            assert np.abs(party["values"][name] - expected.numpy()).max() < 5e-4, name
    # the meter counts the link's frames whole, one round per request, on rank 0 only
    assert mo["one_request"] == mo["expected_one"]
    assert mo["dealer_total"][1] >= 8 and mo["dealer_total"][0] > 0
    assert do["one_request"] == (0, 0, 0) and do["dealer_total"] == (0, 0)
