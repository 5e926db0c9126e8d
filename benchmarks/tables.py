"""The MPC section's markdown, from its record: the op table, the encoder-layer table, the
counting and decoding notes, each layer's cost by op, and the figures published elsewhere
(a table of their own, never compared by ratio with this run's)."""

from __future__ import annotations

from typing import Any

from benchmarks.published import CRYPTEN_COUNT
from benchmarks.traffic import RATIO_KEYS


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.2e}"
    return f"{value:.{digits}g}"


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|")


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}x"


def _ops_table(ops: dict[str, Any]) -> list[str]:
    lines = [
        "**Secure ops, ours vs CrypTen's built-ins** (one run: model owner, data owner and "
        "dealer as 3 processes, 16-bit fixed point, same inputs; error vs float64 torch; "
        "rounds and MB sent per computing party, dealer MB for both parties together; "
        "ratios ours / CrypTen's baseline row):",
        "",
        "| op | shape | implementation | max abs error | rounds | MB sent / party | dealer MB "
        "| seconds | error ratio | rounds ratio | MB ratio | dealer ratio | time ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ops["rows"]:
        q = r["ratio_ours_over_crypten"] or {}
        tag = " (baseline)" if r["is_baseline"] else ""
        lines.append(
            f"| {r['op']} | {'x'.join(map(str, r['shape']))} | {_cell(r['implementation'])}{tag} "
            f"| {_fmt(r['max_abs_error'])} | {r['rounds']} | {_fmt(r['mb_sent_per_party'])} "
            f"| {_fmt(r['dealer_mb'])} | {_fmt(r['seconds'])} | "
            + " | ".join(_ratio(q.get(k)) for k in RATIO_KEYS)
            + " |"
        )
    stats = ops["inputs"]
    parts = []
    if "GELU" in stats:
        g = stats["GELU"]
        parts.append(f"GELU std {g['std']:.2f}, range [{g['min']:.1f}, {g['max']:.1f}]")
    if "softmax" in stats:
        parts.append(f"scores: max row spread {stats['softmax']['max_row_spread']:.1f}")
    if "LayerNorm" in stats:
        lo, hi = stats["LayerNorm"]["row_variance"]
        parts.append(f"LayerNorm row variances [{lo:.2g}, {hi:.2g}]")
    return [*lines, "", "Inputs: " + "; ".join(parts) + "."]


def _layer_table(layers: list[dict[str, Any]]) -> list[str]:
    lines = [
        "**One encoder layer** (BertLayer, batch 1, random seeded weights scaled to trained-"
        "model ranges; ours = the secinfer executor on the mpc backend, weights shared by the "
        "model owner and the input by the data owner; CrypTen = the same layer by hand with "
        "its built-ins, GELU as x sigmoid(1.702x); plain = torch float32, one thread). Ours "
        "opens its weights' Beaver masks once per model before the input exists (the offline "
        "row); its main row is one query, online; CrypTen opens every weight in every "
        "query, so its row is both in one:",
        "",
        "| layer | implementation | max abs error | cosine | rounds | MB sent / party "
        "| dealer MB | seconds | error ratio | rounds ratio | MB ratio | dealer ratio "
        "| time ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for layer in layers:
        s = layer["size"]
        name = f"{s['name']} (h {s['hidden']}, ffn {s['intermediate']}, seq {s['seq']})"
        if "error" in layer:
            lines.append(f"| {name} | {layer['error']} |" + " |" * 11)
            continue
        q = layer["ratio_ours_over_crypten"]
        today = "ours_crypten_comparisons"
        rows = [("ours", q), (today, layer.get(f"ratio_{today}_over_crypten"))]
        for key, ratio in [*rows, ("crypten", None)]:
            r = layer.get(key)
            if r is None:
                continue
            lines.append(
                f"| {name} | {r['implementation']} | {_fmt(r['max_abs_error'])} "
                f"| {r['cosine']:.5f} | {r['rounds']} | {_fmt(r['mb_sent_per_party'])} "
                f"| {_fmt(r['dealer_mb'])} | {_fmt(r['seconds'])} | "
                + " | ".join(_ratio(ratio.get(k)) if ratio else "-" for k in RATIO_KEYS)
                + " |"
            )
        spu = layer.get("spu")
        if spu and "error" in spu:
            lines.append(f"| {name} | SecretFlow-SPU: {spu['error']} |" + " |" * 11)
        elif spu:
            lines.append(
                f"| {name} | {spu['implementation']} | {_fmt(spu['max_abs_error'])} "
                f"| {spu['cosine']:.5f} | {spu['send_actions']} messages "
                f"| {_fmt(spu['mb_sent_per_party'])} | - | {_fmt(spu['seconds'])} |" + " - |" * 5
            )
        ours = layer["ours"]
        if "keys_ahead_each_repeat" in ours:
            i = ours["seconds_each_repeat"].index(ours["seconds"])
            ahead = ours["keys_ahead_each_repeat"][i]
            lines.append(
                f"| {name} | ours, its FSS keys dealt before the query's input (MB: forwarded "
                "by the model owner, offline; held until used: "
                f"{_fmt(ahead['held_mb_per_party'])} MB per party) | - | - | - "
                f"| {_fmt(ahead['offline_mb_sent_per_party'])} | {_fmt(ahead['dealer_mb'])} "
                f"| {_fmt(ahead['seconds'])} |" + " - |" * 5
            )
            lines.append(
                f"| {name} | ours, a session's first query (its FSS keys dealt as it asks: "
                f"{_fmt(ours['key_seconds_each_repeat'][0])} s of its seconds) | - | - | - "
                f"| - | - | {_fmt(ours['seconds_each_repeat'][0])} |" + " - |" * 5
            )
        off = layer["ours"].get("offline")
        if off:
            lines.append(
                f"| {name} | ours, offline: once per model, before any input "
                f"({off['weights_opened']} weights opened) | - | - | {off['rounds']} "
                f"| {_fmt(off['mb_sent_per_party'])} | {_fmt(off['dealer_mb'])} "
                f"| {_fmt(off['seconds'])} |" + " - |" * 5
            )
        lines.append(
            f"| {name} | plain torch float32 | - | - | - | - | - | {_fmt(layer['plain_seconds'])} "
            f"| - | - | - | - | - |"
        )
    return lines


def _notes(ops: dict[str, Any], layers: list[dict[str, Any]]) -> list[str]:
    """How traffic is counted, and what CrypTen's own decode would have got wrong."""
    measured = [layer for layer in layers if "error" not in layer]
    counted = "; ".join(
        f"{layer['size']['name']} ours "
        f"{layer['ours']['mb_sent_plus_received_per_party']:.0f} MB, CrypTen "
        f"{layer['crypten']['mb_sent_plus_received_per_party']:.0f} MB"
        for layer in measured
    )
    decode = [
        f"{layer['size']['name']} ours {sum(layer['ours']['crypten_decode_errors_each_repeat'])}"
        f", CrypTen {sum(layer['crypten']['crypten_decode_errors_each_repeat'])}"
        for layer in measured
    ]
    op_decode = sum(r["crypten_decode_errors"] for r in ops["rows"])
    return [
        "",
        "Rounds: calls in which a party waits for the other. MB: bytes one party sends, "
        "10^6 per MB; an all-reduce of n bytes counts n. CrypTen's own statistics "
        "(`comm_bytes`) count it as 2n, sent plus received; in that convention the rows "
        f"above are: {counted}.",
        "",
        "Outputs are opened as ring integers and decoded exactly. CrypTen's own decode "
        "(`get_plain_text`) puts some negative values just above an integer exactly 1.0 too "
        "low (it divides negatives by 2^16 - 1); on this run's outputs it would have got "
        f"{op_decode} op output elements wrong and, over all repeats, these layer output "
        f"elements: {'; '.join(decode) or '-'}.",
    ]


def _layer_costs(layer: dict[str, Any]) -> list[str]:
    """Where one layer's cost goes: the dominant ops, the ranges inside, cost by op."""
    s, i = layer["size"], layer["internals"]
    lo, hi = i["layer_norm_variance"]
    ours, theirs = layer["ours_by_op"], layer["crypten_by_stage"]
    total_mb = sum(e["mb_sent_per_party"] for e in ours.values()) or 1.0
    total_rounds = sum(e["rounds"] for e in ours.values()) or 1
    most_mb = max(ours, key=lambda k: ours[k]["mb_sent_per_party"])
    most_rounds = max(ours, key=lambda k: ours[k]["rounds"])
    lines = [
        "",
        f"{s['name']}, ours: {most_mb} has "
        f"{100 * ours[most_mb]['mb_sent_per_party'] / total_mb:.0f} % of the bytes, "
        f"{most_rounds} {100 * ours[most_rounds]['rounds'] / total_rounds:.0f} % of "
        f"the rounds. GELU inputs std {i['gelu_input']['std']:.2f} (max |x| "
        f"{i['gelu_input']['max_abs']:.1f}), attention scores std "
        f"{i['attention_scores']['std']:.2f} (max row spread "
        f"{i['attention_scores']['max_row_spread']:.1f}), LayerNorm variances "
        f"[{lo:.2g}, {hi:.2g}]; peak memory per party "
        f"{max(layer['peak_rss_mb'].values()):.0f} MB. Cost by op (rounds / MB sent per "
        "party / seconds), ours | ours with CrypTen's comparisons | CrypTen:",
        "",
        "| op | ours rounds | ours MB | ours s | (CrypTen's comparisons) rounds | MB | s "
        "| CrypTen rounds | CrypTen MB | CrypTen s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    fss = layer.get("ours_crypten_comparisons_by_op", {})
    for op in ("matmul", "softmax", "layer_norm", "gelu", "other", "sharing"):
        a, f, b = ours.get(op), fss.get(op), theirs.get(op)
        if a is None and b is None:
            continue
        cells = []
        for entry in (a, f, b):
            if entry is None:
                cells += ["-", "-", "-"]
            else:
                cells += [
                    str(int(entry["rounds"])),
                    _fmt(entry["mb_sent_per_party"]),
                    _fmt(entry["seconds"]),
                ]
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    return lines


def _published_table(published: list[dict[str, Any]], layers: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "**Published / measured elsewhere** (NOT measured in this run; other set-ups, other "
        "networks; for orientation only, never compared by ratio with the rows above):",
        "",
        "| source | system | layer | MB per party, as reported | counting | rounds "
        "| max error | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    measured = {layer["size"]["name"]: layer for layer in layers if "error" not in layer}
    for p in published:
        counting = p["counting"] or "-"
        same = next((m for name, m in measured.items() if p["layer"].startswith(name)), None)
        if p["counting"] == CRYPTEN_COUNT and same is not None:
            counting += (
                "; this run's CrypTen layer counted so: "
                f"{same['crypten']['mb_sent_plus_received_per_party']:.0f} MB"
            )
        lines.append(
            f"| {p['source']} | {p['system']} | {p['layer']} "
            f"| {_fmt(p['mb_per_party_as_reported'])} | {counting} "
            f"| {p['rounds'] or '-'} | {_fmt(p['max_error'])} | {_fmt(p['seconds'])} |"
        )
    return lines


def _two_quad_note(measured: dict[str, Any] | None) -> list[str]:
    """The 2Quad row's model-level figure (`benchmarks.two_quad`)."""
    if not measured:
        return []
    return [
        "",
        f"2Quad without fine-tuning, on {measured['model']} ({measured['examples']} examples, "
        f"float64): accuracy {measured['accuracy_2quad']:.1%} against "
        f"{measured['accuracy_softmax']:.1%} with its softmax, logits moved by up to "
        f"{measured['logits_max_abs_change']:.2f}; MPCFormer distils a model into 2Quad, "
        "which this toolkit does not do.",
    ]


def markdown(record: dict[str, Any]) -> str:
    """The whole MPC section's markdown (what `records.write` saves as mpc.md)."""
    ops, layers = record["ops"], record["layers"]
    lines = []
    if record.get("quick"):
        lines += [
            "_Quick run at tiny shapes: checks that everything runs; these are not the "
            "benchmark's figures._",
            "",
        ]
    lines += [*_ops_table(ops), *_two_quad_note(record.get("two_quad_model")), ""]
    lines += [*_layer_table(layers), *_notes(ops, layers)]
    for layer in layers:
        if "error" not in layer:
            lines += _layer_costs(layer)
    if record.get("model"):
        from benchmarks.mpc_model import markdown as model_markdown

        lines += model_markdown(record["model"])
    lines += _published_table(record["published_elsewhere"], layers)
    code = record.get("code") or {}
    if code.get("commit"):
        changed = ", ".join(code.get("modified", [])) or "none"
        date = record.get("meta", {}).get("date", "")
        lines += [
            "",
            f"_Measured {date} on commit {code['commit'][:10]}; tracked files changed since: "
            f"{changed}._",
        ]
    return "\n".join(lines)


__all__ = ["markdown"]
