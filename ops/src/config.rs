//! Configuration sources. Values come from the process environment, optionally
//! merged over a `KEY=value` file named by `SWITCHYARD_CONFIG_FILE` (the
//! environment wins). Tests pass a map instead of touching the environment.
//!
//! Invariant: every error names the variable and what a valid value looks like.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// A configuration error; `main` exits with code 64 (EX_USAGE) on it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var} is required: {hint}")]
    Missing { var: String, hint: String },
    #[error("{var}={value:?} is invalid: {reason}")]
    Invalid {
        var: String,
        value: String,
        reason: String,
    },
    #[error("cannot read config file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
}

/// Where configuration values come from.
#[derive(Debug, Clone, Default)]
pub struct Source {
    values: HashMap<String, String>,
}

impl Source {
    /// The process environment, over the file named by `SWITCHYARD_CONFIG_FILE`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut values = HashMap::new();
        if let Ok(path) = std::env::var("SWITCHYARD_CONFIG_FILE") {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::File {
                path: path.clone(),
                source,
            })?;
            values.extend(parse_env_file(&text));
        }
        values.extend(std::env::vars());
        Ok(Source { values })
    }

    /// A fixed map (tests).
    pub fn from_map<I, K, V>(iter: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Source {
            values: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The raw value, if set and not empty.
    pub fn get(&self, var: &str) -> Option<&str> {
        self.values
            .get(var)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    pub fn required(&self, var: &str, hint: &str) -> Result<String, ConfigError> {
        self.get(var)
            .map(str::to_owned)
            .ok_or_else(|| ConfigError::Missing {
                var: var.to_owned(),
                hint: hint.to_owned(),
            })
    }

    pub fn string_or(&self, var: &str, default: &str) -> String {
        self.get(var).unwrap_or(default).to_owned()
    }

    /// A value parsed with `FromStr`, or `default` when unset.
    pub fn parse_or<T>(&self, var: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.get(var) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|e: T::Err| ConfigError::Invalid {
                var: var.to_owned(),
                value: v.to_owned(),
                reason: e.to_string(),
            }),
        }
    }

    pub fn socket_addr_or(&self, var: &str, default: &str) -> Result<SocketAddr, ConfigError> {
        let v = self.string_or(var, default);
        v.parse()
            .map_err(|e: std::net::AddrParseError| ConfigError::Invalid {
                var: var.to_owned(),
                value: v.clone(),
                reason: format!("{e}; expected host:port such as 0.0.0.0:8080"),
            })
    }

    /// Milliseconds as a `Duration`.
    pub fn millis_or(&self, var: &str, default_ms: u64) -> Result<Duration, ConfigError> {
        self.parse_or(var, default_ms).map(Duration::from_millis)
    }

    /// Comma-separated list, trimmed, empty items removed.
    pub fn list_or(&self, var: &str, default: &str) -> Vec<String> {
        self.string_or(var, default)
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let v = v.trim().trim_matches('"').trim_matches('\'');
            Some((k.trim().to_owned(), v.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_variable() {
        let s = Source::from_map([("SWITCHYARD_LISTEN", "nonsense"), ("N", "x")]);
        let e = s
            .socket_addr_or("SWITCHYARD_LISTEN", "0.0.0.0:1")
            .unwrap_err();
        assert!(e.to_string().contains("SWITCHYARD_LISTEN"), "{e}");
        let e = s.parse_or::<u32>("N", 1).unwrap_err();
        assert!(e.to_string().starts_with("N=\"x\" is invalid"), "{e}");
        let e = s
            .required("SWITCHYARD_POSTGRES_URL", "a postgres:// URL")
            .unwrap_err();
        assert!(e
            .to_string()
            .contains("SWITCHYARD_POSTGRES_URL is required"));
    }

    #[test]
    fn env_file_lines() {
        let v = parse_env_file("# c\nexport A=1\nB = \"two\"\n\nbad\n");
        assert_eq!(
            v,
            vec![("A".into(), "1".into()), ("B".into(), "two".into())]
        );
    }

    #[test]
    fn lists_and_defaults() {
        let s = Source::from_map([("T", " a, b ,,c ")]);
        assert_eq!(s.list_or("T", "x"), vec!["a", "b", "c"]);
        assert_eq!(s.list_or("U", "x,y"), vec!["x", "y"]);
        assert_eq!(s.millis_or("U", 5).unwrap(), Duration::from_millis(5));
    }
}
