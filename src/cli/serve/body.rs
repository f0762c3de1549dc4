//! Request bodies: JSON read with the path of the field that is wrong in
//! every error, durations as seconds or humantime text, and the body limit
//! answered as JSON.

use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use super::error::ApiError;

/// A body that may be empty (then every field takes its default).
pub(crate) fn optional<T: DeserializeOwned + Default>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = received(body)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse(&bytes)
}

/// A body that must hold a JSON value of `T`.
pub(crate) fn required<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = received(body)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request needs a JSON body: see /v1/openapi.json",
        ));
    }
    parse(&bytes)
}

fn received(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "body_too_large",
                "the request body is larger than this server takes (credpool serve --max-body BYTES)",
            )
        } else {
            ApiError::new(status, "bad_body", rejection.body_text())
        }
    })
}

/// Parses JSON; an error names the field (`units: invalid type…`) and where.
/// Fields whose values a parse error never quotes.
const SECRET_FIELDS: [&str; 2] = ["secret", "extra"];

pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut reader = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut reader).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let leaf = path.rsplit('.').next().unwrap_or_default();
        let message = if path == "." || path.is_empty() {
            format!("invalid JSON body: {inner}")
        } else if SECRET_FIELDS.iter().any(|field| leaf.starts_with(field)) {
            // serde's message quotes the value it found: not for a secret.
            format!(
                "invalid JSON body: field `{path}`: give a string (the value is not shown here, as it may be secret)"
            )
        } else {
            format!("invalid JSON body: field `{path}`: {inner}")
        };
        ApiError::bad_request(message)
    })?;
    reader
        .end()
        .map_err(|error| ApiError::bad_request(format!("invalid JSON body: {error}")))?;
    Ok(value)
}

/// A duration: a number of seconds (`1.5`) or humantime text (`"90s"`, `"5m"`).
pub(crate) fn duration<'de, D: Deserializer<'de>>(reader: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Seconds(f64),
        Text(String),
    }
    use serde::de::Error;
    match Option::<Written>::deserialize(reader)? {
        None => Ok(None),
        Some(Written::Seconds(seconds)) => {
            Duration::try_from_secs_f64(seconds).map(Some).map_err(|_| {
                D::Error::custom(format!(
                    "{seconds} is no duration: give seconds (1.5) or text (\"90s\")"
                ))
            })
        }
        // The command line's one format: humantime text or bare seconds ("2.5").
        Some(Written::Text(text)) => super::super::duration::parse(&text)
            .map(Some)
            .map_err(D::Error::custom),
    }
}

/// A time: RFC 3339 text (`"2026-12-02T10:00:00Z"`) or ms since the epoch.
pub(crate) fn time<'de, D: Deserializer<'de>>(reader: D) -> Result<Option<SystemTime>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Millis(u64),
        Text(String),
    }
    use serde::de::Error;
    match Option::<Written>::deserialize(reader)? {
        None => Ok(None),
        Some(Written::Millis(ms)) => Ok(Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))),
        Some(Written::Text(text)) => humantime::parse_rfc3339_weak(text.trim())
            .map(Some)
            .map_err(|error| D::Error::custom(format!("{text:?} is no time ({error}): give RFC 3339 text (\"2026-12-02T10:00:00Z\") or ms since 1970"))),
    }
}

/// A query string's parameters; a bad one is a 400 that names it.
pub(crate) fn query<T>(
    query: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    query
        .map(|axum::extract::Query(query)| query)
        .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
}
