//! Signing keys published as a JWK Set (RFC 7517), read from a file or an
//! http(s) URL and kept fresh, so that an issuer can rotate its keys without
//! a gateway restart. Keys are selected by `kid`; the set is re-read every
//! refresh period, and early (at most once per [`EARLY_REFRESH_MIN_INTERVAL`])
//! when a token names a `kid` the gateway does not know yet.
//!
//! Invariants: a refresh that fails (unreachable, not JSON, no usable key)
//! never replaces the keys in use; and a key's algorithm comes from the key
//! (`kty`, `crv`, and `alg` when given), never from a token. Only RS256 keys
//! of at least 2048 bits and ES256 (P-256) keys are taken; a symmetric
//! (`oct`) key is never taken from a JWKS.

use crate::metrics::{JWKS_KEYS, JWKS_REFRESHES};
use arc_swap::ArcSwap;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard_ops::backoff::Backoff;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Largest JWKS document read, in bytes.
pub const MAX_JWKS_BYTES: usize = 1 << 20;
/// Longest a fetch (connect, response and body) may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Unknown `kid`s trigger at most one early refresh per this interval, so a
/// client sending made-up key ids cannot turn the gateway against the issuer.
pub const EARLY_REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// Where the JWKS comes from (`SWITCHYARD_JWT_JWKS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    Url(hyper::Uri),
}

impl std::str::FromStr for JwksSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let uri: hyper::Uri = s.parse().map_err(|e| format!("not a valid URL: {e}"))?;
            if uri.host().is_none_or(str::is_empty) {
                return Err("the URL has no host".into());
            }
            Ok(JwksSource::Url(uri))
        } else if s.contains("://") {
            Err("expected a file path or an http:// or https:// URL".into())
        } else {
            Ok(JwksSource::File(PathBuf::from(s)))
        }
    }
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::File(p) => write!(f, "{}", p.display()),
            JwksSource::Url(u) => write!(f, "{u}"),
        }
    }
}

/// Why a JWKS could not be (re)loaded; the keys in use stay.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("reading {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("{from} is not a JWK Set: {reason}")]
    Parse { from: String, reason: String },
    #[error("{from} has no usable key (RS256 >= 2048 bits or ES256/P-256); {skipped} skipped")]
    NoUsableKey { from: String, skipped: usize },
    #[error("building the https client: {0}")]
    Tls(String),
}

/// A key and the one algorithm it verifies.
pub(crate) struct VerifyingKey {
    pub(crate) alg: Algorithm,
    pub(crate) key: DecodingKey,
}

/// The keys of one JWKS document.
#[derive(Default)]
pub(crate) struct KeySet {
    by_kid: HashMap<String, VerifyingKey>,
    /// Keys published without a `kid`.
    anonymous: Vec<VerifyingKey>,
}

impl KeySet {
    pub(crate) fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.by_kid.get(kid)
    }

    /// The key for a token without a `kid`: only when the set holds exactly
    /// one key for `alg`, so a token never makes the gateway try several.
    pub(crate) fn only_key_for(&self, alg: Algorithm) -> Option<&DecodingKey> {
        let mut keys = self
            .by_kid
            .values()
            .chain(&self.anonymous)
            .filter(|k| k.alg == alg);
        match (keys.next(), keys.next()) {
            (Some(k), None) => Some(&k.key),
            _ => None,
        }
    }

    pub(crate) fn has_alg(&self, alg: Algorithm) -> bool {
        self.by_kid
            .values()
            .chain(&self.anonymous)
            .any(|k| k.alg == alg)
    }

    pub(crate) fn len(&self) -> usize {
        self.by_kid.len() + self.anonymous.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key ids, sorted (logs and tests).
    pub(crate) fn kids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.by_kid.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }
}

/// Parses a JWKS document. Keys this gateway cannot or must not use are
/// skipped with a warning rather than failing the whole set, so an issuer
/// adding, say, an EdDSA key does not lock everyone out.
pub(crate) fn parse(text: &[u8], from: &str) -> Result<KeySet, JwksError> {
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let raw: RawSet = serde_json::from_slice(text).map_err(|e| JwksError::Parse {
        from: from.to_owned(),
        reason: e.to_string(),
    })?;
    let mut set = KeySet::default();
    let mut skipped = 0;
    for value in raw.keys {
        let kid = value.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
        let parsed = serde_json::from_value::<Jwk>(value)
            .map_err(|e| e.to_string())
            .and_then(|jwk| verifying_key(&jwk));
        let key = match parsed {
            Ok(k) => k,
            Err(reason) => {
                skipped += 1;
                tracing::warn!(jwks = from, kid = kid.as_deref(), %reason, "JWKS key skipped");
                continue;
            }
        };
        match kid {
            None => set.anonymous.push(key),
            Some(kid) if set.by_kid.contains_key(&kid) => {
                skipped += 1;
                tracing::warn!(jwks = from, %kid, "JWKS key skipped: duplicate kid, first one kept");
            }
            Some(kid) => {
                set.by_kid.insert(kid, key);
            }
        }
    }
    if set.is_empty() {
        return Err(JwksError::NoUsableKey {
            from: from.to_owned(),
            skipped,
        });
    }
    Ok(set)
}

/// The verifying key of `jwk`, or why it is not used.
fn verifying_key(jwk: &Jwk) -> Result<VerifyingKey, String> {
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return Err("an encryption key (use: enc)".into());
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (alg, expected) = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = b64
                .decode(p.n.trim_end_matches('='))
                .map_err(|e| format!("RSA modulus is not base64url: {e}"))?;
            let len = n.iter().skip_while(|b| **b == 0).count();
            if len < MIN_RSA_MODULUS_BYTES {
                return Err(format!("RSA key of about {} bits, under 2048", len * 8));
            }
            (Algorithm::RS256, KeyAlgorithm::RS256)
        }
        AlgorithmParameters::EllipticCurve(p) => {
            if p.curve != EllipticCurve::P256 {
                return Err(format!("curve {:?} is not supported (P-256 only)", p.curve));
            }
            for c in [&p.x, &p.y] {
                let len = b64.decode(c.trim_end_matches('=')).map(|v| v.len());
                if len != Ok(32) {
                    return Err("P-256 coordinates must be 32 bytes of base64url".into());
                }
            }
            (Algorithm::ES256, KeyAlgorithm::ES256)
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (oct) keys are never taken from a JWKS".into())
        }
        AlgorithmParameters::OctetKeyPair(_) => return Err("EdDSA is not supported".into()),
    };
    if let Some(a) = jwk.common.key_algorithm {
        if a != expected {
            return Err(format!("alg {a} is not supported (RS256 and ES256 only)"));
        }
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    Ok(VerifyingKey { alg, key })
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

enum Fetcher {
    File(PathBuf),
    Http {
        uri: hyper::Uri,
        // Boxed: the client is large and the file variant tiny.
        client: Box<HttpsClient>,
    },
}

impl Fetcher {
    fn new(source: &JwksSource) -> Result<Self, JwksError> {
        Ok(match source {
            JwksSource::File(p) => Fetcher::File(p.clone()),
            JwksSource::Url(uri) => {
                let provider = rustls::crypto::ring::default_provider();
                let builder = hyper_rustls::HttpsConnectorBuilder::new();
                let builder = if uri.scheme() == Some(&hyper::http::uri::Scheme::HTTPS) {
                    builder
                        .with_provider_and_native_roots(provider)
                        .map_err(|e| JwksError::Tls(format!("no usable CA certificates: {e}")))?
                } else {
                    // Plain http: no TLS, so no need for (or failure over)
                    // the system's CA certificates. Redirects are not
                    // followed, so the connection never becomes https.
                    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
                        .with_safe_default_protocol_versions()
                        .map_err(|e| JwksError::Tls(e.to_string()))?
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth();
                    builder.with_tls_config(config)
                };
                let connector = builder.https_or_http().enable_http1().build();
                let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
                Fetcher::Http {
                    uri: uri.clone(),
                    client: Box::new(client),
                }
            }
        })
    }

    async fn fetch(&self) -> Result<Bytes, JwksError> {
        match self {
            Fetcher::File(path) => {
                let read = |reason: String| JwksError::Read {
                    path: path.display().to_string(),
                    reason,
                };
                let text = tokio::fs::read(path)
                    .await
                    .map_err(|e| read(e.to_string()))?;
                if text.len() > MAX_JWKS_BYTES {
                    return Err(read(format!("larger than {MAX_JWKS_BYTES} bytes")));
                }
                Ok(text.into())
            }
            Fetcher::Http { uri, client } => {
                let fetch = |reason: String| JwksError::Fetch {
                    url: uri.to_string(),
                    reason,
                };
                let req = hyper::Request::get(uri.clone())
                    .header(
                        hyper::header::ACCEPT,
                        "application/jwk-set+json, application/json",
                    )
                    .header(hyper::header::USER_AGENT, "switchyard-gateway")
                    .body(Empty::new())
                    .map_err(|e| fetch(e.to_string()))?;
                let get = async {
                    let resp = client.request(req).await.map_err(|e| error_chain(&e))?;
                    if !resp.status().is_success() {
                        return Err(format!("HTTP status {}", resp.status()));
                    }
                    Limited::new(resp.into_body(), MAX_JWKS_BYTES)
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .map_err(|e| format!("reading the body: {}", error_chain(&*e)))
                };
                match tokio::time::timeout(FETCH_TIMEOUT, get).await {
                    Ok(r) => r.map_err(fetch),
                    Err(_) => Err(fetch(format!("no answer within {FETCH_TIMEOUT:?}"))),
                }
            }
        }
    }
}

/// An error with its sources, `a: b: c` (hyper's own message is terse).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A JWKS and its refresh state, shared by every verification.
pub struct Jwks {
    source: JwksSource,
    period: Duration,
    early_min_interval: Duration,
    fetcher: Fetcher,
    keys: ArcSwap<KeySet>,
    early: Notify,
    last_early: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("source", &self.source.to_string())
            .field("period", &self.period)
            .field("kids", &self.current().kids())
            .finish()
    }
}

impl Jwks {
    /// Loads the set once. An error here is a start-up error: a gateway
    /// that cannot read its keys would refuse every token.
    pub async fn load(source: JwksSource, period: Duration) -> Result<Arc<Self>, JwksError> {
        Self::load_with(source, period, EARLY_REFRESH_MIN_INTERVAL).await
    }

    pub(crate) async fn load_with(
        source: JwksSource,
        period: Duration,
        early_min_interval: Duration,
    ) -> Result<Arc<Self>, JwksError> {
        let fetcher = Fetcher::new(&source)?;
        let jwks = Jwks {
            fetcher,
            period,
            early_min_interval,
            keys: ArcSwap::from_pointee(KeySet::default()),
            early: Notify::new(),
            last_early: Mutex::new(None),
            source,
        };
        jwks.refresh().await?;
        Ok(Arc::new(jwks))
    }

    /// The keys in use.
    pub(crate) fn current(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// Re-reads the set and, when it is usable, puts it in use. Returns the
    /// number of keys now in use.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let from = self.source.to_string();
        let result = async { parse(&self.fetcher.fetch().await?, &from) }.await;
        let set = match result {
            Ok(set) => set,
            Err(e) => {
                metrics::counter!(JWKS_REFRESHES, "result" => "error").increment(1);
                return Err(e);
            }
        };
        metrics::counter!(JWKS_REFRESHES, "result" => "ok").increment(1);
        let n = set.len();
        metrics::gauge!(JWKS_KEYS).set(n as f64);
        let old = self.keys.swap(Arc::new(set));
        let new = self.current();
        if old.kids() != new.kids() || old.len() != n {
            tracing::info!(jwks = %from, kids = ?new.kids(), keys = n, "JWKS keys loaded");
        } else {
            tracing::debug!(jwks = %from, keys = n, "JWKS unchanged");
        }
        Ok(n)
    }

    /// Asks the refresh task for an early refresh (a token named an unknown
    /// `kid`). Granted at most once per `early_min_interval`; returns whether
    /// it was.
    pub(crate) fn request_early_refresh(&self) -> bool {
        let now = Instant::now();
        let mut last = self
            .last_early
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|t| now.duration_since(t) < self.early_min_interval) {
            return false;
        }
        *last = Some(now);
        drop(last);
        // A stored permit if the task is busy: the request is not lost.
        self.early.notify_one();
        true
    }

    /// Refreshes every period, early on request, and sooner (with backoff)
    /// after a failure, until `cancel`. A failed refresh keeps the keys in
    /// use and is logged with the source and the reason.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_secs(1), self.period);
        let mut wait = self.period;
        loop {
            let trigger = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => "period",
                _ = self.early.notified() => "unknown_kid",
            };
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.refresh() => r,
            };
            match result {
                Ok(_) => {
                    backoff.reset();
                    wait = self.period;
                }
                Err(e) => {
                    wait = backoff.next_delay();
                    tracing::warn!(
                        jwks = %self.source,
                        trigger,
                        error = %e,
                        keeping = self.current().len(),
                        retry_in = ?wait,
                        "JWKS refresh failed; keeping the keys in use"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const JWK_RS256_A: &str = include_str!("../../tests/fixtures/jwt/rs256-a.jwk.json");
    pub(crate) const JWK_RS256_B: &str = include_str!("../../tests/fixtures/jwt/rs256-b.jwk.json");
    pub(crate) const JWK_ES256_C: &str = include_str!("../../tests/fixtures/jwt/es256-c.jwk.json");

    /// A JWKS document of the given JWKs.
    pub(crate) fn jwks_of(keys: &[&str]) -> String {
        format!("{{\"keys\":[{}]}}", keys.join(","))
    }

    /// A JWKS file in a fresh temporary directory.
    pub(crate) struct TempJwks {
        pub(crate) path: PathBuf,
    }

    impl TempJwks {
        pub(crate) fn new(name: &str, text: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "switchyard-jwks-{name}-{}-{}",
                std::process::id(),
                rand::random::<u64>()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let t = TempJwks {
                path: dir.join("jwks.json"),
            };
            t.write(text);
            t
        }

        /// Replaces the file atomically, as a key-rotation job would.
        pub(crate) fn write(&self, text: &str) {
            let tmp = self.path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &self.path).unwrap();
        }
    }

    impl Drop for TempJwks {
        fn drop(&mut self) {
            if let Some(dir) = self.path.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    #[test]
    fn takes_rs256_and_p256_keys_and_skips_the_rest() {
        let text = jwks_of(&[
            JWK_RS256_A,
            JWK_ES256_C,
            // Symmetric: never from a JWKS.
            r#"{"kty":"oct","kid":"hmac","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}"#,
            // An algorithm the gateway does not verify.
            &JWK_RS256_B.replace(r#""alg":"RS256""#, r#""alg":"RS512""#),
            // An encryption key.
            &JWK_RS256_B.replace(r#""use":"sig""#, r#""use":"enc""#),
            // Another curve.
            r#"{"kty":"EC","kid":"p384","crv":"P-384","x":"AAAA","y":"AAAA"}"#,
            // A short RSA key.
            r#"{"kty":"RSA","kid":"short","n":"AQAB","e":"AQAB"}"#,
            // Not a JWK at all.
            r#"{"kid":"junk","hello":"world"}"#,
            // The same kid again: the first one stays.
            &JWK_ES256_C.replace("es256-c", "rs256-a"),
        ]);
        let set = parse(text.as_bytes(), "test").unwrap();
        assert_eq!(set.kids(), vec!["es256-c", "rs256-a"]);
        assert_eq!(set.get("rs256-a").map(|k| k.alg), Some(Algorithm::RS256));
        assert_eq!(set.get("es256-c").map(|k| k.alg), Some(Algorithm::ES256));
        assert!(set.only_key_for(Algorithm::RS256).is_some());
        assert!(set.only_key_for(Algorithm::HS256).is_none());

        let two = parse(jwks_of(&[JWK_RS256_A, JWK_RS256_B]).as_bytes(), "test").unwrap();
        assert!(
            two.only_key_for(Algorithm::RS256).is_none(),
            "ambiguous without a kid"
        );
    }

    #[test]
    fn a_set_without_usable_keys_is_an_error() {
        let oct = r#"{"keys":[{"kty":"oct","kid":"k","k":"c2VjcmV0"}]}"#;
        assert!(matches!(
            parse(oct.as_bytes(), "t"),
            Err(JwksError::NoUsableKey { skipped: 1, .. })
        ));
        assert!(matches!(
            parse(b"{\"keys\":[]}", "t"),
            Err(JwksError::NoUsableKey { .. })
        ));
        assert!(matches!(
            parse(b"<html>", "t"),
            Err(JwksError::Parse { .. })
        ));
    }

    #[test]
    fn sources_are_paths_or_http_urls() {
        assert_eq!(
            "/etc/switchyard/jwks.json".parse::<JwksSource>(),
            Ok(JwksSource::File("/etc/switchyard/jwks.json".into()))
        );
        assert!(matches!(
            "https://idp.example/.well-known/jwks.json".parse::<JwksSource>(),
            Ok(JwksSource::Url(_))
        ));
        assert!(matches!(
            "HTTP://127.0.0.1:8080/jwks".parse::<JwksSource>(),
            Ok(JwksSource::Url(_))
        ));
        assert!("ftp://idp.example/jwks".parse::<JwksSource>().is_err());
        assert!("http://".parse::<JwksSource>().is_err());
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_keys_in_use() {
        let file = TempJwks::new("keep", &jwks_of(&[JWK_RS256_A]));
        let jwks = Jwks::load(
            JwksSource::File(file.path.clone()),
            Duration::from_secs(300),
        )
        .await
        .unwrap();
        file.write("not json");
        assert!(matches!(jwks.refresh().await, Err(JwksError::Parse { .. })));
        file.write(&jwks_of(&[r#"{"kty":"oct","kid":"k","k":"c2VjcmV0"}"#]));
        assert!(matches!(
            jwks.refresh().await,
            Err(JwksError::NoUsableKey { .. })
        ));
        std::fs::remove_file(&file.path).unwrap();
        assert!(matches!(jwks.refresh().await, Err(JwksError::Read { .. })));
        assert_eq!(jwks.current().kids(), vec!["rs256-a"]);

        file.write(&jwks_of(&[JWK_RS256_A, JWK_RS256_B]));
        assert_eq!(jwks.refresh().await.unwrap(), 2);
        assert_eq!(jwks.current().kids(), vec!["rs256-a", "rs256-b"]);
    }

    #[tokio::test]
    async fn a_missing_file_fails_the_first_load() {
        let e = Jwks::load(
            JwksSource::File("/nonexistent/jwks.json".into()),
            Duration::from_secs(300),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/jwks.json"), "{e}");
    }

    #[tokio::test]
    async fn early_refreshes_are_rate_limited() {
        let file = TempJwks::new("rate", &jwks_of(&[JWK_RS256_A]));
        let jwks = Jwks::load_with(
            JwksSource::File(file.path.clone()),
            Duration::from_secs(3600),
            Duration::from_millis(300),
        )
        .await
        .unwrap();
        assert!(jwks.request_early_refresh());
        assert!(!jwks.request_early_refresh());
        assert!(!jwks.request_early_refresh());
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(jwks.request_early_refresh());
    }

    #[tokio::test]
    async fn the_refresh_task_picks_up_rotation_and_stops_on_cancel() {
        let file = TempJwks::new("period", &jwks_of(&[JWK_RS256_A]));
        let jwks = Jwks::load(
            JwksSource::File(file.path.clone()),
            Duration::from_millis(50),
        )
        .await
        .unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(jwks.clone().run(cancel.clone()));
        file.write(&jwks_of(&[JWK_RS256_B, JWK_ES256_C]));
        let rotated = async {
            while jwks.current().kids() != vec!["es256-c", "rs256-b"] {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), rotated)
            .await
            .expect("the periodic refresh picks up the new keys");
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the refresh task ends on cancel")
            .unwrap();
    }

    /// A JWKS served over HTTP on 127.0.0.1 by hyper: (status, body) can be
    /// changed while it runs.
    async fn serve(
        state: Arc<Mutex<(u16, String)>>,
        cancel: CancellationToken,
    ) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = cancel.cancelled() => return,
                    a = listener.accept() => a.unwrap().0,
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let (status, body) = state.lock().unwrap().clone();
                        async move {
                            hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(http_body_util::Full::new(Bytes::from(body)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn loads_and_rotates_over_http() {
        let state = Arc::new(Mutex::new((200, jwks_of(&[JWK_RS256_A]))));
        let cancel = CancellationToken::new();
        let addr = serve(state.clone(), cancel.clone()).await;
        let source: JwksSource = format!("http://{addr}/.well-known/jwks.json")
            .parse()
            .unwrap();
        let jwks = Jwks::load(source, Duration::from_secs(300)).await.unwrap();
        assert_eq!(jwks.current().kids(), vec!["rs256-a"]);

        *state.lock().unwrap() = (200, jwks_of(&[JWK_RS256_B]));
        assert_eq!(jwks.refresh().await.unwrap(), 1);
        assert_eq!(jwks.current().kids(), vec!["rs256-b"]);

        *state.lock().unwrap() = (503, "busy".into());
        let e = jwks.refresh().await.unwrap_err();
        assert!(e.to_string().contains("503"), "{e}");
        assert_eq!(
            jwks.current().kids(),
            vec!["rs256-b"],
            "kept after a failure"
        );

        *state.lock().unwrap() = (200, "x".repeat(MAX_JWKS_BYTES + 1));
        assert!(
            jwks.refresh().await.is_err(),
            "an oversized body is refused"
        );
        assert_eq!(jwks.current().kids(), vec!["rs256-b"]);
        cancel.cancel();
    }

    #[tokio::test]
    async fn an_https_url_speaks_tls() {
        // No TLS server here (no network, no certificates to trust): check
        // that the https client builds (ring provider, system roots) and
        // refuses to read JWKS from a peer that does not speak TLS.
        let state = Arc::new(Mutex::new((200, jwks_of(&[JWK_RS256_A]))));
        let cancel = CancellationToken::new();
        let addr = serve(state, cancel.clone()).await;
        let source: JwksSource = format!("https://{addr}/jwks").parse().unwrap();
        let e = Jwks::load(source, Duration::from_secs(300))
            .await
            .unwrap_err();
        assert!(matches!(e, JwksError::Fetch { .. }), "{e}");
        cancel.cancel();
    }
}
