//! Checks the GGUF parser and the dequantizers against a fixture written by the PyPI `gguf`
//! package (tools/reference/make_dequant_fixture.py): every metadata value type, and F16,
//! Q8_0, Q4_0 and Q4_1 dequantized bit for bit as `gguf` does.

use kernel::model::gguf::{GgufFile, Value, ValueType};
use kernel::model::quant::dequantize;
use kernel::model::{TensorType, TensorView};

const FIXTURE: &[u8] = include_bytes!("fixtures/dequant.gguf");

fn floats(view: &TensorView<'_>) -> Vec<f32> {
    view.data.chunks_exact(4).map(|bytes| f32::from_le_bytes(bytes.try_into().unwrap())).collect()
}

#[test]
fn dequantization_is_bit_exact_against_gguf() {
    let file = GgufFile::parse(FIXTURE).unwrap();
    for (name, tensor_type) in [
        ("F16", TensorType::F16),
        ("Q8_0", TensorType::Q8_0),
        ("Q4_0", TensorType::Q4_0),
        ("Q4_1", TensorType::Q4_1),
    ] {
        let data = file.tensor(&format!("{name}.data")).unwrap();
        let expected = floats(&file.tensor(&format!("{name}.expected")).unwrap());
        assert_eq!(data.tensor_type, tensor_type);
        assert_eq!((data.dimensions[0], data.dimensions[1]), (64, 4));
        let mut values = vec![0.0f32; data.elements()];
        assert_eq!(dequantize(tensor_type, data.data, &mut values), 256);
        let mismatches: Vec<_> = values
            .iter()
            .zip(&expected)
            .enumerate()
            .filter(|(_, (got, want))| got.to_bits() != want.to_bits())
            .collect();
        assert!(mismatches.is_empty(), "{name}: {} mismatches, first {:?}", mismatches.len(), mismatches[0]);
        // Row views agree with whole-tensor dequantization.
        let matrix = data.matrix();
        let mut row = vec![0.0f32; 64];
        matrix.dequantize_row(3, &mut row);
        assert_eq!(row, values[192..256]);
    }
}

#[test]
fn every_metadata_type_reads_back() {
    let file = GgufFile::parse(FIXTURE).unwrap();
    assert_eq!(file.version, 3);
    assert_eq!(file.get("fixture.u8"), Some(&Value::U8(200)));
    assert_eq!(file.get("fixture.i8"), Some(&Value::I8(-100)));
    assert_eq!(file.get("fixture.u16"), Some(&Value::U16(60000)));
    assert_eq!(file.get("fixture.i16"), Some(&Value::I16(-30000)));
    assert_eq!(file.get("fixture.u32"), Some(&Value::U32(4_000_000_000)));
    assert_eq!(file.get("fixture.i32"), Some(&Value::I32(-2_000_000_000)));
    assert_eq!(file.get("fixture.f32"), Some(&Value::F32(1.5)));
    assert_eq!(file.get("fixture.bool"), Some(&Value::Bool(true)));
    assert_eq!(file.get("fixture.string"), Some(&Value::String("héllo ✓")));
    assert_eq!(file.get("fixture.u64"), Some(&Value::U64((1 << 63) + 5)));
    assert_eq!(file.get("fixture.i64"), Some(&Value::I64(-(1 << 62))));
    assert_eq!(file.get("fixture.f64"), Some(&Value::F64(-0.125)));
    let strings: Vec<&str> = file.array("fixture.strings").unwrap().unwrap().strings().unwrap().collect();
    assert_eq!(strings, ["a", "bc", "<|im_start|>"]);
    let ints: Vec<Value> = file.array("fixture.ints").unwrap().unwrap().iter().collect();
    assert_eq!(ints, [Value::I32(1), Value::I32(-2), Value::I32(3)]);
    let nested = file.array("fixture.nested").unwrap().unwrap();
    assert_eq!(nested.element_type, ValueType::Array);
    let lengths: Vec<usize> = nested.iter().map(|inner| inner.as_array().unwrap().count).collect();
    assert_eq!(lengths, [2, 1]);
    assert!(file.string("fixture.u8").is_err(), "a key of another type is an error");
    assert_eq!(file.string("absent").unwrap(), None);
}
