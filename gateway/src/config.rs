//! The gateway's configuration, loaded once at start.
//!
//! Invariant: every value is validated here with an error naming the
//! variable; a gateway without any JWT key refuses to start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use switchyard_cursorlog::config::StoreConfig;
use switchyard_cursorlog::cursor::{CursorKey, MIN_KEY_BYTES};
use switchyard_ops::config::{ConfigError, Source};

use crate::auth::jwks::JwksSource;

/// Shortest server API key accepted.
pub const MIN_API_KEY_BYTES: usize = 16;

/// Typed gateway configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub store: StoreConfig,
    pub topology: PathBuf,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub jwt_hs256_secret: Option<String>,
    pub jwt_public_key_pem: Option<String>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    /// Where RS256/ES256 keys are published as a JWKS (file or http(s)
    /// URL), selected by `kid`.
    pub jwt_jwks: Option<JwksSource>,
    /// How often the JWKS is re-read.
    pub jwt_jwks_refresh: Duration,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub jwt_leeway_secs: u64,
    /// Allowed `Origin` values for browser clients; empty = any.
    pub allowed_origins: Vec<String>,
    /// Largest client frame accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Outbound frames queued per connection before it is treated as slow.
    pub outbound_queue: usize,
    pub max_subscriptions: usize,
    /// Client frames per second (token bucket refill) and burst.
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    /// WebSocket pings answered per second (token bucket refill) and burst;
    /// past them the connection is closed with 1008.
    pub ping_rate_per_sec: u32,
    pub ping_burst: u32,
    /// Window over which drain spreads reconnect delays.
    pub drain: Duration,
    /// Period of the head check that heals lost Redis publishes.
    pub head_check: Duration,
    /// Rows per replay read (per channel).
    pub replay_page: i64,
    /// Bytes of payload per replay read, and per long-poll or history
    /// answer (the first message always goes, however large).
    pub replay_page_bytes: i64,
    /// Concurrent catch-up reads against PostgreSQL.
    pub catchup_concurrency: usize,
    /// Largest payload a client may publish.
    pub max_publish_bytes: usize,
    /// Bytes of outbound frames queued per connection (with
    /// `outbound_queue` frames, whichever is reached first).
    pub outbound_bytes: usize,
    /// How long a client may leave its queue full (catch-up) or its socket
    /// unwritable before it is closed.
    pub stall_timeout: Duration,
    /// Open client connections on this node.
    pub max_connections: usize,
    /// Time a client has to send its HTTP request headers.
    pub header_timeout: Duration,
    /// TCP keepalive idle time and probe interval.
    pub tcp_keepalive: Duration,
    /// Concurrent long-polls on this node.
    pub max_polls: usize,
    /// Concurrent long-polls of one user on this node (0: no limit).
    pub max_polls_per_user: usize,
    /// Concurrent long-poll reads against PostgreSQL: the polls' share of
    /// the pool, below its size so catch-up always has connections.
    pub poll_read_concurrency: usize,
    /// Signs and checks cursors (`SWITCHYARD_CURSOR_KEY`, or derived from
    /// the HS256 secret); `None`: cursors are unsigned.
    pub cursor_key: Option<CursorKey>,
    /// The server API's listener (`None`: no server API).
    pub api_listen: Option<SocketAddr>,
    /// Keys a backend presents to the server API.
    pub api_keys: Vec<String>,
    /// Largest payload of a server API publish.
    pub api_max_payload_bytes: usize,
    /// WebSocket connections one user may hold on this node (0: no limit).
    pub max_user_connections: usize,
    /// WebSocket connections one tenant may hold on this node (0: no limit).
    pub max_tenant_connections: usize,
    /// Client publishes per user per window, across the fleet (0: no limit).
    pub publish_rate_per_user: u64,
    /// The window of `publish_rate_per_user`.
    pub publish_rate_window: Duration,
    /// How long a node's presence entries and fleet connection counts live
    /// in Redis without a heartbeat (heartbeats every third of it).
    pub presence_ttl: Duration,
    /// Members listed in a presence answer, at most (counts go beyond).
    pub presence_max_members: usize,
}

impl GatewayConfig {
    /// How much one replay read may return.
    pub fn page_limit(&self) -> switchyard_cursorlog::PageLimit {
        switchyard_cursorlog::PageLimit {
            rows: self.replay_page.max(1),
            bytes: self.replay_page_bytes.max(1),
        }
    }

    /// The token settings, for [`crate::auth::Authenticator::from_config`].
    pub fn auth(&self) -> crate::auth::AuthConfig {
        crate::auth::AuthConfig {
            hs256_secret: self.jwt_hs256_secret.clone(),
            public_key_pem: self.jwt_public_key_pem.clone(),
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            jwks: self.jwt_jwks.clone(),
            jwks_refresh: self.jwt_jwks_refresh,
            leeway_secs: self.jwt_leeway_secs,
        }
    }
}

impl GatewayConfig {
    pub fn from_source(s: &Source) -> Result<Self, ConfigError> {
        let jwt_hs256_secret = s.get("SWITCHYARD_JWT_HS256_SECRET").map(str::to_owned);
        let jwt_public_key_pem = match s.get("SWITCHYARD_JWT_PUBLIC_KEY") {
            None => None,
            Some(v) if v.contains("-----BEGIN") => Some(v.to_owned()),
            Some(path) => {
                Some(
                    std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                        var: "SWITCHYARD_JWT_PUBLIC_KEY".into(),
                        value: path.to_owned(),
                        reason: format!("neither a PEM key nor a readable file: {e}"),
                    })?,
                )
            }
        };
        let jwt_jwks = match s.get("SWITCHYARD_JWT_JWKS") {
            None => None,
            Some(v) => Some(
                v.parse::<JwksSource>()
                    .map_err(|reason| ConfigError::Invalid {
                        var: "SWITCHYARD_JWT_JWKS".into(),
                        value: v.to_owned(),
                        reason,
                    })?,
            ),
        };
        if jwt_hs256_secret.is_none() && jwt_public_key_pem.is_none() && jwt_jwks.is_none() {
            return Err(ConfigError::Missing {
                var:
                    "SWITCHYARD_JWT_HS256_SECRET, SWITCHYARD_JWT_PUBLIC_KEY or SWITCHYARD_JWT_JWKS"
                        .into(),
                hint: "set a shared HS256 secret, a PEM public key (RS256/ES256) or its path, \
                       or a JWKS file or URL"
                    .into(),
            });
        }
        let jwt_jwks_refresh = s.parse_or("SWITCHYARD_JWT_JWKS_REFRESH_SECONDS", 300u64)?;
        if !(1..=86_400).contains(&jwt_jwks_refresh) {
            return Err(ConfigError::Invalid {
                var: "SWITCHYARD_JWT_JWKS_REFRESH_SECONDS".into(),
                value: jwt_jwks_refresh.to_string(),
                reason: "use 1 to 86400 seconds".into(),
            });
        }
        let jwt_leeway_secs = s.parse_or(
            "SWITCHYARD_JWT_LEEWAY_SECONDS",
            crate::auth::DEFAULT_LEEWAY_SECS,
        )?;
        if jwt_leeway_secs > 300 {
            return Err(ConfigError::Invalid {
                var: "SWITCHYARD_JWT_LEEWAY_SECONDS".into(),
                value: jwt_leeway_secs.to_string(),
                reason: "use at most 300 seconds; a larger skew is a clock to fix".into(),
            });
        }
        if let Some(secret) = &jwt_hs256_secret {
            if secret.len() < crate::auth::MIN_HS256_SECRET_BYTES {
                return Err(ConfigError::Invalid {
                    var: "SWITCHYARD_JWT_HS256_SECRET".into(),
                    value: "<hidden>".into(),
                    reason: format!(
                        "use at least {} bytes of secret (e.g. `openssl rand -hex 32`)",
                        crate::auth::MIN_HS256_SECRET_BYTES
                    ),
                });
            }
        }
        let cursor_key = match s.get("SWITCHYARD_CURSOR_KEY") {
            Some(k) => Some(CursorKey::new(k.as_bytes()).ok_or_else(|| ConfigError::Invalid {
                var: "SWITCHYARD_CURSOR_KEY".into(),
                value: "<hidden>".into(),
                reason: format!(
                    "use at least {MIN_KEY_BYTES} bytes (e.g. `openssl rand -hex 32`), the same on every gateway"
                ),
            })?),
            None => jwt_hs256_secret
                .as_deref()
                .map(|s| CursorKey::derive(s.as_bytes(), "switchyard cursor key v1")),
        };
        let api_listen = match s.get("SWITCHYARD_API_LISTEN").filter(|v| !v.is_empty()) {
            None => None,
            Some(_) => Some(s.socket_addr_or("SWITCHYARD_API_LISTEN", "")?),
        };
        let api_keys = s.list_or("SWITCHYARD_API_KEYS", "");
        if api_listen.is_some() {
            if api_keys.is_empty() {
                return Err(ConfigError::Missing {
                    var: "SWITCHYARD_API_KEYS".into(),
                    hint: "SWITCHYARD_API_LISTEN is set: give the server API at least one key \
                           (comma-separated, e.g. `openssl rand -hex 32`)"
                        .into(),
                });
            }
            if api_keys.iter().any(|k| k.len() < MIN_API_KEY_BYTES) {
                return Err(ConfigError::Invalid {
                    var: "SWITCHYARD_API_KEYS".into(),
                    value: "<hidden>".into(),
                    reason: format!("use keys of at least {MIN_API_KEY_BYTES} bytes"),
                });
            }
        }
        let store = StoreConfig::from_source(s, 16)?;
        let poll_read_concurrency: usize = s.parse_or(
            "SWITCHYARD_POLL_READ_CONCURRENCY",
            (store.pg_pool_size / 4).max(1),
        )?;
        if poll_read_concurrency == 0
            || (store.pg_pool_size > 1 && poll_read_concurrency >= store.pg_pool_size)
        {
            return Err(ConfigError::Invalid {
                var: "SWITCHYARD_POLL_READ_CONCURRENCY".into(),
                value: poll_read_concurrency.to_string(),
                reason: format!(
                    "use 1 to {} (below SWITCHYARD_PG_POOL_SIZE={}, so catch-ups keep connections)",
                    store.pg_pool_size.saturating_sub(1).max(1),
                    store.pg_pool_size
                ),
            });
        }
        let publish_rate_window =
            Duration::from_secs(s.parse_or("SWITCHYARD_PUBLISH_RATE_WINDOW_SECONDS", 60u64)?);
        if publish_rate_window.is_zero() {
            return Err(ConfigError::Invalid {
                var: "SWITCHYARD_PUBLISH_RATE_WINDOW_SECONDS".into(),
                value: "0".into(),
                reason: "use at least 1 second".into(),
            });
        }
        let presence_ttl = s.parse_or("SWITCHYARD_PRESENCE_TTL_SECONDS", 30u64)?;
        if !(3..=3600).contains(&presence_ttl) {
            return Err(ConfigError::Invalid {
                var: "SWITCHYARD_PRESENCE_TTL_SECONDS".into(),
                value: presence_ttl.to_string(),
                reason: "use 3 to 3600 seconds".into(),
            });
        }
        let presence_max_members = s.parse_or("SWITCHYARD_PRESENCE_MAX_MEMBERS", 1000usize)?;
        if !(1..=100_000).contains(&presence_max_members) {
            return Err(ConfigError::Invalid {
                var: "SWITCHYARD_PRESENCE_MAX_MEMBERS".into(),
                value: presence_max_members.to_string(),
                reason: "use 1 to 100000".into(),
            });
        }
        Ok(GatewayConfig {
            presence_ttl: Duration::from_secs(presence_ttl),
            presence_max_members,
            api_listen,
            api_keys,
            api_max_payload_bytes: s.parse_or("SWITCHYARD_API_MAX_PAYLOAD_BYTES", 256 * 1024)?,
            max_user_connections: s.parse_or("SWITCHYARD_MAX_USER_CONNECTIONS", 0)?,
            max_tenant_connections: s.parse_or("SWITCHYARD_MAX_TENANT_CONNECTIONS", 0)?,
            publish_rate_per_user: s.parse_or("SWITCHYARD_PUBLISH_RATE_PER_USER", 0)?,
            publish_rate_window,
            store,
            topology: PathBuf::from(s.required(
                "SWITCHYARD_TOPOLOGY",
                "the path of the topology file (JSON or YAML)",
            )?),
            listen: s.socket_addr_or("SWITCHYARD_LISTEN", "0.0.0.0:8080")?,
            admin_listen: s.socket_addr_or("SWITCHYARD_ADMIN_LISTEN", "0.0.0.0:9091")?,
            jwt_hs256_secret,
            jwt_public_key_pem,
            jwt_issuer: s.get("SWITCHYARD_JWT_ISSUER").map(str::to_owned),
            jwt_audience: s.get("SWITCHYARD_JWT_AUDIENCE").map(str::to_owned),
            jwt_jwks,
            jwt_jwks_refresh: Duration::from_secs(jwt_jwks_refresh),
            jwt_leeway_secs,
            allowed_origins: s.list_or("SWITCHYARD_ALLOWED_ORIGINS", ""),
            max_frame_bytes: s.parse_or("SWITCHYARD_MAX_FRAME_BYTES", 64 * 1024)?,
            outbound_queue: s.parse_or("SWITCHYARD_OUTBOUND_QUEUE", 1024)?,
            max_subscriptions: s.parse_or("SWITCHYARD_MAX_SUBSCRIPTIONS", 64)?,
            rate_per_sec: s.parse_or("SWITCHYARD_CLIENT_RATE", 50)?,
            rate_burst: s.parse_or("SWITCHYARD_CLIENT_BURST", 200)?,
            ping_rate_per_sec: s.parse_or("SWITCHYARD_PING_RATE", 2)?,
            ping_burst: s.parse_or("SWITCHYARD_PING_BURST", 10)?,
            drain: Duration::from_secs(s.parse_or("SWITCHYARD_DRAIN_SECONDS", 20)?),
            head_check: s.millis_or("SWITCHYARD_HEAD_CHECK_MS", 2000)?,
            replay_page: s.parse_or("SWITCHYARD_REPLAY_PAGE", 1000)?,
            replay_page_bytes: s.parse_or("SWITCHYARD_REPLAY_PAGE_BYTES", 1024 * 1024)?,
            catchup_concurrency: s.parse_or("SWITCHYARD_CATCHUP_CONCURRENCY", 32)?,
            max_publish_bytes: s.parse_or("SWITCHYARD_MAX_PUBLISH_BYTES", 32 * 1024)?,
            outbound_bytes: s.parse_or("SWITCHYARD_OUTBOUND_QUEUE_BYTES", 4 * 1024 * 1024)?,
            stall_timeout: s.millis_or("SWITCHYARD_CLIENT_STALL_MS", 30_000)?,
            max_connections: s.parse_or("SWITCHYARD_MAX_CONNECTIONS", 50_000)?,
            header_timeout: s.millis_or("SWITCHYARD_HEADER_TIMEOUT_MS", 10_000)?,
            tcp_keepalive: Duration::from_secs(s.parse_or("SWITCHYARD_TCP_KEEPALIVE_SECONDS", 60)?),
            max_polls: s.parse_or("SWITCHYARD_MAX_POLLS", 2_000)?,
            max_polls_per_user: s.parse_or("SWITCHYARD_MAX_POLLS_PER_USER", 4)?,
            poll_read_concurrency,
            cursor_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("SWITCHYARD_POSTGRES_URL", "postgres://x"),
            ("SWITCHYARD_REDIS_URL", "redis://x"),
            ("SWITCHYARD_TOPOLOGY", "/t.json"),
            (
                "SWITCHYARD_JWT_HS256_SECRET",
                "0123456789abcdef0123456789abcdef",
            ),
        ]
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = GatewayConfig::from_source(&Source::from_map(base())).unwrap();
        assert_eq!(c.listen.port(), 8080);
        assert_eq!(c.admin_listen.port(), 9091);
        assert_eq!(c.api_listen, None);
        assert_eq!(c.max_user_connections, 0);
        assert_eq!(c.presence_ttl, Duration::from_secs(30));
        assert_eq!(c.presence_max_members, 1000);
    }

    #[test]
    fn presence_settings_are_bounded() {
        for (var, value) in [
            ("SWITCHYARD_PRESENCE_TTL_SECONDS", "1"),
            ("SWITCHYARD_PRESENCE_TTL_SECONDS", "x"),
            ("SWITCHYARD_PRESENCE_MAX_MEMBERS", "0"),
        ] {
            let mut v = base();
            v.push((var, value));
            let e = GatewayConfig::from_source(&Source::from_map(v)).unwrap_err();
            assert!(e.to_string().contains(var), "{e}");
        }
    }

    #[test]
    fn polls_get_a_share_of_the_pool_below_its_size() {
        let c = GatewayConfig::from_source(&Source::from_map(base())).unwrap();
        assert_eq!((c.max_polls_per_user, c.poll_read_concurrency), (4, 4));
        let mut v = base();
        v.push(("SWITCHYARD_PG_POOL_SIZE", "4"));
        let c = GatewayConfig::from_source(&Source::from_map(v.clone())).unwrap();
        assert_eq!(c.poll_read_concurrency, 1);
        for bad in ["4", "0", "many"] {
            let mut v = v.clone();
            v.push(("SWITCHYARD_POLL_READ_CONCURRENCY", bad));
            let e = GatewayConfig::from_source(&Source::from_map(v)).unwrap_err();
            assert!(
                e.to_string().contains("SWITCHYARD_POLL_READ_CONCURRENCY"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn the_server_api_needs_keys() {
        let mut v = base();
        v.push(("SWITCHYARD_API_LISTEN", "127.0.0.1:9092"));
        let e = GatewayConfig::from_source(&Source::from_map(v.clone())).unwrap_err();
        assert!(e.to_string().contains("SWITCHYARD_API_KEYS"), "{e}");
        v.push(("SWITCHYARD_API_KEYS", "short"));
        let e = GatewayConfig::from_source(&Source::from_map(v.clone())).unwrap_err();
        assert!(e.to_string().contains("SWITCHYARD_API_KEYS"), "{e}");
        v.pop();
        v.push((
            "SWITCHYARD_API_KEYS",
            "0123456789abcdef0123, fedcba9876543210fedc",
        ));
        let c = GatewayConfig::from_source(&Source::from_map(v)).unwrap();
        assert_eq!(c.api_listen.map(|a| a.port()), Some(9092));
        assert_eq!(c.api_keys.len(), 2);
    }

    #[test]
    fn a_jwt_key_is_required() {
        let mut v = base();
        v.retain(|(k, _)| *k != "SWITCHYARD_JWT_HS256_SECRET");
        let e = GatewayConfig::from_source(&Source::from_map(v)).unwrap_err();
        assert!(e.to_string().contains("SWITCHYARD_JWT_HS256_SECRET"), "{e}");
        let mut v = base();
        v.push(("SWITCHYARD_JWT_PUBLIC_KEY", "/nonexistent/key.pem"));
        let e = GatewayConfig::from_source(&Source::from_map(v)).unwrap_err();
        assert!(e.to_string().contains("SWITCHYARD_JWT_PUBLIC_KEY"), "{e}");
    }

    #[test]
    fn hs256_secret_needs_32_bytes() {
        let mut v = base();
        v.retain(|(k, _)| *k != "SWITCHYARD_JWT_HS256_SECRET");
        v.push((
            "SWITCHYARD_JWT_HS256_SECRET",
            "0123456789abcdef0123456789abcde",
        ));
        let e = GatewayConfig::from_source(&Source::from_map(v)).unwrap_err();
        assert!(e.to_string().contains("SWITCHYARD_JWT_HS256_SECRET"), "{e}");
        assert!(
            !e.to_string().contains("0123456789"),
            "the secret leaks: {e}"
        );
    }

    #[test]
    fn jwt_settings() {
        let c = GatewayConfig::from_source(&Source::from_map(base())).unwrap();
        assert_eq!(c.jwt_jwks, None);
        assert_eq!(c.jwt_jwks_refresh, Duration::from_secs(300));
        assert_eq!(c.jwt_leeway_secs, 30);

        // A JWKS alone is enough.
        let mut v = base();
        v.retain(|(k, _)| *k != "SWITCHYARD_JWT_HS256_SECRET");
        v.push((
            "SWITCHYARD_JWT_JWKS",
            "https://idp.example/.well-known/jwks.json",
        ));
        v.push(("SWITCHYARD_JWT_JWKS_REFRESH_SECONDS", "60"));
        v.push(("SWITCHYARD_JWT_LEEWAY_SECONDS", "5"));
        let c = GatewayConfig::from_source(&Source::from_map(v)).unwrap();
        assert!(matches!(c.jwt_jwks, Some(JwksSource::Url(_))));
        assert_eq!(c.jwt_jwks_refresh, Duration::from_secs(60));
        assert_eq!(c.jwt_leeway_secs, 5);

        for (var, value) in [
            ("SWITCHYARD_JWT_JWKS", "ftp://idp.example/jwks"),
            ("SWITCHYARD_JWT_JWKS_REFRESH_SECONDS", "0"),
            ("SWITCHYARD_JWT_JWKS_REFRESH_SECONDS", "soon"),
            ("SWITCHYARD_JWT_LEEWAY_SECONDS", "3600"),
        ] {
            let mut v = base();
            v.push((var, value));
            let e = GatewayConfig::from_source(&Source::from_map(v)).unwrap_err();
            assert!(e.to_string().contains(var), "{var}={value}: {e}");
        }
    }
}
