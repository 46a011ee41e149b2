//! The changes a fuzz case makes to a seed file: byte edits (as libFuzzer's mutators: flips,
//! interesting bytes and integers, insertions, deletions, copies, splices of another seed,
//! dictionary words) and edits of the JSON a file holds (the whole file, or a safetensors header).

use proptest::prelude::*;
use serde_json::{json, Value};

/// How a seed file is laid out, which decides where [`Mutation::Json`] edits land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Opaque bytes (MNIST's IDX files): JSON edits do nothing.
    Bytes,
    /// A JSON document (`config.json`, `adapter_config.json`).
    Json,
    /// A safetensors file: JSON edits change the header and rewrite its length prefix.
    Safetensors,
}

/// One change to a file. Positions are taken modulo the file's length when applied, so every
/// value is valid for every file.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// XOR the byte at `at` with `mask` (non-zero).
    Flip { at: usize, mask: u8 },
    /// Set the byte at `at` to `value`.
    Byte { at: usize, value: u8 },
    /// Insert `bytes` before `at`.
    Insert { at: usize, bytes: Vec<u8> },
    /// Remove up to `len` bytes from `at`.
    Remove { at: usize, len: usize },
    /// Keep the first `at` bytes only.
    Truncate { at: usize },
    /// Insert a copy of the `len` bytes at `from` before `to`.
    Duplicate { from: usize, len: usize, to: usize },
    /// Write `value` as a `width`-byte integer at `at` (lengths, counts, offsets).
    Integer {
        at: usize,
        width: usize,
        big_endian: bool,
        value: u64,
    },
    /// Overwrite the bytes at `to` with `len` bytes of seed `seed` from `from`.
    Splice {
        seed: usize,
        from: usize,
        len: usize,
        to: usize,
    },
    /// An edit of the file's JSON (see [`Format`]).
    Json(JsonEdit),
}

/// One change to a JSON document. Nodes are numbered in pre-order, the root being 0, modulo the
/// number of nodes.
#[derive(Debug, Clone)]
pub enum JsonEdit {
    /// Replace node `node` with `value`.
    Replace { node: usize, value: Value },
    /// Remove node `node` from its object or array.
    Remove { node: usize },
    /// Add `key: value` to node `node` when it is an object, push `value` when it is an array.
    Add {
        node: usize,
        key: String,
        value: Value,
    },
    /// Replace node `to` with a copy of node `from`.
    Copy { from: usize, to: usize },
}

/// Bytes and integers at the edges of what parsers check.
const BYTES: [u8; 10] = [0, 1, 0x7f, 0x80, 0xff, b'"', b'{', b'}', b'\\', b'-'];
const INTEGERS: [u64; 14] = [
    0,
    1,
    2,
    3,
    8,
    28,
    255,
    256,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    i64::MAX as u64,
    u64::MAX,
];

fn interesting_integer() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => prop::sample::select(INTEGERS.to_vec()),
        1 => any::<u64>(),
        1 => 0u64..4096,
    ]
}

/// JSON values of every type, at the edges of the ranges the formats allow, and the
/// dictionary's words as strings.
pub fn json_value(words: Vec<String>) -> impl Strategy<Value = Value> {
    let numbers = prop_oneof![
        prop::sample::select(vec![
            json!(0),
            json!(1),
            json!(-1),
            json!(2),
            json!(3),
            json!(7),
            json!(64),
            json!(65536),
            json!(2147483648u64),
            json!(4294967296u64),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(0.0),
            json!(-0.0),
            json!(0.5),
            json!(1.5),
            json!(-0.5),
            json!(1e-300),
            json!(1e300),
            json!(-1e300),
        ]),
        any::<i64>().prop_map(|v| json!(v)),
        any::<f64>().prop_map(|v| json!(v)),
    ];
    let scalars = prop_oneof![
        prop::sample::select(vec![
            Value::Null,
            json!(true),
            json!(false),
            json!(""),
            json!("(("),
            json!(".*"),
            json!("\u{0}"),
            json!([]),
            json!({}),
            json!([0]),
            json!([1, 2, 3]),
            json!([[1, 2], [3]]),
        ]),
        prop::sample::select(words).prop_map(Value::String),
    ];
    prop_oneof![2 => numbers, 2 => scalars]
}

/// One [`Mutation`], with the dictionary's words for insertions, keys and strings.
pub fn mutation(words: Vec<String>, seeds: usize) -> impl Strategy<Value = Mutation> {
    let word_bytes = prop::sample::select(words.clone()).prop_map(String::into_bytes);
    let inserted = prop_oneof![
        prop::collection::vec(any::<u8>(), 1..16),
        word_bytes,
        prop::sample::select(BYTES.to_vec()).prop_map(|b| vec![b; 3]),
    ];
    let position = any::<usize>;
    prop_oneof![
        2 => (position(), 1u8..=255).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        1 => (position(), prop::sample::select(BYTES.to_vec()))
            .prop_map(|(at, value)| Mutation::Byte { at, value }),
        1 => (position(), inserted).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (position(), 1usize..64).prop_map(|(at, len)| Mutation::Remove { at, len }),
        1 => position().prop_map(|at| Mutation::Truncate { at }),
        1 => (position(), 1usize..64, position())
            .prop_map(|(from, len, to)| Mutation::Duplicate { from, len, to }),
        2 => (
            position(),
            prop::sample::select(vec![1usize, 2, 4, 8]),
            any::<bool>(),
            interesting_integer()
        )
            .prop_map(|(at, width, big_endian, value)| Mutation::Integer {
                at,
                width,
                big_endian,
                value
            }),
        1 => (0..seeds.max(1), position(), 1usize..256, position())
            .prop_map(|(seed, from, len, to)| Mutation::Splice { seed, from, len, to }),
        6 => json_edit(words).prop_map(Mutation::Json),
    ]
}

/// One [`JsonEdit`], with the dictionary's words as keys and strings.
pub fn json_edit(words: Vec<String>) -> impl Strategy<Value = JsonEdit> {
    let position = any::<usize>;
    prop_oneof![
        4 => (position(), json_value(words.clone()))
            .prop_map(|(node, value)| JsonEdit::Replace { node, value }),
        1 => position().prop_map(|node| JsonEdit::Remove { node }),
        1 => (position(), prop::sample::select(words.clone()), json_value(words))
            .prop_map(|(node, key, value)| JsonEdit::Add { node, key, value }),
        1 => (position(), position()).prop_map(|(from, to)| JsonEdit::Copy { from, to }),
    ]
}

/// `input` after `mutations`, in order; `seeds` are the files a splice copies from.
pub fn apply(input: &[u8], mutations: &[Mutation], format: Format, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = input.to_vec();
    for mutation in mutations {
        apply_one(&mut bytes, mutation, format, seeds);
    }
    bytes
}

fn apply_one(bytes: &mut Vec<u8>, mutation: &Mutation, format: Format, seeds: &[Vec<u8>]) {
    let len = bytes.len();
    // A position inside the file (`None` when it is empty) and one where bytes may be inserted.
    let inside = |at: usize| (len > 0).then(|| at % len);
    let between = |at: usize| at % (len + 1);
    match mutation {
        Mutation::Flip { at, mask } => {
            if let Some(at) = inside(*at) {
                bytes[at] ^= mask;
            }
        }
        Mutation::Byte { at, value } => {
            if let Some(at) = inside(*at) {
                bytes[at] = *value;
            }
        }
        Mutation::Insert { at, bytes: new } => {
            let at = between(*at);
            bytes.splice(at..at, new.iter().copied());
        }
        Mutation::Remove { at, len: count } => {
            if let Some(at) = inside(*at) {
                bytes.drain(at..(at + count).min(len));
            }
        }
        Mutation::Truncate { at } => bytes.truncate(between(*at)),
        Mutation::Duplicate {
            from,
            len: count,
            to,
        } => {
            if let Some(from) = inside(*from) {
                let copy = bytes[from..(from + count).min(len)].to_vec();
                let to = between(*to);
                bytes.splice(to..to, copy);
            }
        }
        Mutation::Integer {
            at,
            width,
            big_endian,
            value,
        } => {
            if len >= *width {
                let at = at % (len - width + 1);
                let encoded = if *big_endian {
                    value.to_be_bytes()[8 - width..].to_vec()
                } else {
                    value.to_le_bytes()[..*width].to_vec()
                };
                bytes[at..at + width].copy_from_slice(&encoded);
            }
        }
        Mutation::Splice {
            seed,
            from,
            len: count,
            to,
        } => {
            let Some(source) = seeds.get(*seed).filter(|s| !s.is_empty()) else {
                return;
            };
            let from = from % source.len();
            let piece = &source[from..(from + count).min(source.len())];
            if let Some(to) = inside(*to) {
                let end = (to + piece.len()).min(len);
                bytes[to..end].copy_from_slice(&piece[..end - to]);
            }
        }
        Mutation::Json(edit) => edit_json(bytes, edit, format),
    }
}

/// Applies `edit` to the JSON that `bytes` hold in `format`; bytes whose JSON does not parse
/// (an earlier mutation broke it) are left as they are.
fn edit_json(bytes: &mut Vec<u8>, edit: &JsonEdit, format: Format) {
    match format {
        Format::Bytes => {}
        Format::Json => {
            if let Ok(mut value) = serde_json::from_slice::<Value>(bytes) {
                edit_value(&mut value, edit);
                *bytes = serde_json::to_vec_pretty(&value).unwrap_or_default();
            }
        }
        Format::Safetensors => {
            let Some(prefix) = bytes.get(..8) else {
                return;
            };
            let header_len = u64::from_le_bytes(prefix.try_into().unwrap_or_default());
            let Some(end) = usize::try_from(header_len)
                .ok()
                .and_then(|n| n.checked_add(8))
                .filter(|end| *end <= bytes.len())
            else {
                return;
            };
            if let Ok(mut header) = serde_json::from_slice::<Value>(&bytes[8..end]) {
                edit_value(&mut header, edit);
                let text = serde_json::to_vec(&header).unwrap_or_default();
                let mut out = (text.len() as u64).to_le_bytes().to_vec();
                out.extend_from_slice(&text);
                out.extend_from_slice(&bytes[end..]);
                *bytes = out;
            }
        }
    }
}

/// The JSON pointers of every node of `value`, in pre-order.
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let escaped = key.replace('~', "~0").replace('/', "~1");
                pointers(child, format!("{at}/{escaped}"), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn edit_value(root: &mut Value, edit: &JsonEdit) {
    let mut all = Vec::new();
    pointers(root, String::new(), &mut all);
    let node = |n: usize| all[n % all.len()].clone();
    match edit {
        JsonEdit::Replace { node: n, value } => {
            if let Some(target) = root.pointer_mut(&node(*n)) {
                *target = value.clone();
            }
        }
        JsonEdit::Remove { node: n } => {
            let pointer = node(*n);
            let Some((parent, last)) = pointer.rsplit_once('/') else {
                return;
            };
            let key = last.replace("~1", "/").replace("~0", "~");
            match root.pointer_mut(parent) {
                Some(Value::Object(map)) => {
                    map.remove(&key);
                }
                Some(Value::Array(items)) => {
                    if let Ok(i) = key.parse::<usize>() {
                        if i < items.len() {
                            items.remove(i);
                        }
                    }
                }
                _ => {}
            }
        }
        JsonEdit::Add {
            node: n,
            key,
            value,
        } => match root.pointer_mut(&node(*n)) {
            Some(Value::Object(map)) => {
                map.insert(key.clone(), value.clone());
            }
            Some(Value::Array(items)) => items.push(value.clone()),
            _ => {}
        },
        JsonEdit::Copy { from, to } => {
            let copy = root.pointer(&node(*from)).cloned();
            if let (Some(copy), Some(target)) = (copy, root.pointer_mut(&node(*to))) {
                *target = copy;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_edits_reach_nested_nodes_and_keep_the_safetensors_frame() {
        let header = br#"{"a":{"shape":[2,3]}}"#;
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header);
        file.extend_from_slice(&[1, 2, 3, 4]);
        // Pre-order: "" (root), /a, /a/shape, /a/shape/0, /a/shape/1.
        let edit = Mutation::Json(JsonEdit::Replace {
            node: 4,
            value: json!(9),
        });
        let out = apply(&file, &[edit], Format::Safetensors, &[]);
        let n = u64::from_le_bytes(out[..8].try_into().unwrap()) as usize;
        assert_eq!(&out[8..8 + n], br#"{"a":{"shape":[2,9]}}"#);
        assert_eq!(&out[8 + n..], &[1, 2, 3, 4]);

        let removed = apply(
            br#"{"x":[1,2],"y":3}"#,
            &[Mutation::Json(JsonEdit::Remove { node: 2 })],
            Format::Json,
            &[],
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&removed).unwrap(),
            json!({"x": [2], "y": 3})
        );
    }

    #[test]
    fn byte_edits_stay_inside_the_file_and_write_integers_in_either_order() {
        let out = apply(
            &[0; 6],
            &[Mutation::Integer {
                at: 7,
                width: 4,
                big_endian: true,
                value: 0x0102_0304,
            }],
            Format::Bytes,
            &[],
        );
        // 7 % (6 - 4 + 1) = 1.
        assert_eq!(out, [0, 1, 2, 3, 4, 0]);
        let empty: &[u8] = &[];
        for m in [
            Mutation::Flip { at: 3, mask: 1 },
            Mutation::Remove { at: 3, len: 2 },
            Mutation::Duplicate {
                from: 1,
                len: 2,
                to: 0,
            },
        ] {
            assert!(apply(empty, &[m], Format::Bytes, &[]).is_empty());
        }
        let spliced = apply(
            &[0; 4],
            &[Mutation::Splice {
                seed: 0,
                from: 1,
                len: 10,
                to: 2,
            }],
            Format::Bytes,
            &[vec![5, 6, 7]],
        );
        assert_eq!(spliced, [0, 0, 6, 7]);
    }
}
