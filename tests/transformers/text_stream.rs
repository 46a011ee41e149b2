//! `TextStream` (mirrors `src/nn/llama/text_stream.rs`): generated tokens become text only in
//! whole characters, with SentencePiece's spaces where a whole decode puts them, and the pieces
//! join to the whole decode.

use std::str::FromStr;

use burn_lora::nn::llama::TextStream;
use burn_lora::GgufFile;
use burn_lora_support::fixtures::repository_root;
use tokenizers::Tokenizer;

/// The pieces a stream emits for `ids`, the last one from `finish`.
fn streamed(tokenizer: &Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut stream = TextStream::new(tokenizer, false);
    let mut pieces: Vec<String> = ids.iter().map(|&id| stream.push(id).unwrap()).collect();
    pieces.push(stream.finish().unwrap());
    pieces
}

#[test]
fn multi_byte_characters_split_over_byte_tokens_come_out_whole() {
    let gguf =
        GgufFile::open(&repository_root().join("tests/fixtures/gguf/llama_tiny.gguf")).unwrap();
    let tokenizer = gguf.tokenizer().unwrap();
    let text = "the ✓ Ünïcödé";
    let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
    // One token at a time, the check mark's three bytes decode to replacement characters.
    let naive: String = ids
        .iter()
        .map(|&id| tokenizer.decode(&[id], false).unwrap())
        .collect();
    assert!(naive.contains('\u{FFFD}'), "{naive:?}");

    let pieces = streamed(&tokenizer, &ids);
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    assert_eq!(pieces.concat(), text);
    // The check mark comes out whole, in one piece, after its last byte.
    assert!(pieces.iter().any(|p| p == "✓" || p == " ✓"), "{pieces:?}");
    assert_eq!(pieces.len(), ids.len() + 1);
}

/// A SentencePiece-style tokenizer (Llama 2's decoder: `▁` as a space, byte fallback, the first
/// space stripped) over a hand-made vocabulary.
fn sentencepiece() -> Tokenizer {
    let json = r#"{
      "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
      "normalizer": null,
      "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false},
      "post_processor": null,
      "decoder": {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
      "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
        "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
        "byte_fallback": true, "ignore_merges": false,
        "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, "▁the": 4, "▁cat": 5, "s": 6,
                  "<0xE2>": 7, "<0x9C>": 8, "<0x93>": 9},
        "merges": []}
    }"#;
    Tokenizer::from_str(json).unwrap()
}

#[test]
fn sentencepiece_spaces_stay_where_a_whole_decode_puts_them() {
    let tokenizer = sentencepiece();
    // "▁the", "▁cat", "s", "▁", then ✓ as three byte-fallback tokens.
    let ids = [4, 5, 6, 3, 7, 8, 9];
    let whole = tokenizer.decode(&ids, false).unwrap();
    assert_eq!(whole, "the cats ✓");
    // Token by token, every word loses its space and the bytes are broken.
    let naive: String = ids
        .iter()
        .map(|&id| tokenizer.decode(&[id], false).unwrap())
        .collect();
    assert_ne!(naive, whole);

    let pieces = streamed(&tokenizer, &ids);
    assert_eq!(pieces.concat(), whole);
    assert_eq!(pieces[..3], ["the", " cat", "s"]);
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    assert_eq!(pieces[6], "✓", "{pieces:?}");
}
