//! Errors of the front door in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`
//! with the status that says what went wrong. One table maps each kind to its status.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// What kind of refusal (its HTTP status and OpenAI `type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// 400: a field or value the API does not take.
    BadRequest,
    /// 401: no or a wrong bearer token.
    Unauthorized,
    /// 404: an unknown model or path.
    NotFound,
    /// 413: a body, or a prompt beyond the context or the KV cache.
    TooLarge,
    /// 429: the queue is over its limit.
    Busy,
    /// 503: no instance is active (a cold restart is reloading).
    Unavailable,
    /// 500: the engine failed the request.
    Internal,
}

impl Kind {
    pub fn status(self) -> StatusCode {
        match self {
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::Busy => StatusCode::TOO_MANY_REQUESTS,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's error `type` for the kind.
    fn type_name(self) -> &'static str {
        match self {
            Kind::BadRequest | Kind::TooLarge => "invalid_request_error",
            Kind::Unauthorized => "authentication_error",
            Kind::NotFound => "not_found_error",
            Kind::Busy => "rate_limit_error",
            Kind::Unavailable => "service_unavailable_error",
            Kind::Internal => "server_error",
        }
    }

    /// Seconds a client should wait before retrying, where retrying helps.
    fn retry_after(self) -> Option<u32> {
        matches!(self, Kind::Busy | Kind::Unavailable).then_some(1)
    }
}

/// A refusal: its kind, a message naming the rule and the value, and the field it is about.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub kind: Kind,
    pub message: String,
    pub param: Option<String>,
    /// OpenAI's `code` (`model_not_found`, `context_length_exceeded`, …).
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// A 400 about `param`.
    pub fn field(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.into()),
            ..Self::new(Kind::BadRequest, message)
        }
    }

    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn param(mut self, param: &str) -> Self {
        self.param = Some(param.into());
        self
    }

    /// The error object as JSON (also what a stream sends when a request fails mid-way).
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind.type_name(),
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.kind.status(), axum::Json(self.body())).into_response();
        if let Some(s) = self.kind.retry_after() {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_busy_and_unavailable_say_when_to_retry() {
        for (k, status, retry) in [
            (Kind::BadRequest, 400, false),
            (Kind::Unauthorized, 401, false),
            (Kind::NotFound, 404, false),
            (Kind::TooLarge, 413, false),
            (Kind::Busy, 429, true),
            (Kind::Unavailable, 503, true),
            (Kind::Internal, 500, false),
        ] {
            let r = ApiError::new(k, "x").into_response();
            assert_eq!(r.status().as_u16(), status);
            assert_eq!(
                r.headers().contains_key(header::RETRY_AFTER),
                retry,
                "{k:?}"
            );
        }
    }
}
