//! [`ApiError`]: an HTTP status with OpenAI's error body,
//! `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::ServeError;

/// An error answered to the client.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, `requests` (429),
    /// `server_error`.
    pub kind: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// The request parameter at fault, if any.
    pub param: Option<String>,
    /// A machine-readable code (`invalid_type`, `context_length_exceeded`, ...), if any.
    pub code: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// Sets the parameter at fault.
    pub fn param(mut self, param: impl Into<String>) -> ApiError {
        self.param = Some(param.into());
        self
    }

    /// Sets the code.
    pub fn code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    /// 400: a bad request (not tied to one parameter).
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 400: parameter `param` has the wrong JSON type.
    pub fn invalid_type(param: &str, message: impl Into<String>) -> ApiError {
        Self::bad_request(message).param(param).code("invalid_type")
    }

    /// 400: parameter `param` has a value out of its range.
    pub fn invalid_value(param: &str, message: impl Into<String>) -> ApiError {
        Self::bad_request(message).param(param).code("invalid_value")
    }

    /// 400: parameter `param` asks for something this server does not do.
    pub fn unsupported(param: &str, message: impl Into<String>) -> ApiError {
        Self::bad_request(message)
            .param(param)
            .code("unsupported_parameter")
    }

    /// 404 for a model other than the served one (OpenAI's `model_not_found`).
    pub fn model_not_found(model: &str, served: &str) -> ApiError {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{model}` does not exist; this server serves `{served}`"),
        )
        .param("model")
        .code("model_not_found")
    }

    /// 404 for an unknown route.
    pub fn no_route(method: &str, path: &str) -> ApiError {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("Invalid URL ({method} {path})"),
        )
        .code("unknown_url")
    }

    /// 405 for a known route with another method.
    pub fn method_not_allowed(method: &str, path: &str) -> ApiError {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("Method {method} is not allowed on {path}"),
        )
        .code("method_not_allowed")
    }

    /// 401: a missing or wrong API key.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message).code("invalid_api_key")
    }

    /// 413: the body is over `limit` bytes.
    pub fn too_large(limit: usize) -> ApiError {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
        .code("request_too_large")
    }

    /// 503: the model is loading or the engine is down.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message).code("engine_unavailable")
    }

    /// 500: a failure on the server's side.
    pub fn internal(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// An engine error; `prompt_param` names the parameter that carried the prompt (`prompt` or
    /// `messages`) for context overflows.
    pub fn from_serve(e: ServeError, prompt_param: &str) -> ApiError {
        let message = e.to_string();
        match e {
            ServeError::InvalidRequest { param, .. } => {
                let err = Self::bad_request(message).code("invalid_value");
                match param {
                    Some(p) if p == "prompt" => err.param(prompt_param),
                    Some(p) => err.param(p),
                    None => err,
                }
            }
            ServeError::ContextOverflow { .. } => Self::bad_request(message)
                .param(prompt_param)
                .code("context_length_exceeded"),
            // OpenAI's 429 body: type "requests", code "rate_limit_exceeded".
            ServeError::QueueFull { .. } => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "requests", message).code("rate_limit_exceeded")
            }
            ServeError::EngineDown(_) => Self::unavailable(message),
            ServeError::Engine(_)
            | ServeError::Unsupported { .. }
            | ServeError::Config(_)
            | ServeError::Model(_) => Self::internal(message),
        }
    }

    /// The JSON body, `{"error": {...}}` (also sent as an SSE event when a stream fails).
    pub fn body(&self) -> Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        let headers = response.headers_mut();
        match self.status {
            StatusCode::TOO_MANY_REQUESTS => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            StatusCode::UNAUTHORIZED => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}
