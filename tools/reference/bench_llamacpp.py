#!/usr/bin/env python3
"""Host benchmark: Tessera's `tessera generate` against llama.cpp (PyPI `llama-cpp-python`) on
the same GGUF and prompt, single-threaded, greedy, side by side in one run.

Reports decode tokens/s of each (prompt processing excluded) and the ratio
tessera / llama.cpp. Run from the repository root after `cargo build --release -p cli`:

  python3 tools/reference/bench_llamacpp.py [MODEL] [--tessera PATH] [--tokens N] [--runs R]
"""

import argparse
import re
import subprocess
import time
from pathlib import Path

PROMPT = "Once upon a time, in a small village by the sea,"


def tessera_rate(binary, model, tokens, precision):
    """Decode tokens/s that `tessera generate` reports."""
    result = subprocess.run(
        [binary, "generate", model, "--prompt", PROMPT, "--steps", str(tokens), "--threads", "1",
         "--precision", precision],
        capture_output=True, text=True, check=True,
    )
    match = re.search(r"generated: (\d+) tokens in [\d.]+ s \(([\d.]+) tokens/s\)", result.stderr)
    if not match:
        raise RuntimeError(f"unexpected tessera output: {result.stderr}")
    return float(match.group(2)), int(match.group(1))


def llamacpp_rate(model, tokens):
    """Decode tokens/s of llama.cpp: time from the first streamed token to the last."""
    from llama_cpp import Llama

    llm = Llama(model_path=model, n_threads=1, n_threads_batch=1, n_ctx=512, verbose=False)
    stamps = []
    for _ in llm.create_completion(PROMPT, max_tokens=tokens, temperature=0.0, stream=True):
        stamps.append(time.perf_counter())
    if len(stamps) < 2:
        raise RuntimeError("llama.cpp produced fewer than two tokens")
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]), len(stamps)


def main():
    root = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=str(root / "build/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--tessera", default=str(root / "target/release/tessera"))
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    rows = []
    for name, measure in [
        ("tessera (int16, the default)", lambda: tessera_rate(args.tessera, args.model, args.tokens, "int16")),
        ("tessera (float activations)", lambda: tessera_rate(args.tessera, args.model, args.tokens, "float")),
        ("tessera (int8 activations)", lambda: tessera_rate(args.tessera, args.model, args.tokens, "int8")),
        ("llama.cpp", lambda: llamacpp_rate(args.model, args.tokens)),
    ]:
        # Interleaving would be fairer on a noisy machine; the best of R runs is reported.
        results = [measure() for _ in range(args.runs)]
        rows.append((name, max(rate for rate, _ in results), results[0][1]))

    reference = rows[-1][1]
    print(f"model {args.model}, prompt {PROMPT!r}, 1 thread, greedy, best of {args.runs}")
    print(f"{'engine':<30} {'tokens':>7} {'decode tokens/s':>16} {'vs llama.cpp':>13}")
    for name, rate, count in rows:
        print(f"{name:<30} {count:>7} {rate:>16.1f} {rate / reference:>12.2f}x")


if __name__ == "__main__":
    main()
