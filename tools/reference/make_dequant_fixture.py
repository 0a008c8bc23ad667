#!/usr/bin/env python3
"""Writes kernel/tests/fixtures/dequant.gguf: quantized tensors and the values the PyPI
`gguf` package dequantizes them to, plus one metadata entry of every GGUF value type.

For each type T in F16, Q8_0, Q4_0, Q4_1 the file holds `T.data` (quantized by gguf) and
`T.expected` (F32, gguf's dequantization of exactly those bytes). The Rust test dequantizes
`T.data` and compares bit for bit.

Usage: python3 tools/reference/make_dequant_fixture.py [OUT]
"""

import sys
from pathlib import Path

import numpy as np
import gguf
from gguf.quants import dequantize, quantize

QUANT_TYPES = [
    gguf.GGMLQuantizationType.F16,
    gguf.GGMLQuantizationType.Q8_0,
    gguf.GGMLQuantizationType.Q4_0,
    gguf.GGMLQuantizationType.Q4_1,
]


def sample_values(rng: np.random.Generator) -> np.ndarray:
    """Four blocks of 32 with varied ranges, plus constant, zero and tiny blocks."""
    blocks = [
        rng.normal(0.0, 1.0, 32),
        rng.uniform(-100.0, 100.0, 32),
        rng.normal(0.0, 1e-3, 32),
        np.linspace(-2.0, 5.0, 32),
        np.full(32, 0.75),
        np.zeros(32),
        rng.normal(0.0, 1e-6, 32),
        rng.uniform(0.0, 60000.0, 32),
    ]
    return np.concatenate(blocks).astype(np.float32).reshape(4, 64)


def main() -> None:
    if any(argument in ("-h", "--help") for argument in sys.argv[1:]):
        print(__doc__.strip())
        return
    root = Path(__file__).resolve().parents[2]
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "kernel/tests/fixtures/dequant.gguf"
    rng = np.random.default_rng(20261127)
    writer = gguf.GGUFWriter(str(out), "fixture")
    writer.add_uint8("fixture.u8", 200)
    writer.add_int8("fixture.i8", -100)
    writer.add_uint16("fixture.u16", 60000)
    writer.add_int16("fixture.i16", -30000)
    writer.add_uint32("fixture.u32", 4000000000)
    writer.add_int32("fixture.i32", -2000000000)
    writer.add_float32("fixture.f32", 1.5)
    writer.add_bool("fixture.bool", True)
    writer.add_string("fixture.string", "héllo ✓")
    writer.add_uint64("fixture.u64", 2**63 + 5)
    writer.add_int64("fixture.i64", -(2**62))
    writer.add_float64("fixture.f64", -0.125)
    writer.add_array("fixture.strings", ["a", "bc", "<|im_start|>"])
    writer.add_array("fixture.ints", [1, -2, 3])
    writer.add_array("fixture.nested", [[1, 2], [3]])
    for quant_type in QUANT_TYPES:
        values = sample_values(rng)
        data = quantize(values, quant_type)
        expected = dequantize(data, quant_type).astype(np.float32)
        writer.add_tensor(f"{quant_type.name}.data", data, raw_dtype=quant_type)
        writer.add_tensor(f"{quant_type.name}.expected", expected)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
