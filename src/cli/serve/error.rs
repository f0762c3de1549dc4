//! The answer of a request that fails: a status and
//! `{"error": CODE, "message": TEXT}` (with `released` when an acquire
//! released a lease before it failed), from any of the handlers.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use credpool::Error;
use serde_json::json;

/// An error answer: a status and `{"error": CODE, "message": TEXT}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    code: &'static str,
    pub(crate) message: String,
    pub(crate) retry_after: Option<u64>,
    /// For an acquire that released a lease first: how that went (the
    /// release stays made whatever the acquire answers).
    released: Option<serde_json::Value>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            released: None,
        }
    }

    /// Says in the answer that a release was made before this failed.
    pub(crate) fn released(mut self, released: serde_json::Value) -> Self {
        self.released = Some(released);
        self
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::warn!("{message}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "store_error", message)
    }

    pub(crate) fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is stopping: try again on another, or when it is back",
        )
    }

    pub(crate) fn unknown_lease(token: &str) -> Self {
        // The token is the client's own; echoing a prefix helps it find
        // which one, without putting it whole in a proxy's log.
        let shown: String = token.chars().take(6).collect();
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_lease",
            format!(
                "no lease {shown}… in this pool on this server: it was released, passed its TTL \
                 without a renew, or the server restarted; acquire a new one"
            ),
        )
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let (status, code) = match &error {
            Error::NoCredentials { .. } => (StatusCode::CONFLICT, "no_credentials"),
            Error::Timeout { .. } => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            Error::Closed => (StatusCode::SERVICE_UNAVAILABLE, "closed"),
            Error::LeaseLost { .. } => (StatusCode::GONE, "lease_lost"),
            Error::Disabled { .. } => (StatusCode::CONFLICT, "disabled"),
            Error::TooManyUnits { .. } => (StatusCode::CONFLICT, "too_many_units"),
            Error::UnknownCredential { .. } => (StatusCode::NOT_FOUND, "unknown_credential"),
            Error::DuplicateName { .. } => (StatusCode::CONFLICT, "duplicate_name"),
            Error::InUse { .. } => (StatusCode::CONFLICT, "in_use"),
            Error::InvalidInput(_) => (StatusCode::BAD_REQUEST, "invalid_input"),
            Error::ReleasePending { .. } => (StatusCode::ACCEPTED, "release_pending"),
            _ => return ApiError::internal(error.to_string()),
        };
        ApiError::new(status, code, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.code, "message": self.message});
        if let Some(released) = self.released {
            body["released"] = released;
        }
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
