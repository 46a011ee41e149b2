//! `GgufFile` (mirrors `src/io/gguf/`): a GGUF file written by the `gguf` package, llama.cpp's
//! own writer (`tests/fixtures/gguf/make_quant_types.py`), reads as that package reads it: every
//! metadata value with its type, every tensor of every type burn-lora reads dequantized bit for
//! bit as the package dequantizes it (what transformers loads). Every damaged file is an error,
//! never a panic.

use std::path::PathBuf;

use crate::common::safetensors_io::read_raw;
use burn_lora::{GgufFile, GgufValue, LoraError};
use burn_lora_support::fixtures::repository_root;

fn fixture(name: &str) -> PathBuf {
    let path = repository_root().join("tests/fixtures/gguf").join(name);
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn every_tensor_type_dequantizes_bit_for_bit_as_the_gguf_package_does() {
    let gguf = GgufFile::open(&fixture("quant_types.gguf")).unwrap();
    assert_eq!(gguf.version(), 3);
    let expected = read_raw(&fixture("quant_types_expected.safetensors"));
    assert_eq!(expected.len(), 12);
    assert_eq!(gguf.tensors().len(), expected.len());
    for raw in &expected {
        let tensor = &gguf.tensors()[raw.key.as_str()];
        assert_eq!(
            tensor.type_name(),
            raw.key,
            "the tensors are named by their type"
        );
        assert_eq!(tensor.shape(), [4, 512]);
        assert!(tensor.is_readable());
        let data = gguf.tensor_data(&raw.key).unwrap();
        assert_eq!(data.shape.to_vec(), vec![4, 512]);
        let values: Vec<f32> = data.to_vec().unwrap();
        let want = raw.f32_values();
        let same = bits(&values) == bits(&want);
        let first = values
            .iter()
            .zip(&want)
            .position(|(a, b)| a.to_bits() != b.to_bits());
        assert!(same, "{}: value {first:?} differs", raw.key);
    }
}

#[test]
fn every_metadata_type_reads_with_its_value() {
    let gguf = GgufFile::open(&fixture("quant_types.gguf")).unwrap();
    let get = |key: &str| {
        gguf.get(key)
            .unwrap_or_else(|| panic!("{key} is missing"))
            .clone()
    };
    assert_eq!(
        get("general.architecture"),
        GgufValue::String("test".into())
    );
    assert_eq!(get("test.u8"), GgufValue::U8(200));
    assert_eq!(get("test.i8"), GgufValue::I8(-100));
    assert_eq!(get("test.u16"), GgufValue::U16(60000));
    assert_eq!(get("test.i16"), GgufValue::I16(-30000));
    assert_eq!(get("test.u32"), GgufValue::U32(4_000_000_000));
    assert_eq!(get("test.i32"), GgufValue::I32(-2_000_000_000));
    assert_eq!(get("test.u64"), GgufValue::U64((1 << 63) + 5));
    assert_eq!(get("test.i64"), GgufValue::I64(-(1 << 62)));
    assert_eq!(get("test.f32"), GgufValue::F32(0.1));
    assert_eq!(get("test.f64"), GgufValue::F64(-2.5e-300));
    assert_eq!(get("test.bool"), GgufValue::Bool(true));
    assert_eq!(get("test.string").as_str(), Some("ünïcödé ✓"));
    let ints: Vec<i64> = get("test.ints")
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(ints, [3, 1, 4, 1, 5]);
    let strings: Vec<String> = get("test.strings")
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(strings, ["a", "", "Ġthe"]);
    let nested = get("test.nested");
    let nested: Vec<Vec<i64>> = nested
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(nested, [vec![1, 2], vec![3]]);
    // The accessors widen integers and refuse what does not fit.
    assert_eq!(get("test.i8").as_u64(), None);
    assert_eq!(get("test.u64").as_i64(), None);
    assert_eq!(get("test.u16").as_f64(), Some(60000.0));
}

#[test]
fn every_truncation_of_the_file_is_an_error_naming_it() {
    let bytes = std::fs::read(fixture("quant_types.gguf")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.gguf");
    // Every cut inside the header, metadata and tensor table, and some in the data.
    let cuts = (0..1200).chain((1200..bytes.len()).step_by(997));
    for cut in cuts {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = GgufFile::open(&path).unwrap_err();
        assert!(
            matches!(&err, LoraError::InvalidFile { path: p, format, .. }
                if p.ends_with("cut.gguf") && format == "GGUF"),
            "cut at {cut}: {err:?}"
        );
    }
}

/// A change to a file's bytes.
type Edit = Box<dyn FnOnce(&mut Vec<u8>)>;

/// The fixture with `edit` applied to its bytes, opened.
fn open_edited(edit: impl FnOnce(&mut Vec<u8>)) -> Result<GgufFile, LoraError> {
    let mut bytes = std::fs::read(fixture("quant_types.gguf")).unwrap();
    edit(&mut bytes);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edited.gguf");
    std::fs::write(&path, bytes).unwrap();
    GgufFile::open(&path)
}

/// The offset of the first occurrence of `needle` in the fixture.
fn find(needle: &[u8]) -> usize {
    let bytes = std::fs::read(fixture("quant_types.gguf")).unwrap();
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{needle:?} is not in the fixture"))
}

#[test]
fn damaged_headers_are_errors_that_say_what_is_wrong() {
    let reason = |result: Result<GgufFile, LoraError>| match result {
        Err(LoraError::InvalidFile { reason, .. }) => reason,
        other => panic!("expected InvalidFile, got {other:?}"),
    };
    assert!(reason(open_edited(|b| b[0] = b'X')).contains("magic"));
    assert!(
        reason(open_edited(|b| b[4..8].copy_from_slice(&1u32.to_le_bytes()))).contains("version 1")
    );
    assert!(
        reason(open_edited(|b| b[4..8].copy_from_slice(&3u32.to_be_bytes())))
            .contains("big-endian")
    );
    // A tensor count the file cannot hold.
    assert!(reason(open_edited(
        |b| b[8..16].copy_from_slice(&u64::MAX.to_le_bytes())
    ))
    .contains("cannot fit"));
    // The UINT8 value's type tag (0) of "test.u8" made an unknown one.
    let tag = find(b"test.u8") + b"test.u8".len();
    assert!(reason(open_edited(|b| b[tag] = 77)).contains("unknown value type 77"));
    // A BOOL byte other than 0 and 1.
    let value = find(b"test.bool") + b"test.bool".len() + 4;
    assert!(reason(open_edited(|b| b[value] = 2)).contains("BOOL"));
    // A string that is not UTF-8.
    let text = find("ünïcödé".as_bytes());
    assert!(reason(open_edited(|b| b[text] = 0xFF)).contains("UTF-8"));
    // Two keys of one name.
    let key = find(b"test.i8");
    assert!(reason(open_edited(|b| b[key..key + 7].copy_from_slice(b"test.u8"))).contains("twice"));
}

#[test]
fn damaged_tensor_tables_are_errors_naming_the_tensor() {
    // The tensor table: name "Q8_0", then n_dims (u32), two dims (u64), the type (u32) and
    // the offset (u64).
    let q8 = find(b"\x04\x00\x00\x00\x00\x00\x00\x00Q8_0") + 12;
    let (dims, ne0, ty, offset) = (q8, q8 + 4, q8 + 20, q8 + 24);
    let cases: Vec<(&str, Edit)> = vec![
        ("5 dimensions", Box::new(move |b| b[dims] = 5)),
        (
            "rows that are not whole blocks",
            Box::new(move |b| b[ne0..ne0 + 8].copy_from_slice(&500u64.to_le_bytes())),
        ),
        (
            "an offset off the alignment",
            Box::new(move |b| b[offset] = b[offset].wrapping_add(1)),
        ),
        (
            "data beyond the end",
            Box::new(move |b| b[offset..offset + 8].copy_from_slice(&(1u64 << 40).to_le_bytes())),
        ),
    ];
    for (what, edit) in cases {
        match open_edited(edit) {
            Err(LoraError::InvalidFile { reason, .. }) => {
                assert!(reason.contains("\"Q8_0\""), "{what}: {reason}")
            }
            other => panic!("{what}: expected InvalidFile, got {other:?}"),
        }
    }
    // A type id ggml does not define is the tensor's unsupported dtype.
    match open_edited(|b| b[ty..ty + 4].copy_from_slice(&99u32.to_le_bytes())) {
        Err(LoraError::UnsupportedDtype { key, dtype, .. }) => {
            assert_eq!(key, "Q8_0");
            assert!(dtype.contains("99"), "{dtype}");
        }
        other => panic!("expected UnsupportedDtype, got {other:?}"),
    }
    // A type ggml defines and burn-lora does not read opens, and fails when read.
    let gguf = open_edited(|b| b[ty..ty + 4].copy_from_slice(&10u32.to_le_bytes())).unwrap();
    let q2 = &gguf.tensors()["Q8_0"];
    assert_eq!(q2.type_name(), "Q2_K");
    assert!(!q2.is_readable());
    assert!(matches!(
        gguf.tensor_data("Q8_0").unwrap_err(),
        LoraError::UnsupportedDtype { key, dtype, .. } if key == "Q8_0" && dtype.contains("Q2_K")
    ));
    assert!(matches!(
        gguf.tensor_data("absent").unwrap_err(),
        LoraError::MissingKey { key, .. } if key == "absent"
    ));
}
