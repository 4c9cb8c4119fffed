//! The tokenizer against llama.cpp: token ids of `tests/golden/tokenizer.json` (written by
//! `scripts/golden_tokenizer.py` with llama-cpp-python on the same GGUF), round trips, streaming
//! decode, and the parallel encoding of long texts.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;
use sieve_engine::EngineError;
use sieve_engine::chat::{ChatMessage, chat_prompt, user_prompt};
use sieve_engine::gguf::GgufFile;
use sieve_engine::tokenizer::{StreamDecoder, Tokenizer};

struct Case {
    name: String,
    text: String,
    ids: Vec<u32>,
    llama_decode: Option<String>,
}

fn golden() -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/tokenizer.json");
    let raw = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let doc: Value = serde_json::from_str(&raw).expect("golden file is JSON");
    doc.as_array()
        .expect("golden file is a list")
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            text: c["text"].as_str().unwrap().to_string(),
            ids: c["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect(),
            llama_decode: c.get("llama_decode").and_then(Value::as_str).map(str::to_string),
        })
        .collect()
}

fn case<'a>(cases: &'a [Case], name: &str) -> &'a Case {
    cases.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("golden case {name} missing"))
}

fn tokenizer() -> Tokenizer {
    let gguf = GgufFile::open(&common::model_path()).expect("open model");
    Tokenizer::from_gguf(&gguf).expect("tokenizer from GGUF")
}

fn wikitext_path() -> Option<PathBuf> {
    let p = std::env::var_os("SIEVE_WIKITEXT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/shared/data/wikitext2-test.raw.txt"));
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: WikiText-2 test file not found at {} (set SIEVE_WIKITEXT)", p.display());
        None
    }
}

#[test]
fn ids_match_llama_cpp() {
    let tok = tokenizer();
    let cases = golden();
    assert!(cases.len() >= 15, "golden file has only {} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let ids = tok.encode(&c.text).expect("encode");
        if ids != c.ids {
            let first = ids.iter().zip(&c.ids).position(|(a, b)| a != b).unwrap_or(ids.len().min(c.ids.len()));
            failures.push(format!(
                "{}: first difference at {first}: ours {:?} llama.cpp {:?}",
                c.name,
                &ids[first..(first + 8).min(ids.len())],
                &c.ids[first..(first + 8).min(c.ids.len())]
            ));
        }
    }
    assert!(failures.is_empty(), "ids differ from llama.cpp:\n{}", failures.join("\n"));
}

#[test]
fn decode_round_trips() {
    let tok = tokenizer();
    for c in golden() {
        let text = tok.decode(&c.ids);
        // llama.cpp's own detokenization is recorded next to the ids; every case round-trips
        // there too, so a difference here would be ours alone.
        if let Some(ld) = &c.llama_decode {
            assert_eq!(ld, &c.text, "{}: llama.cpp's own round trip differs", c.name);
        }
        assert_eq!(text, c.text, "{}: decode(ids) != text", c.name);
    }
}

#[test]
fn stream_decoder_yields_exactly_the_text() {
    let tok = tokenizer();
    let cases = golden();
    for name in ["emoji", "non_ascii", "chatml_prompt", "wikitext_paragraph"] {
        let c = case(&cases, name);
        let mut dec = StreamDecoder::default();
        let mut out = String::new();
        let mut held = 0;
        for &id in &c.ids {
            let piece = dec.push(&tok, id);
            assert!(c.text[out.len()..].starts_with(&piece), "{name}: piece {piece:?} is not the next text");
            out.push_str(&piece);
            held += dec.has_pending() as usize;
        }
        out.push_str(&dec.finish());
        assert_eq!(out, c.text, "{name}");
        if name == "emoji" {
            // The case only tests something if a character was split over tokens.
            assert!(held > 0, "no emoji was split over tokens");
            assert!(!out.contains('\u{FFFD}'));
        }
    }
}

#[test]
fn chatml_golden_text_is_chat_prompt_output() {
    let cases = golden();
    let c = case(&cases, "chatml_prompt");
    let p = chat_prompt(&[ChatMessage::user("What is the capital of France?")]).unwrap();
    assert_eq!(c.text, p);
    assert_eq!(user_prompt("What is the capital of France?"), p);
    // The special tokens are single ids.
    let tok = tokenizer();
    let start = tok.token_id("<|im_start|>").unwrap();
    let end = tok.token_id("<|im_end|>").unwrap();
    assert_eq!(c.ids.iter().filter(|&&i| i == start).count(), 3);
    assert_eq!(c.ids.iter().filter(|&&i| i == end).count(), 2);
    assert_eq!(c.ids[0], start);
}

#[test]
fn vocabulary_and_special_tokens() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos_id(), Some(1));
    assert!(!tok.add_bos());
    assert_eq!(tok.eos_id(), 2);
    assert_eq!(tok.token_id("<|endoftext|>"), Some(0));
    assert_eq!(tok.token_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_id("<|im_end|>"), Some(2));
    assert_eq!(tok.stop_ids(), &[2, 0]);
    for id in 0..=16 {
        assert!(tok.is_special(id), "token {id} should be special");
    }
    assert!(!tok.is_special(17));
    assert_eq!(tok.token_bytes(2), Some(&b"<|im_end|>"[..]));
    let the = tok.token_id("Ġthe").unwrap();
    assert_eq!(tok.token_bytes(the), Some(&b" the"[..]));
    // No prefix space: "Hello" is the token "Hello", not "ĠHello"; no BOS either.
    assert_eq!(tok.encode("Hello").unwrap(), vec![tok.token_id("Hello").unwrap()]);
    assert_eq!(tok.encode(" Hello").unwrap(), vec![tok.token_id("ĠHello").unwrap()]);
    assert!(tok.encode("").unwrap().is_empty());
    // Out-of-range ids never panic.
    for id in [49152, u32::MAX] {
        assert_eq!(tok.token_bytes(id), None);
        assert!(!tok.is_special(id));
    }
    assert_eq!(tok.decode(&[u32::MAX, the, 49152]), " the");
    let mut dec = StreamDecoder::default();
    assert_eq!(dec.push(&tok, u32::MAX), "");
}

#[test]
fn parallel_encoding_matches_serial_on_wikitext() {
    let Some(path) = wikitext_path() else { return };
    let tok = tokenizer();
    let text = std::fs::read_to_string(&path).expect("read wikitext");

    // First 100 KB (at a char boundary): chunked/parallel == one serial call.
    let mut n = 100_000.min(text.len());
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    let head = &text[..n];
    assert_eq!(tok.encode(head).unwrap(), tok.encode_serial(head).unwrap(), "first 100 KB");

    // The whole file, timed both ways.
    let t0 = Instant::now();
    let par = tok.encode(&text).unwrap();
    let t_par = t0.elapsed();
    let t0 = Instant::now();
    let ser = tok.encode_serial(&text).unwrap();
    let t_ser = t0.elapsed();
    eprintln!(
        "wikitext2 test: {} bytes -> {} tokens; parallel {:.3} s, serial {:.3} s",
        text.len(),
        par.len(),
        t_par.as_secs_f64(),
        t_ser.as_secs_f64()
    );
    assert_eq!(par, ser, "whole file: parallel != serial");
    assert_eq!(tok.decode(&par), text, "whole file round trip");
    assert!(t_par.as_secs_f64() < 10.0, "encoding WikiText-2 took {:?}", t_par);
}

/// A minimal GGUF (header and string metadata only).
fn tiny_gguf(path: &Path, kv: &[(&str, &str)]) {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&(kv.len() as u64).to_le_bytes());
    for (k, v) in kv {
        b.extend_from_slice(&(k.len() as u64).to_le_bytes());
        b.extend_from_slice(k.as_bytes());
        b.extend_from_slice(&8u32.to_le_bytes()); // string
        b.extend_from_slice(&(v.len() as u64).to_le_bytes());
        b.extend_from_slice(v.as_bytes());
    }
    std::fs::write(path, b).unwrap();
}

#[test]
fn other_tokenizer_models_are_refused() {
    let path = std::env::temp_dir().join(format!("sieve-tok-test-{}.gguf", std::process::id()));
    tiny_gguf(&path, &[("general.architecture", "llama"), ("tokenizer.ggml.model", "llama")]);
    let gguf = GgufFile::open(&path).expect("tiny GGUF parses");
    let err = Tokenizer::from_gguf(&gguf).unwrap_err();
    let _ = std::fs::remove_file(&path);
    assert!(matches!(err, EngineError::Tokenizer(_)), "{err:?}");
    assert!(err.to_string().contains("'llama'") && err.to_string().contains("gpt2"), "{err}");
}
