//! Errors a client request can end in, typed so each caller can act on them
//! and each maps to exactly one protocol [`ErrorCode`] (and HTTP status for
//! the long-poll).
//!
//! Invariant: the message a client sees never carries internal detail
//! (PostgreSQL's text stays in the log line); [`RequestError::Log`] says only
//! that the log is unavailable.

use crate::protocol::ErrorCode;
use switchyard_cursorlog::LogError;

/// Why a subscribe, poll or publish was refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    #[error("your entitlements give you no channel of topic {0:?}")]
    NoChannels(String),
    #[error("topic {0:?} does not accept publishes from you")]
    NotPublishable(String),
    #[error("payload is {size} bytes, the limit is {limit}")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("payload is not valid JSON")]
    PayloadNotJson,
    #[error("the message log is unavailable; retry shortly")]
    Log(#[source] LogError),
    #[error("publish was not stored")]
    NotStored,
    #[error("too many publishes from this user (at most {limit} per {window_secs} s); slow down")]
    PublishRate { limit: u64, window_secs: u64 },
}

impl RequestError {
    /// The protocol error code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            RequestError::UnknownTopic(_) | RequestError::PayloadNotJson => ErrorCode::BadRequest,
            RequestError::PublishRate { .. } => ErrorCode::RateLimited,
            RequestError::NoChannels(_) => ErrorCode::Forbidden,
            RequestError::NotPublishable(_) => ErrorCode::NotPublishable,
            RequestError::PayloadTooLarge { .. } => ErrorCode::TooLarge,
            RequestError::Log(_) | RequestError::NotStored => ErrorCode::Internal,
        }
    }

    /// Logs the internal cause, once, where it is turned into a reply.
    pub(crate) fn log(&self, what: &'static str) {
        if let RequestError::Log(e) = self {
            tracing::warn!(error = %e, what, "cursor log unavailable for a client request");
        }
    }
}

impl From<LogError> for RequestError {
    fn from(e: LogError) -> Self {
        RequestError::Log(e)
    }
}
