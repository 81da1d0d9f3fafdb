"""Print the on-paper sizing tables of docs/scaling.md: memory per device and bytes moved per step.

Usage: ``python scripts/scaling_table.py`` (pure arithmetic, no JAX). Model shapes: the shipped 2B4T
config, and LLaMA-shaped 7B / 70B (the shapes the BitNet b1.58 paper scales to).
"""

from __future__ import annotations

import dataclasses
import math

MESHES = (8, 16, 32, 64, 128, 256)
GB = 1e9
MB = 1e6


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    d: int  # hidden
    i: int  # intermediate
    layers: int
    heads: int
    kv: int
    vocab: int
    tied: bool
    hd: int = 128

    @property
    def ternary(self) -> int:
        """Ternary weights (q, k, v, o, gate, up, down over all layers)."""
        attn = 2 * self.d * self.heads * self.hd + 2 * self.d * self.kv * self.hd
        return self.layers * (attn + 3 * self.d * self.i)

    @property
    def float_params(self) -> int:
        """Embedding (+ untied head); norms are negligible."""
        return self.vocab * self.d * (1 if self.tied else 2)

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """KV cache bytes per cached token of one sequence."""
        return 2 * self.layers * self.kv * self.hd * dtype_bytes


MODELS = (
    Shape("2B (2B4T)", 2560, 6912, 30, 20, 5, 128256, True),
    Shape("7B", 4096, 11008, 32, 32, 32, 32000, False),
    Shape("70B", 8192, 28672, 80, 64, 8, 32000, False),
)


def fmt(nbytes: float) -> str:
    return f"{nbytes / GB:.2f} GB" if nbytes >= GB else f"{nbytes / MB:.1f} MB"


def models_table() -> str:
    rows = ["| model | ternary weights | packed (2 bit) | bf16 | f32 | embedding/head bf16 (inference) / f32 (training) "
            "| KV / token (bf16) |", "|---|---|---|---|---|---|---|"]
    for m in MODELS:
        rows.append(
            f"| {m.name} | {m.ternary / 1e9:.2f} B | {fmt(m.ternary / 4)} | {fmt(2 * m.ternary)} | "
            f"{fmt(4 * m.ternary)} | {fmt(2 * m.float_params)} / {fmt(4 * m.float_params)} | "
            f"{m.kv_bytes_per_token() / 1e3:.0f} KB |"
        )
    return "\n".join(rows)


def inference_table(context: int = 4096, batch: int = 8) -> str:
    head = "| model | " + " | ".join(f"T={t}" for t in MESHES) + " |"
    rows = [head, "|---|" + "---|" * len(MESHES)]
    for m in MODELS:
        cells = []
        for t in MESHES:
            weights = m.ternary / 4 / t + 2 * m.float_params / t  # the embedding/head loads in bf16
            kv = m.kv_bytes_per_token() * context * batch / math.gcd(t, m.kv)  # KV heads split where they divide
            cells.append(f"{fmt(weights)} + {fmt(kv)}")
        rows.append(f"| {m.name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def tp_traffic_table(batch: int = 1) -> str:
    rows = ["| model | column split (now): all-reduces / token | bytes / token | row+column split (proposed) | bytes / token |",
            "|---|---|---|---|---|"]
    for m in MODELS:
        col = m.heads * m.hd + 2 * m.kv * m.hd + 2 * m.i + 2 * m.d
        row = 2 * m.d
        rows.append(
            f"| {m.name} | {4 * m.layers} | {fmt(4 * col * m.layers * batch)} | {2 * m.layers} | "
            f"{fmt(4 * row * m.layers * batch)} |"
        )
    return "\n".join(rows)


def fsdp_table() -> str:
    head = "| model | per step | " + " | ".join(f"F={f}" for f in MESHES) + " |"
    rows = [head, "|---|---|" + "---|" * len(MESHES)]
    for m in MODELS:
        n = m.ternary + m.float_params
        rows.append(f"| {m.name} | state (f32 weights + Adam + grads) | " + " | ".join(fmt(16 * n / f) for f in MESHES) + " |")
        for label, b in (("ternary all-gather, packed 2 bit", 0.25), ("ternary all-gather, bf16", 2),
                         ("ternary all-gather, f32", 4)):
            # gathered twice a step: forward, and again for the backward pass (weights not kept)
            cells = [fmt(2 * m.ternary * b * (f - 1) / f) for f in MESHES]
            rows.append(f"| | {label} | " + " | ".join(cells) + " |")
        rows.append("| | embedding/head all-gather, f32 | " + " | ".join(
            fmt(2 * 4 * m.float_params * (f - 1) / f) for f in MESHES) + " |")
        cells = [fmt(4 * n * (f - 1) / f) for f in MESHES]
        rows.append("| | reduce-scatter f32 grads | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    print("## Models\n\n" + models_table())
    print("\n## Inference, tensor-parallel over T devices: weights + KV cache (batch 8 x 4096 tokens, bf16)\n")
    print(inference_table())
    print("\n## Tensor-parallel activation traffic per generated token (batch 1, f32 partial sums)\n")
    print(tp_traffic_table())
    print("\n## FSDP training over F devices: resident state and bytes received per device per step\n")
    print(fsdp_table())


if __name__ == "__main__":
    main()
