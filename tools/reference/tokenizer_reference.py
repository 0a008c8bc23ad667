#!/usr/bin/env python3
"""Reference tokenizer for Tessera's byte-level BPE, built with the PyPI `tokenizers` package
from the vocabulary, merges and token types stored in a GGUF file's metadata.

Pre-tokenization is SmolLM2's: digits split one by one, then GPT-2 byte-level splitting;
control and user-defined tokens are matched verbatim in the text. No BOS is added.

Reads one JSON string per line on stdin and prints one JSON list of token ids per line.

Usage: tokenizer_reference.py MODEL.gguf < texts.jsonl
"""

import json
import sys

import gguf
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

CONTROL, USER_DEFINED = 3, 4


def strings(field):
    return [bytes(field.parts[index]).decode("utf-8") for index in field.data]


def integers(field):
    return [int(field.parts[index][0]) for index in field.data]


def build(path):
    reader = gguf.GGUFReader(path)
    fields = reader.fields
    tokens = strings(fields["tokenizer.ggml.tokens"])
    merges = [tuple(merge.split(" ", 1)) for merge in strings(fields["tokenizer.ggml.merges"])]
    types = integers(fields["tokenizer.ggml.token_type"]) if "tokenizer.ggml.token_type" in fields else []
    unknown = None
    if "tokenizer.ggml.unknown_token_id" in fields:
        unknown = tokens[integers(fields["tokenizer.ggml.unknown_token_id"])[0]]
    vocab = {}
    for index, token in enumerate(tokens):
        vocab.setdefault(token, index)
    model = models.BPE(vocab=vocab, merges=merges, unk_token=unknown, fuse_unk=False, byte_fallback=False)
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    specials = [tokens[i] for i, kind in enumerate(types) if kind in (CONTROL, USER_DEFINED)]
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    return tokenizer


def main():
    if any(argument in ("-h", "--help") for argument in sys.argv[1:]):
        print(__doc__.strip())
        return
    if len(sys.argv) != 2:
        sys.exit("usage: tokenizer_reference.py MODEL.gguf < texts.jsonl")
    tokenizer = build(sys.argv[1])
    for line in sys.stdin:
        text = json.loads(line)
        print(json.dumps(tokenizer.encode(text, add_special_tokens=False).ids), flush=True)


if __name__ == "__main__":
    main()
