//! The opaque cursor handed to clients: the log's epoch and, for each channel
//! of a subscription, the last sequence the client handled. Encoded as
//! URL-safe base64 of a protobuf message so it is compact and valid on every
//! gateway node.
//!
//! With a [`CursorKey`] (the gateways' `SWITCHYARD_CURSOR_KEY`), a
//! [`CursorCodec`] signs every cursor it issues (HMAC-SHA256, 16 bytes) and
//! accepts only cursors it signed: a client can resume from any position the
//! fleet gave it, but cannot invent one (say, the start of retention, far
//! beyond its lookback).
//!
//! Invariant: decoding never panics on client input; anything malformed,
//! unsigned or forged is a [`CursorError`], which the gateway answers with
//! `recovered: false`.

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use prost::Message as _;
use sha2::Sha256;
use std::sync::Arc;
use switchyard_proto::internal;

/// Bytes of the MAC kept in a signed cursor.
const MAC_BYTES: usize = 16;
/// Shortest cursor key accepted.
pub const MIN_KEY_BYTES: usize = 32;

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
    #[error("cursor is not signed by this fleet")]
    Signature,
}

/// The secret cursors are signed with; shared by every gateway of a fleet.
#[derive(Clone)]
pub struct CursorKey(Arc<[u8]>);

impl std::fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorKey(<hidden>)")
    }
}

impl CursorKey {
    /// A key from secret bytes (at least [`MIN_KEY_BYTES`]).
    pub fn new(secret: &[u8]) -> Option<CursorKey> {
        (secret.len() >= MIN_KEY_BYTES).then(|| CursorKey(secret.into()))
    }

    /// A cursor key derived from another secret of the fleet (HMAC of a
    /// fixed label), so the secret itself never signs cursors.
    pub fn derive(secret: &[u8], label: &str) -> CursorKey {
        let mut mac = <Hmac<Sha256> as hmac::Mac>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable_hmac());
        mac.update(label.as_bytes());
        CursorKey(mac.finalize().into_bytes().to_vec().into())
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as hmac::Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable_hmac())
    }
}

/// HMAC takes keys of any length; this is never reached.
fn unreachable_hmac() -> Hmac<Sha256> {
    <Hmac<Sha256> as hmac::Mac>::new_from_slice(&[0u8; 32]).expect("HMAC accepts any key length")
}

/// Encodes and decodes a fleet's cursors: this log's epoch, signed when a
/// key is configured. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CursorCodec {
    epoch: Arc<str>,
    key: Option<CursorKey>,
}

impl CursorCodec {
    pub fn new(epoch: &str, key: Option<CursorKey>) -> Self {
        CursorCodec {
            epoch: epoch.into(),
            key,
        }
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Whether cursors are signed.
    pub fn signed(&self) -> bool {
        self.key.is_some()
    }

    /// The cursor for these positions (hot path: no [`Cursor`] built).
    pub fn encode(&self, positions: impl Iterator<Item = (i64, i64)>) -> String {
        let (channels, positions): (Vec<i64>, Vec<i64>) = positions.unzip();
        let mut msg = internal::Cursor {
            epoch: self.epoch.to_string(),
            channels,
            positions,
            mac: bytes::Bytes::new(),
        };
        if let Some(key) = &self.key {
            let mut mac = key.mac();
            mac.update(&msg.encode_to_vec());
            msg.mac = bytes::Bytes::copy_from_slice(&mac.finalize().into_bytes()[..MAC_BYTES]);
        }
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(msg.encode_to_vec())
    }

    /// Decodes a client's cursor; with a key, only cursors this fleet
    /// signed are accepted. The epoch is not checked here (the caller
    /// compares it with the log's).
    pub fn decode(&self, text: &str) -> Result<Cursor, CursorError> {
        let mut msg = decode_message(text)?;
        if let Some(key) = &self.key {
            let given = std::mem::take(&mut msg.mac);
            if given.len() != MAC_BYTES {
                return Err(CursorError::Signature);
            }
            let mut mac = key.mac();
            mac.update(&msg.encode_to_vec());
            mac.verify_truncated_left(&given)
                .map_err(|_| CursorError::Signature)?;
        }
        check(msg)
    }
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

    /// Decodes an unsigned cursor (any signature is ignored); the gateway
    /// decodes through its [`CursorCodec`].
    pub fn decode(text: &str) -> Result<Cursor, CursorError> {
        check(decode_message(text)?)
    }
}

fn decode_message(text: &str) -> Result<internal::Cursor, CursorError> {
    if text.len() > MAX_CURSOR_LEN {
        return Err(CursorError::TooLong);
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| CursorError::Base64)?;
    internal::Cursor::decode(bytes.as_slice()).map_err(|_| CursorError::Decode)
}

fn check(c: internal::Cursor) -> Result<Cursor, CursorError> {
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

/// Encodes a cursor from parts without building a [`Cursor`] (hot path).
pub fn encode_parts(epoch: &str, positions: impl Iterator<Item = (i64, i64)>) -> String {
    let (channels, positions): (Vec<i64>, Vec<i64>) = positions.unzip();
    let msg = internal::Cursor {
        epoch: epoch.to_owned(),
        channels,
        positions,
        mac: bytes::Bytes::new(),
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

    #[test]
    fn signed_cursors_round_trip_and_forgeries_are_refused() {
        let key = CursorKey::new(&[7u8; 32]).unwrap();
        let codec = CursorCodec::new("e", Some(key));
        let text = codec.encode([(1, 5), (2, 9)].into_iter());
        let c = codec.decode(&text).unwrap();
        assert_eq!(c.positions, vec![(1, 5), (2, 9)]);
        // An unsigned cursor, or one signed with another key, is refused.
        let unsigned = encode_parts("e", [(1, 0)].into_iter());
        assert_eq!(codec.decode(&unsigned), Err(CursorError::Signature));
        let other = CursorCodec::new("e", Some(CursorKey::derive(b"x", "label")));
        assert_eq!(
            codec.decode(&other.encode([(1, 0)].into_iter())),
            Err(CursorError::Signature)
        );
        // Moving a position breaks the signature.
        let mut msg = decode_message(&text).unwrap();
        msg.positions[0] = 0;
        let moved = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(msg.encode_to_vec());
        assert_eq!(codec.decode(&moved), Err(CursorError::Signature));
        // Without a key, any well-formed cursor decodes.
        let open = CursorCodec::new("e", None);
        assert!(open.decode(&unsigned).is_ok());
        assert!(open.decode(&text).is_ok());
        assert!(CursorKey::new(&[1u8; 31]).is_none());
    }
}
