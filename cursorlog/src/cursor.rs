//! The opaque cursor handed to clients: the log's epoch and, for each channel
//! of a subscription, the last sequence the client handled. Encoded as
//! URL-safe base64 of a protobuf message so it is compact and valid on every
//! gateway node.
//!
//! Invariant: decoding never panics on client input; anything malformed is a
//! [`CursorError`], which the gateway answers with `recovered: false`.

use base64::Engine as _;
use prost::Message as _;
use switchyard_proto::internal;

/// Longest cursor accepted from a client, in characters.
pub const MAX_CURSOR_LEN: usize = 8192;

/// A decoded cursor.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cursor {
    pub epoch: String,
    /// `(channel id, last handled seq)`, sorted by channel id.
    pub positions: Vec<(i64, i64)>,
}

/// Why a cursor was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CursorError {
    #[error("cursor longer than {MAX_CURSOR_LEN} characters")]
    TooLong,
    #[error("cursor is not valid base64")]
    Base64,
    #[error("cursor is not a Switchyard cursor")]
    Decode,
    #[error("cursor is inconsistent")]
    Inconsistent,
}

impl Cursor {
    pub fn new(epoch: impl Into<String>, mut positions: Vec<(i64, i64)>) -> Self {
        positions.sort_unstable();
        Cursor {
            epoch: epoch.into(),
            positions,
        }
    }

    /// The position of `channel`, if the cursor covers it.
    pub fn position(&self, channel: i64) -> Option<i64> {
        self.positions
            .binary_search_by_key(&channel, |p| p.0)
            .ok()
            .map(|i| self.positions[i].1)
    }

    pub fn encode(&self) -> String {
        encode_parts(&self.epoch, self.positions.iter().copied())
    }

    pub fn decode(text: &str) -> Result<Cursor, CursorError> {
        if text.len() > MAX_CURSOR_LEN {
            return Err(CursorError::TooLong);
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(|_| CursorError::Base64)?;
        let c = internal::Cursor::decode(bytes.as_slice()).map_err(|_| CursorError::Decode)?;
        if c.channels.len() != c.positions.len() || c.epoch.is_empty() {
            return Err(CursorError::Inconsistent);
        }
        if c.positions.iter().any(|p| *p < 0) || c.channels.iter().any(|c| *c <= 0) {
            return Err(CursorError::Inconsistent);
        }
        let positions: Vec<(i64, i64)> = c.channels.into_iter().zip(c.positions).collect();
        let mut sorted = positions.clone();
        sorted.sort_unstable();
        sorted.dedup_by_key(|p| p.0);
        if sorted.len() != positions.len() {
            return Err(CursorError::Inconsistent);
        }
        Ok(Cursor {
            epoch: c.epoch,
            positions: sorted,
        })
    }
}

/// Encodes a cursor from parts without building a [`Cursor`] (hot path).
pub fn encode_parts(epoch: &str, positions: impl Iterator<Item = (i64, i64)>) -> String {
    let (channels, positions): (Vec<i64>, Vec<i64>) = positions.unzip();
    let msg = internal::Cursor {
        epoch: epoch.to_owned(),
        channels,
        positions,
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(msg.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn malformed_cursors_are_errors() {
        assert_eq!(Cursor::decode("!!!"), Err(CursorError::Base64));
        assert_eq!(Cursor::decode("AAAA"), Err(CursorError::Decode));
        assert_eq!(Cursor::decode(""), Err(CursorError::Inconsistent));
        assert_eq!(
            Cursor::decode(&"A".repeat(MAX_CURSOR_LEN + 1)),
            Err(CursorError::TooLong)
        );
        let dup = encode_parts("e", [(1, 2), (1, 3)].into_iter());
        assert_eq!(Cursor::decode(&dup), Err(CursorError::Inconsistent));
    }

    proptest! {
        #[test]
        fn roundtrip(epoch in "[a-f0-9]{16}", pos in proptest::collection::btree_map(1i64..1_000_000, 0i64..i64::MAX / 2, 0..20)) {
            let c = Cursor::new(epoch, pos.into_iter().collect());
            let text = c.encode();
            prop_assert!(text.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'));
            prop_assert_eq!(Cursor::decode(&text).unwrap(), c);
        }

        #[test]
        fn never_panics(s in ".{0,200}") {
            let _ = Cursor::decode(&s);
        }
    }
}
