//! Fuzzing on a stable toolchain: each fuzz target is a `cargo test` that
//! replays its corpus (`fuzz/corpus/<target>/`, one input per file, kept in
//! the repository) and then runs a fixed number of proptest cases whose
//! inputs are random bytes, corpus entries, and corpus entries mutated the
//! way coverage fuzzers do (bit flips, interesting bytes, deletions,
//! duplications, insertions, truncations, splices of two entries).
//!
//! Invariant: the corpus directory of a target is never empty and every
//! entry in it is replayed on every run, so an input that once broke a
//! decoder stays a regression test once it is added there.
//!
//! `SWITCHYARD_FUZZ_CASES` sets the number of generated cases per target
//! (default [`DEFAULT_CASES`]); a failing case is shrunk by proptest and can
//! be saved into the corpus.

use proptest::prelude::*;
use std::path::PathBuf;

/// Generated cases per target when `SWITCHYARD_FUZZ_CASES` is unset.
pub const DEFAULT_CASES: u32 = 4096;

/// `fuzz/corpus/<target>` in the workspace.
pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|root| root.join("fuzz/corpus").join(target))
        .unwrap_or_else(|| PathBuf::from("fuzz/corpus").join(target))
}

/// The corpus of `target`, sorted by file name; panics when it is missing
/// or empty (a fuzz target without seeds is a test that cannot find much).
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut entries: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fuzz corpus {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let data =
                std::fs::read(e.path()).unwrap_or_else(|err| panic!("fuzz corpus {name}: {err}"));
            (name, data)
        })
        .collect();
    entries.sort();
    assert!(
        !entries.is_empty(),
        "fuzz corpus {} is empty",
        dir.display()
    );
    entries
}

/// Generated cases per target (`SWITCHYARD_FUZZ_CASES`, default
/// [`DEFAULT_CASES`]).
pub fn cases() -> u32 {
    std::env::var("SWITCHYARD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// A proptest configuration running [`cases`] cases, without persisting
/// failures to files outside the corpus.
pub fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Bytes that tend to matter to parsers.
const INTERESTING: &[u8] = &[
    0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe, 0xc0, 0xed, b'"', b'\\', b'{', b'}', b'[', b']', b':',
    b',', b'-', b'0', b'9', b'e', b'\n', b' ', b'\'', b'&', b'*', b'!', b'%', b'#', b'|', b'>',
    b'=', b'_',
];

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Delete(usize, usize),
    Duplicate(usize, usize),
    Insert(usize, Vec<u8>),
    Truncate(usize),
    Splice(usize, usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<usize>(), prop::sample::select(INTERESTING))
            .prop_map(|(i, b)| Mutation::SetByte(i, b)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(o, a, b)| Mutation::Splice(o, a, b)),
    ]
}

fn apply(mut data: Vec<u8>, m: &Mutation, corpus: &[Vec<u8>]) -> Vec<u8> {
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
    match m {
        Mutation::FlipBit(i, b) if !data.is_empty() => {
            let i = at(*i, data.len());
            data[i] ^= 1 << b;
        }
        Mutation::SetByte(i, v) if !data.is_empty() => {
            let i = at(*i, data.len());
            data[i] = *v;
        }
        Mutation::Delete(i, n) if !data.is_empty() => {
            let i = at(*i, data.len());
            let end = (i + n).min(data.len());
            data.drain(i..end);
        }
        Mutation::Duplicate(i, n) if !data.is_empty() => {
            let i = at(*i, data.len());
            let end = (i + n).min(data.len());
            let piece = data[i..end].to_vec();
            data.splice(i..i, piece);
        }
        Mutation::Insert(i, bytes) => {
            let i = at(*i, data.len() + 1);
            data.splice(i..i, bytes.iter().copied());
        }
        Mutation::Truncate(i) => {
            let i = at(*i, data.len() + 1);
            data.truncate(i);
        }
        Mutation::Splice(other, a, b) => {
            let other = &corpus[other % corpus.len()];
            let a = at(*a, data.len() + 1);
            let b = at(*b, other.len() + 1);
            data.truncate(a);
            data.extend_from_slice(&other[b..]);
        }
        _ => {}
    }
    data
}

/// Inputs for a fuzz target: a quarter random bytes, a quarter corpus
/// entries as they are, half corpus entries with 1 to 8 mutations.
pub fn inputs(corpus: &[(String, Vec<u8>)]) -> BoxedStrategy<Vec<u8>> {
    let seeds: Vec<Vec<u8>> = corpus.iter().map(|(_, d)| d.clone()).collect();
    let plain = prop::sample::select(seeds.clone());
    let mutated = (
        prop::sample::select(seeds.clone()),
        prop::collection::vec(mutation(), 1..8),
    )
        .prop_map(move |(seed, ms)| ms.iter().fold(seed, |d, m| apply(d, m, &seeds)));
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..512),
        1 => plain,
        2 => mutated,
    ]
    .boxed()
}

/// [`inputs`] as (lossy) UTF-8 text, for targets that take `&str`.
pub fn text_inputs(corpus: &[(String, Vec<u8>)]) -> BoxedStrategy<String> {
    inputs(corpus)
        .prop_map(|b| String::from_utf8_lossy(&b).into_owned())
        .boxed()
}

/// Arbitrary JSON values (nested a few levels) for payloads.
pub fn json_values() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map("\\PC{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
