//! The events the load test produces to Kafka, and the cheap scan a client
//! runs on every frame it receives.
//!
//! An event is the contract's JSON envelope (section 2) whose payload is
//! `{"n":<seq>,"p":<stream>,"t":<µs>,"pad":"…"}`: `p` names the stream (the
//! product index in the scoped scenario, 0 in fan-out), `n` is the event's
//! sequence number within its stream (dense from 0), and `t` is the
//! *scheduled* send time in microseconds since the epoch (`created_at_ms` is
//! the same instant in milliseconds). Probe events carry `{"probe":k}`
//! instead and are never counted.
//!
//! Invariant: the scan finds `"n":`, `"p":` and `"t":` wherever the system
//! under test put them (Switchyard's `message` frame, a Socket.IO `42[...]`
//! packet, the raw Kafka value), so no keys of those names may appear
//! anywhere else in a frame; payloads serialise to exactly the requested
//! size so every system carries the same bytes.

use memchr::memmem::Finder;
use std::io::Write as _;
use std::sync::LazyLock;

/// The client-facing topic of the fan-out scenarios (an unfiltered channel).
pub const FANOUT_TOPIC: &str = "Fanout";
/// The client-facing topic of the scoped scenario (`News-[ScopeValue]`).
pub const SCOPED_TOPIC: &str = "News";

/// The product code of stream `p` in the scoped scenario.
pub fn product_code(p: u32) -> String {
    format!("P{p}")
}

/// What to put in one event.
#[derive(Debug, Clone, Copy)]
pub struct EventSpec<'a> {
    /// Unique per run and system phase; the event id is `<run>-<p>-<n>`.
    pub run: &'a str,
    pub topic: &'a str,
    /// `Some(p)`: scoped to product `P<p>`; `None`: no scopes (everyone).
    pub product: Option<u32>,
    pub stream: u32,
    pub n: u64,
    pub t_us: u64,
    /// Size of the serialised `payload` object in bytes.
    pub payload_bytes: usize,
}

/// Appends the Kafka record value of one event to `buf`.
pub fn encode_event(buf: &mut Vec<u8>, e: &EventSpec<'_>) {
    let head_len = {
        // {"n":N,"p":P,"t":T,"pad":""}
        let digits = |v: u64| v.checked_ilog10().map_or(1, |d| d as usize + 1);
        r#"{"n":,"p":,"t":,"pad":""}"#.len()
            + digits(e.n)
            + digits(u64::from(e.stream))
            + digits(e.t_us)
    };
    let pad = e.payload_bytes.saturating_sub(head_len);
    let _ = write!(
        buf,
        r#"{{"id":"{}-{}-{}","topic":"{}","scopes":["#,
        e.run, e.stream, e.n, e.topic
    );
    if let Some(p) = e.product {
        let _ = write!(buf, r#"{{"type":"Product Codes","values":["P{p}"]}}"#);
    }
    let _ = write!(
        buf,
        r#"],"payload":{{"n":{},"p":{},"t":{},"pad":""#,
        e.n, e.stream, e.t_us
    );
    buf.resize(buf.len() + pad, b'x');
    let _ = write!(buf, r#""}},"created_at_ms":{}}}"#, e.t_us / 1000);
}

/// Appends a probe event: it reaches every subscriber of `topic` (all
/// `products` when scoped) and is ignored by the counters.
pub fn encode_probe(buf: &mut Vec<u8>, run: &str, topic: &str, products: Option<u32>, k: u64) {
    let _ = write!(
        buf,
        r#"{{"id":"{run}-probe-{k}","topic":"{topic}","scopes":["#
    );
    if let Some(count) = products {
        let _ = write!(buf, r#"{{"type":"Product Codes","values":["#);
        for p in 0..count {
            if p > 0 {
                buf.push(b',');
            }
            let _ = write!(buf, r#""P{p}""#);
        }
        buf.extend_from_slice(b"]}");
    }
    let _ = write!(
        buf,
        r#"],"payload":{{"probe":{k}}},"created_at_ms":{}}}"#,
        crate::now_us() / 1000
    );
}

/// What a client learns from one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scanned {
    /// A counted event.
    Event { n: u64, stream: u32, t_us: u64 },
    /// A probe (barrier) event.
    Probe(u64),
    /// Anything else (replies, pings, server notices).
    Other,
}

static N_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""n":"#));
static P_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""p":"#));
static T_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""t":"#));
static PROBE_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""probe":"#));
static CURSOR_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""cursor":""#));

fn number_after(frame: &[u8], key: &Finder<'_>) -> Option<u64> {
    let at = key.find(frame)? + key.needle().len();
    let mut i = at;
    while frame.get(i) == Some(&b' ') {
        i += 1;
    }
    let mut v: u64 = 0;
    let start = i;
    while let Some(d) = frame.get(i).filter(|d| d.is_ascii_digit()) {
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        i += 1;
    }
    (i > start).then_some(v)
}

/// Finds the counted fields of a frame without parsing the JSON.
pub fn scan(frame: &[u8]) -> Scanned {
    match number_after(frame, &N_KEY) {
        Some(n) => Scanned::Event {
            n,
            stream: number_after(frame, &P_KEY).map_or(0, |p| p as u32),
            t_us: number_after(frame, &T_KEY).unwrap_or(0),
        },
        None => match number_after(frame, &PROBE_KEY) {
            Some(k) => Scanned::Probe(k),
            None => Scanned::Other,
        },
    }
}

/// The `cursor` string of a Switchyard `message` frame.
pub fn cursor_of(frame: &[u8]) -> Option<&[u8]> {
    let at = CURSOR_KEY.find(frame)? + CURSOR_KEY.needle().len();
    let len = memchr::memchr(b'"', &frame[at..])?;
    Some(&frame[at..at + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u64, payload_bytes: usize, product: Option<u32>) -> serde_json::Value {
        let mut buf = Vec::new();
        encode_event(
            &mut buf,
            &EventSpec {
                run: "r1",
                topic: SCOPED_TOPIC,
                product,
                stream: product.unwrap_or(0),
                n,
                t_us: 1_763_800_000_123_456,
                payload_bytes,
            },
        );
        serde_json::from_slice(&buf).expect("valid JSON")
    }

    #[test]
    fn events_are_contract_envelopes_with_exact_payload_size() {
        for n in [0, 9, 10, 12345, u64::from(u32::MAX)] {
            let v = event(n, 100, Some(7));
            assert_eq!(v["id"], format!("r1-7-{n}"));
            assert_eq!(v["topic"], "News");
            assert_eq!(v["scopes"][0]["values"][0], "P7");
            assert_eq!(v["created_at_ms"], 1_763_800_000_123u64);
            assert_eq!(
                serde_json::to_string(&v["payload"]).expect("json").len(),
                100
            );
            assert_eq!(v["payload"]["n"], n);
        }
        let unscoped = event(3, 10, None);
        assert_eq!(unscoped["scopes"], serde_json::json!([]));
    }

    #[test]
    fn scan_finds_fields_in_every_wire_shape() {
        let raw = serde_json::to_vec(&event(42, 100, Some(3))).expect("json");
        let want = Scanned::Event {
            n: 42,
            stream: 3,
            t_us: 1_763_800_000_123_456,
        };
        assert_eq!(scan(&raw), want);
        // Switchyard re-serialises the payload (possibly with sorted keys).
        let sy = br#"{"type":"message","topic":"News","id":"r1-3-42","cursor":"abc.d-9","payload":{"n":42,"p":3,"pad":"xx","t":1763800000123456},"created_at_ms":1}"#;
        assert_eq!(scan(sy), want);
        assert_eq!(cursor_of(sy), Some(&b"abc.d-9"[..]));
        // Socket.IO event packet.
        let sio = br#"42["m",{"payload":{"t":1763800000123456,"p":3,"n":42}}]"#;
        assert_eq!(scan(sio), want);
        let mut probe = Vec::new();
        encode_probe(&mut probe, "r1", "News", Some(3), 5);
        let v: serde_json::Value = serde_json::from_slice(&probe).expect("json");
        assert_eq!(
            v["scopes"][0]["values"],
            serde_json::json!(["P0", "P1", "P2"])
        );
        assert_eq!(scan(&probe), Scanned::Probe(5));
        assert_eq!(scan(br#"{"type":"subscribed","id":1}"#), Scanned::Other);
    }
}
