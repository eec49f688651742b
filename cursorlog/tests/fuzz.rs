//! Fuzz target for cursors, run by `cargo test` on a stable toolchain (see
//! `switchyard_testkit::fuzz`): every entry of `fuzz/corpus/cursor/` is
//! replayed, then `SWITCHYARD_FUZZ_CASES` generated strings (random, corpus,
//! mutated corpus). Properties: decoding any string never panics, signed or
//! not; what decodes is consistent (positions sorted, distinct channels > 0,
//! sequences ≥ 0, an epoch); signed cursors round-trip; any change to a
//! signed cursor is refused or decodes to exactly the same positions (it
//! never moves a position), and an unsigned or foreign-key cursor is
//! refused.

#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use proptest::prelude::*;
use std::time::Instant;
use switchyard_cursorlog::cursor::{encode_parts, CursorCodec, CursorKey};
use switchyard_cursorlog::{Cursor, CursorError};
use switchyard_testkit::fuzz;

fn codec() -> CursorCodec {
    CursorCodec::new(
        "0123456789abcdef",
        Some(CursorKey::new(&[42u8; 32]).unwrap()),
    )
}

fn consistent(c: &Cursor) {
    assert!(!c.epoch.is_empty());
    assert!(c.positions.windows(2).all(|w| w[0].0 < w[1].0), "{c:?}");
    assert!(
        c.positions.iter().all(|(ch, seq)| *ch > 0 && *seq >= 0),
        "{c:?}"
    );
}

fn check(text: &str, signed: &CursorCodec) {
    if let Ok(c) = Cursor::decode(text) {
        consistent(&c);
        // Re-encoding is canonical: it decodes to the same cursor.
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
    }
    if let Ok(c) = signed.decode(text) {
        consistent(&c);
    }
    let open = CursorCodec::new("e", None);
    let _ = open.decode(text);
}

#[test]
fn fuzz_cursor_decode() {
    let corpus = fuzz::corpus("cursor");
    let signed = codec();
    let started = Instant::now();
    for (name, data) in &corpus {
        let text = String::from_utf8_lossy(data).into_owned();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&text, &signed)));
        assert!(r.is_ok(), "corpus entry cursor/{name} broke the decoder");
    }
    let mut runner = proptest::test_runner::TestRunner::new(fuzz::config());
    runner
        .run(&fuzz::text_inputs(&corpus), |text| {
            check(&text, &signed);
            Ok(())
        })
        .unwrap();
    eprintln!(
        "fuzz cursor: {} corpus entries + {} cases in {:?}",
        corpus.len(),
        fuzz::cases(),
        started.elapsed()
    );
}

fn positions() -> impl Strategy<Value = Vec<(i64, i64)>> {
    prop::collection::btree_map(1i64..i64::MAX, 0i64..i64::MAX, 0..24)
        .prop_map(|m| m.into_iter().collect())
}

proptest! {
    #![proptest_config(fuzz::config())]

    /// decode(encode(positions)) == positions for signed cursors.
    #[test]
    fn signed_cursors_round_trip(pos in positions()) {
        let codec = codec();
        let text = codec.encode(pos.iter().copied());
        let c = codec.decode(&text).unwrap();
        prop_assert_eq!(c.epoch.as_str(), "0123456789abcdef");
        prop_assert_eq!(c.positions, pos);
    }

    /// Tampering with the bytes of a signed cursor (one to four byte edits,
    /// or a truncation) never yields other positions: it is refused, or —
    /// when the edit only touched what the MAC does not cover, such as an
    /// unknown field a decoder skips — it decodes to the same cursor.
    #[test]
    fn tampered_cursors_are_refused(
        pos in positions(),
        edits in prop::collection::vec((any::<usize>(), 1u8..=255), 1..4),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let codec = codec();
        let text = codec.encode(pos.iter().copied());
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&text).unwrap();
        for (i, x) in &edits {
            let i = i % bytes.len();
            bytes[i] ^= x;
        }
        if let Some(c) = cut {
            bytes.truncate(c % bytes.len());
        }
        let tampered = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
        if let Ok(c) = codec.decode(&tampered) {
            prop_assert_eq!(c.positions, pos, "a tampered cursor moved positions");
        }
    }

    /// Cursors nobody signed, or signed with another key, are refused.
    #[test]
    fn unsigned_and_foreign_cursors_are_refused(pos in positions()) {
        let codec = codec();
        let unsigned = encode_parts("0123456789abcdef", pos.iter().copied());
        prop_assert_eq!(codec.decode(&unsigned), Err(CursorError::Signature));
        let foreign = CursorCodec::new("0123456789abcdef", Some(CursorKey::new(&[7u8; 32]).unwrap()));
        let text = foreign.encode(pos.iter().copied());
        prop_assert_eq!(codec.decode(&text), Err(CursorError::Signature));
    }
}
