//! The model's tokenizer, rebuilt from the GGUF metadata.
//!
//! SmolLM2 ships a GPT-2 style byte-level BPE (`tokenizer.ggml.model = "gpt2"`, pre-tokenizer
//! `"smollm"`): every digit is split off on its own, then the GPT-2 regex splits the text into
//! words, each word's bytes are mapped to printable characters (`Ġ` for a space, ...) and BPE
//! merges them by rank. No prefix space is added and no BOS token is prepended (the GGUF says
//! `add_space_prefix = false`, `add_bos_token = false`), matching llama.cpp.
//!
//! Encoding goes through the `tokenizers` crate, configured from the GGUF vocabulary and merges.
//! Decoding is done here, byte by byte: [`Tokenizer::token_bytes`] inverts GPT-2's byte-to-unicode
//! map, and [`StreamDecoder`] turns a stream of ids into text without ever cutting a multi-byte
//! UTF-8 character in half.

use std::collections::HashMap;
use std::str::FromStr;

use rayon::prelude::*;
use serde_json::{Map, Value, json};

use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;

/// GGUF token type of a control token (`<|im_start|>`, ...).
const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF token type of a user-defined token.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Texts longer than this are cut into pieces that are encoded in parallel.
const PARALLEL_MIN_BYTES: usize = 32 * 1024;
/// Target size of one piece of a long text.
const CHUNK_BYTES: usize = 16 * 1024;

/// A byte-level BPE tokenizer built from a GGUF file's `tokenizer.ggml.*` metadata.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Raw bytes of every token (special tokens: their literal text).
    bytes: Vec<Vec<u8>>,
    /// Token string to id.
    ids: HashMap<String, u32>,
    /// Whether each token is a control or user-defined token.
    special: Vec<bool>,
    bos: Option<u32>,
    eos: u32,
    add_bos: bool,
    stops: Vec<u32>,
    /// Bytes that start a special token: a parallel cut never precedes one.
    special_first: [bool; 256],
    /// Whether long texts may be cut for parallel encoding (false if a special token holds a
    /// newline, since a cut after a newline could then fall inside it).
    can_split: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.bytes.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("stops", &self.stops)
            .finish_non_exhaustive()
    }
}

fn meta_err(key: &str, reason: impl Into<String>) -> EngineError {
    EngineError::Metadata { key: key.to_string(), reason: reason.into() }
}

impl Tokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata. Only the `gpt2` (byte-level BPE)
    /// tokenizer model is supported.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let model = gguf.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(EngineError::Tokenizer(format!(
                "unsupported tokenizer model '{model}' (tokenizer.ggml.model); sieve supports only 'gpt2' (byte-level BPE)"
            )));
        }
        let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
        if tokens.is_empty() {
            return Err(meta_err("tokenizer.ggml.tokens", "empty vocabulary"));
        }
        let n = tokens.len();
        let types = match gguf.metadata().get("tokenizer.ggml.token_type") {
            Some(_) => gguf.get_i32_array("tokenizer.ggml.token_type")?,
            None => vec![1; n],
        };
        if types.len() != n {
            return Err(meta_err("tokenizer.ggml.token_type", format!("{} entries for {} tokens", types.len(), n)));
        }
        let merges = gguf.get_str_array("tokenizer.ggml.merges")?;
        let opt_id = |key: &str| -> Result<Option<u32>> {
            if gguf.metadata().get(key).is_none() {
                return Ok(None);
            }
            let id = gguf.get_usize(key)?;
            if id >= n {
                return Err(meta_err(key, format!("token id {id} is outside the vocabulary ({n})")));
            }
            Ok(Some(id as u32))
        };
        let bos = opt_id("tokenizer.ggml.bos_token_id")?;
        let eos =
            opt_id("tokenizer.ggml.eos_token_id")?.ok_or_else(|| meta_err("tokenizer.ggml.eos_token_id", "missing"))?;
        let add_bos = match gguf.metadata().get("tokenizer.ggml.add_bos_token") {
            Some(candle_core::quantized::gguf_file::Value::Bool(b)) => *b,
            _ => false,
        };

        let special: Vec<bool> =
            types.iter().map(|&t| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED).collect();

        // The tokenizer.json equivalent of the model's Hugging Face tokenizer.
        let mut vocab = Map::with_capacity(n);
        let mut ids = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            // Keep the first id of a duplicated string, as llama.cpp does.
            if !ids.contains_key(t) {
                ids.insert(t.clone(), i as u32);
                vocab.insert(t.clone(), json!(i));
            }
        }
        let mut merge_pairs = Vec::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                meta_err("tokenizer.ggml.merges", format!("merge {i} ('{m}') is not two tokens separated by a space"))
            })?;
            merge_pairs.push(json!([a, b]));
        }
        let added: Vec<Value> = tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| special[*i])
            .map(|(i, t)| {
                json!({
                    "id": i, "content": t, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true
                })
            })
            .collect();
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {
                "type": "Sequence",
                "pretokenizers": [
                    { "type": "Digits", "individual_digits": true },
                    { "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true }
                ]
            },
            "post_processor": null,
            "decoder": { "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true },
            "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": null,
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": false,
                "byte_fallback": false,
                "ignore_merges": false,
                "vocab": Value::Object(vocab),
                "merges": merge_pairs
            }
        });
        let inner = tokenizers::Tokenizer::from_str(&spec.to_string())
            .map_err(|e| EngineError::Tokenizer(format!("building the BPE tokenizer: {e}")))?;

        let decode_map = byte_decoder();
        let bytes: Vec<Vec<u8>> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| if special[i] { t.as_bytes().to_vec() } else { token_to_bytes(t, &decode_map) })
            .collect();

        let mut stops = vec![eos];
        for s in ["<|im_end|>", "<|endoftext|>"] {
            if let Some(&id) = ids.get(s)
                && !stops.contains(&id)
            {
                stops.push(id);
            }
        }
        let mut special_first = [false; 256];
        let mut can_split = true;
        for (t, _) in tokens.iter().zip(&special).filter(|(_, s)| **s) {
            if let Some(&b0) = t.as_bytes().first() {
                special_first[b0 as usize] = true;
            }
            if t.contains('\n') {
                can_split = false;
            }
        }
        Ok(Self { inner, bytes, ids, special, bos, eos, add_bos, stops, special_first, can_split })
    }

    /// Token ids of `text`. Special tokens written in the text (`<|im_start|>`, ...) become their
    /// ids; no BOS is added. Long texts are cut at line boundaries that cannot change the result
    /// and encoded in parallel.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        if text.len() < PARALLEL_MIN_BYTES || !self.can_split {
            return self.encode_piece(text);
        }
        let pieces = split_for_parallel(text, CHUNK_BYTES, &self.special_first);
        let parts: Vec<Vec<u32>> = pieces.par_iter().map(|p| self.encode_piece(p)).collect::<Result<_>>()?;
        Ok(parts.concat())
    }

    /// Token ids of `text` in one call to the BPE tokenizer (no parallel split).
    pub fn encode_serial(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_piece(text)
    }

    fn encode_piece(&self, text: &str) -> Result<Vec<u32>> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let enc = self.inner.encode(text, false).map_err(|e| EngineError::Tokenizer(format!("encoding: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens written out; invalid UTF-8 becomes U+FFFD and ids outside
    /// the vocabulary are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut buf = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            if let Some(b) = self.token_bytes(id) {
                buf.extend_from_slice(b);
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Raw bytes of token `id` (special tokens: their literal text), `None` outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.bytes.get(id as usize).map(Vec::as_slice)
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    /// The BOS token, if the model names one (SmolLM2 does not prepend it: see [`Self::add_bos`]).
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// Whether the model wants BOS prepended to a prompt (`tokenizer.ggml.add_bos_token`).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The EOS token.
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Id of the token whose vocabulary string is `s` (`"<|im_end|>"`, `"Ġthe"`, ...).
    pub fn token_id(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    /// Tokens that end generation: EOS, plus `<|im_end|>` and `<|endoftext|>` when present.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stops
    }

    /// Whether `id` is a control (or user-defined) token; `false` outside the vocabulary.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }
}

/// Cuts `text` into pieces of about `target` bytes whose encodings, concatenated, equal the
/// encoding of the whole text.
///
/// A cut is made only right after a `'\n'`, and only where pre-tokenization is provably the same
/// on both sides:
/// - `x\nA` (a lone newline between two non-space characters, `A` a safe character): the newline
///   is a word of its own either way;
/// - `\s*\n A` (a whitespace run ending in a newline, then one space and a safe character): the
///   GPT-2 regex `\s+(?!\S)` takes the run up to the newline and the space joins the next word,
///   both in the whole text and when the run ends the piece.
///
/// "Safe" means an ASCII letter or ASCII punctuation that does not start a special token: not
/// whitespace, not a digit (digits are split off first, which would end a whitespace run early),
/// not the start of a special token (likewise). The caller splits only when no special token
/// contains a newline, so a cut never falls inside one.
fn split_for_parallel<'a>(text: &'a str, target: usize, no_start: &[bool; 256]) -> Vec<&'a str> {
    let b = text.as_bytes();
    let safe = |c: u8| (c.is_ascii_alphabetic() || c.is_ascii_punctuation()) && !no_start[c as usize];
    let mut pieces = Vec::with_capacity(text.len() / target.max(1) + 1);
    let mut start = 0;
    loop {
        // The first safe cut at least `target` bytes into the piece: a position p after a '\n'.
        let mut cut = None;
        let mut p = start + target.max(1);
        while p < b.len() {
            if b[p - 1] == b'\n' {
                // `x\nA`: the byte before the newline must be a whole visible ASCII character
                // (a non-ASCII one might be Unicode whitespace).
                let lone = p >= 2 && b[p - 2].is_ascii_graphic() && safe(b[p]);
                // `\s*\n A`.
                let spaced = b[p] == b' ' && p + 1 < b.len() && safe(b[p + 1]);
                if lone || spaced {
                    cut = Some(p);
                    break;
                }
            }
            p += 1;
        }
        match cut {
            Some(p) => {
                pieces.push(&text[start..p]);
                start = p;
            }
            None => break,
        }
    }
    pieces.push(&text[start..]);
    pieces
}

/// GPT-2's map from bytes to printable characters, inverted: char -> byte.
fn byte_decoder() -> HashMap<char, u8> {
    let mut printable: Vec<u8> = Vec::with_capacity(256);
    printable.extend(b'!'..=b'~');
    printable.extend(0xA1u8..=0xAC);
    printable.extend(0xAEu8..=0xFF);
    let mut map = HashMap::with_capacity(256);
    for &b in &printable {
        map.insert(char::from(b), b);
    }
    let mut n = 0u32;
    for b in 0u8..=255 {
        if !printable.contains(&b) {
            // Bytes without a printable form map to U+0100 onwards, in order.
            map.insert(char::from_u32(256 + n).expect("valid char"), b);
            n += 1;
        }
    }
    map
}

/// Bytes of a byte-level token string. A character outside the byte map (none in a well-formed
/// vocabulary) contributes its own UTF-8 bytes.
fn token_to_bytes(token: &str, map: &HashMap<char, u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(token.len());
    for c in token.chars() {
        match map.get(&c) {
            Some(&b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

/// Turns a stream of token ids into text, emitting only complete UTF-8 characters: the bytes of
/// a character split over several tokens (emoji, CJK) are held until the character is whole.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// A decoder with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds token `id` and returns the text it completes (possibly empty). Ids outside the
    /// vocabulary add nothing. Bytes that can never form valid UTF-8 come out as U+FFFD.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        if let Some(b) = tok.token_bytes(id) {
            self.pending.extend_from_slice(b);
        }
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The prefix was just validated.
                    out.push_str(std::str::from_utf8(&rest[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // Invalid bytes: replace and go on.
                        Some(len) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &rest[valid + len..];
                        }
                        // An incomplete character at the end: hold it.
                        None => {
                            rest = &rest[valid..];
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let drop = self.pending.len() - keep;
        self.pending.drain(..drop);
        out
    }

    /// Flushes what is pending (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }

    /// Whether bytes of an incomplete character are held.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection() {
        let m = byte_decoder();
        assert_eq!(m.len(), 256);
        let mut seen = [false; 256];
        for &b in m.values() {
            seen[b as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(m[&'Ġ'], b' ');
        assert_eq!(m[&'Ċ'], b'\n');
        assert_eq!(m[&'ĉ'], b'\t');
        assert_eq!(m[&'a'], b'a');
    }

    /// A tokenizer-free check of the UTF-8 buffering, through a fake vocabulary of single bytes.
    fn byte_tokenizer() -> Tokenizer {
        let bytes: Vec<Vec<u8>> = (0u16..256).map(|b| vec![b as u8]).collect();
        let spec = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
            "model": { "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                       "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                       "ignore_merges": false, "vocab": {"a": 0}, "merges": [] }
        });
        Tokenizer {
            inner: tokenizers::Tokenizer::from_str(&spec.to_string()).unwrap(),
            special: vec![false; 256],
            bytes,
            ids: HashMap::new(),
            bos: None,
            eos: 0,
            add_bos: false,
            stops: vec![0],
            special_first: [false; 256],
            can_split: true,
        }
    }

    #[test]
    fn stream_decoder_holds_split_emoji() {
        let tok = byte_tokenizer();
        let text = "ok 🦀 北京 done";
        let mut dec = StreamDecoder::default();
        let mut out = String::new();
        for &b in text.as_bytes() {
            let piece = dec.push(&tok, b as u32);
            // Every emitted piece is whole UTF-8 and a prefix of what is left to produce.
            assert!(text[out.len()..].starts_with(&piece));
            out.push_str(&piece);
        }
        assert_eq!(out, text);
        assert!(!dec.has_pending());
        assert_eq!(dec.finish(), "");

        // The crab's four bytes: nothing comes out until the last one.
        let crab = "🦀".as_bytes();
        let mut dec = StreamDecoder::new();
        for &b in &crab[..3] {
            assert_eq!(dec.push(&tok, b as u32), "");
        }
        assert!(dec.has_pending());
        assert_eq!(dec.push(&tok, crab[3] as u32), "🦀");
    }

    #[test]
    fn stream_decoder_replaces_invalid_and_flushes() {
        let tok = byte_tokenizer();
        let mut dec = StreamDecoder::default();
        // A stray continuation byte is invalid at once.
        assert_eq!(dec.push(&tok, 0x80), "\u{FFFD}");
        assert_eq!(dec.push(&tok, b'a' as u32), "a");
        // An incomplete lead byte followed by ASCII: replaced, the ASCII kept.
        assert_eq!(dec.push(&tok, 0xF0), "");
        assert_eq!(dec.push(&tok, b'b' as u32), "\u{FFFD}b");
        // Left incomplete at the end: finish flushes a replacement.
        assert_eq!(dec.push(&tok, 0xE5), "");
        assert_eq!(dec.finish(), "\u{FFFD}");
        // Out-of-range ids add nothing and do not panic.
        assert_eq!(dec.push(&tok, 1_000_000), "");
        assert_eq!(tok.token_bytes(u32::MAX), None);
        assert!(!tok.is_special(u32::MAX));
        assert_eq!(tok.decode(&[b'h' as u32, u32::MAX, b'i' as u32]), "hi");
    }

    #[test]
    fn parallel_split_cuts_only_at_safe_newlines() {
        let text = " = A = \n \n Some text here .\n x\n\n y\n1 \n<|im_start|>\nz\n";
        let mut no_start = [false; 256];
        no_start[b'<' as usize] = true;
        let pieces = split_for_parallel(text, 1, &no_start);
        assert_eq!(pieces.concat(), text);
        for w in pieces.windows(2) {
            let (a, b) = (w[0].as_bytes(), w[1].as_bytes());
            assert_eq!(*a.last().unwrap(), b'\n');
            let first = b[0];
            let ok = (first == b' '
                && b.len() > 1
                && b[1].is_ascii_alphabetic() | b[1].is_ascii_punctuation()
                && b[1] != b'<')
                || (first != b' ' && a.len() >= 2 && !a[a.len() - 2].is_ascii_whitespace());
            assert!(ok, "unsafe cut between {:?} and {:?}", w[0], w[1]);
        }
        assert_eq!(split_for_parallel("short", 100, &no_start), vec!["short"]);
        assert_eq!(split_for_parallel("", 1, &no_start), vec![""]);
    }
}
