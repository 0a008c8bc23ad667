#!/usr/bin/env python3
"""Independent numpy reference of the llama forward pass, for checking Tessera's engine.

Reads a llama2.c checkpoint (own parser) or a GGUF file (through the PyPI `gguf` package,
which also dequantizes), runs the whole token sequence at once with a causal mask in float64,
and writes the logits of every position as little-endian float32, positions x vocab: the
same layout as `tessera logits`.

Usage:
  reference.py MODEL --tokens 1,2,3 --out FILE
  reference.py MODEL --tokens 1,2,3 --greedy N     (print N greedy continuation tokens)
"""

import argparse
import sys

import numpy as np


class Model:
    """Hyperparameters and float64 weights; matrices are (out, in)."""

    def __init__(self, config, tensors):
        self.__dict__.update(config)
        self.t = tensors


def load_llama2c(path):
    raw = np.fromfile(path, dtype=np.uint8)
    header = raw[:28].view(np.int32)
    dim, hidden, layers, heads, kv_heads, vocab, seq = (int(v) for v in header)
    shared = vocab > 0
    vocab = abs(vocab)
    head = dim // heads
    kv = kv_heads * head
    values = raw[28:].view(np.float32).astype(np.float64)
    at = 0

    def take(*shape):
        nonlocal at
        count = int(np.prod(shape))
        block = values[at : at + count].reshape(shape)
        at += count
        return block

    t = {"embed": take(vocab, dim)}
    t["attn_norm"] = take(layers, dim)
    t["wq"] = take(layers, dim, dim)
    t["wk"] = take(layers, kv, dim)
    t["wv"] = take(layers, kv, dim)
    t["wo"] = take(layers, dim, dim)
    t["ffn_norm"] = take(layers, dim)
    t["w1"] = take(layers, hidden, dim)
    t["w2"] = take(layers, dim, hidden)
    t["w3"] = take(layers, hidden, dim)
    t["final_norm"] = take(dim)
    take(seq, head)
    t["classifier"] = t["embed"] if shared else take(vocab, dim)
    config = dict(dim=dim, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, vocab=vocab,
                  seq=seq, rope_base=10000.0, eps=1e-5)
    return Model(config, t)


def load_gguf(path):
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(path)

    def field(key, default=None):
        if key not in reader.fields:
            return default
        f = reader.fields[key]
        return f.parts[f.data[0]][0].item()

    def tensor(name):
        for t in reader.tensors:
            if t.name == name:
                values = dequantize(t.data, t.tensor_type).astype(np.float64)
                shape = tuple(int(d) for d in reversed(t.shape))
                return values.reshape(shape)
        return None

    layers = int(field("llama.block_count"))
    config = dict(
        dim=int(field("llama.embedding_length")),
        hidden=int(field("llama.feed_forward_length")),
        layers=layers,
        heads=int(field("llama.attention.head_count")),
        kv_heads=int(field("llama.attention.head_count_kv", field("llama.attention.head_count"))),
        seq=int(field("llama.context_length")),
        rope_base=float(field("llama.rope.freq_base", 10000.0)),
        eps=float(field("llama.attention.layer_norm_rms_epsilon", 1e-5)),
    )
    t = {"embed": tensor("token_embd.weight")}
    config["vocab"] = t["embed"].shape[0]
    names = {"attn_norm": "attn_norm", "wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_output",
             "ffn_norm": "ffn_norm", "w1": "ffn_gate", "w2": "ffn_down", "w3": "ffn_up"}
    for key, name in names.items():
        t[key] = np.stack([tensor(f"blk.{i}.{name}.weight") for i in range(layers)])
    t["final_norm"] = tensor("output_norm.weight")
    output = tensor("output.weight")
    t["classifier"] = t["embed"] if output is None else output
    return Model(config, t)


def load(path):
    with open(path, "rb") as f:
        magic = f.read(4)
    return load_gguf(path) if magic == b"GGUF" else load_llama2c(path)


def rms_norm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rotate(x, positions, base):
    """Rotary embedding on adjacent pairs of each head. x: (tokens, heads, head_dim)."""
    head_dim = x.shape[-1]
    frequencies = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = positions[:, None] * frequencies[None, :]
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def forward(model, tokens):
    """Logits (tokens, vocab) for the whole sequence, causal attention."""
    m, t = model, model.t
    n = len(tokens)
    head = m.dim // m.heads
    group = m.heads // m.kv_heads
    positions = np.arange(n, dtype=np.float64)
    mask = np.triu(np.full((n, n), -np.inf), k=1)
    x = t["embed"][tokens]
    for layer in range(m.layers):
        h = rms_norm(x, t["attn_norm"][layer], m.eps)
        q = (h @ t["wq"][layer].T).reshape(n, m.heads, head)
        k = (h @ t["wk"][layer].T).reshape(n, m.kv_heads, head)
        v = (h @ t["wv"][layer].T).reshape(n, m.kv_heads, head)
        q, k = rotate(q, positions, m.rope_base), rotate(k, positions, m.rope_base)
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(head) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        attended = np.einsum("hqk,khd->qhd", scores, v).reshape(n, m.dim)
        x = x + attended @ t["wo"][layer].T
        h = rms_norm(x, t["ffn_norm"][layer], m.eps)
        gate, up = h @ t["w1"][layer].T, h @ t["w3"][layer].T
        x = x + (gate / (1.0 + np.exp(-gate)) * up) @ t["w2"][layer].T
    return rms_norm(x, t["final_norm"], m.eps) @ t["classifier"].T


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--tokens", required=True, help="comma-separated token ids")
    parser.add_argument("--out", help="write logits here (little-endian f32, positions x vocab)")
    parser.add_argument("--greedy", type=int, default=0, help="print this many greedy continuation tokens")
    args = parser.parse_args()
    model = load(args.model)
    tokens = [int(token) for token in args.tokens.split(",") if token]
    if args.out:
        forward(model, tokens).astype("<f4").tofile(args.out)
    for _ in range(args.greedy):
        tokens.append(int(np.argmax(forward(model, tokens)[-1])))
        print(tokens[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
