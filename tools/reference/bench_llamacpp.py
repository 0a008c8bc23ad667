#!/usr/bin/env python3
"""Host benchmark: Tessera's `tessera generate` against llama.cpp (PyPI `llama-cpp-python`) on
the same GGUF and prompt, single-threaded, greedy, side by side in one run.

Reports, for each, decode tokens/s (prompt excluded) after a short prompt, and prompt
processing tokens/s on a prompt of about 130 tokens, with the ratios tessera / llama.cpp. Run from the repository root after `cargo build --release -p cli`:

  python3 tools/reference/bench_llamacpp.py [MODEL] [--tessera PATH] [--tokens N] [--runs R]
"""

import argparse
import re
import subprocess
import time
from pathlib import Path

PROMPT = "Once upon a time, in a small village by the sea,"

# About 130 tokens of plain prose, for prompt processing.
LONG_PROMPT = (
    "The harbour town woke slowly that spring. Fishermen mended their nets on the stone quay "
    "while the bakers opened their shutters and the smell of bread drifted over the water. "
    "Children ran between the stalls of the market, where farmers from the hills sold cheese, "
    "apples and wool. An old lighthouse keeper, who had watched the sea for forty years, "
    "climbed the hill each morning to count the boats leaving the bay. He kept a notebook of "
    "every storm, every wreck and every rescue, and the young sailors came to him for advice "
    "before they set out. One morning he saw a ship he did not know, with grey sails and no "
    "flag, waiting just beyond the rocks."
)


def tessera_run(binary, model, prompt, tokens, precision):
    """The prompt and decode tokens/s that `tessera generate` reports, and the tokens of each."""
    result = subprocess.run(
        [binary, "generate", model, "--prompt", prompt, "--steps", str(tokens), "--threads", "1",
         "--precision", precision],
        capture_output=True, text=True, check=True,
    )
    match = re.search(
        r"prompt: (\d+) tokens in [\d.]+ s \(([\d.]+) tokens/s\); "
        r"generated: (\d+) tokens in [\d.]+ s \(([\d.]+) tokens/s\)",
        result.stderr,
    )
    if not match:
        raise RuntimeError(f"unexpected tessera output: {result.stderr}")
    return float(match.group(2)), int(match.group(1)), float(match.group(4)), int(match.group(3))


def tessera_rate(binary, model, tokens, precision):
    """Decode tokens/s of `tessera generate` after the short prompt."""
    _, _, rate, count = tessera_run(binary, model, PROMPT, tokens, precision)
    return rate, count


def tessera_prompt_rate(binary, model, precision):
    """Prompt processing tokens/s of `tessera generate` on the long prompt."""
    rate, count, _, _ = tessera_run(binary, model, LONG_PROMPT, 1, precision)
    return rate, count


def llamacpp_prompt_rate(model):
    """Prompt processing tokens/s of llama.cpp: one eval of the long prompt's tokens."""
    from llama_cpp import Llama

    llm = Llama(model_path=model, n_threads=1, n_threads_batch=1, n_ctx=512, n_batch=512, verbose=False)
    tokens = llm.tokenize(LONG_PROMPT.encode(), add_bos=False)
    started = time.perf_counter()
    llm.eval(tokens)
    return len(tokens) / (time.perf_counter() - started), len(tokens)


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


def shown(path, root):
    """`path` relative to the repository when it lies inside it, as the report prints it."""
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


def main():
    root = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=str(root / "build/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--tessera", default=str(root / "target/release/tessera"))
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    engines = [
        ("tessera (int16, the default)", "int16"),
        ("tessera (float activations)", "float"),
        ("tessera (int8 activations)", "int8"),
        ("llama.cpp", None),
    ]
    for title, tessera_measure, llamacpp_measure in [
        ("decode", lambda precision: tessera_rate(args.tessera, args.model, args.tokens, precision),
         lambda: llamacpp_rate(args.model, args.tokens)),
        ("prompt processing", lambda precision: tessera_prompt_rate(args.tessera, args.model, precision),
         lambda: llamacpp_prompt_rate(args.model)),
    ]:
        rows = []
        for name, precision in engines:
            if precision is None:
                measure = llamacpp_measure
            else:
                measure = lambda: tessera_measure(precision)  # noqa: E731
            # Interleaving would be fairer on a noisy machine; the best of R runs is reported.
            results = [measure() for _ in range(args.runs)]
            rows.append((name, max(rate for rate, _ in results), results[0][1]))
        reference = rows[-1][1]
        print(f"{title}: model {shown(args.model, root)}, 1 thread, greedy, best of {args.runs}")
        print(f"{'engine':<30} {'tokens':>7} {'tokens/s':>10} {'vs llama.cpp':>13}")
        for name, rate, count in rows:
            print(f"{name:<30} {count:>7} {rate:>10.1f} {rate / reference:>12.2f}x")
        print()


if __name__ == "__main__":
    main()
