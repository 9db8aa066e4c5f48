//! Errors of the request path and the one place they become limpet's own
//! answers: a status and a short plain-text body (SPEC section 4). Each engine
//! writes the answer in its protocol (`crate::h1::answer`, `crate::h2`); a HEAD
//! request gets the head without the body.

use http::StatusCode;

/// Any error, as a cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("malformed request body: {0}")]
    BadBody(#[source] BoxError),
    #[error("request head larger than max_header_bytes")]
    HeadTooLarge,
    #[error("request head not received within client_header")]
    HeadTimeout,
    #[error("unsupported expectation")]
    Expectation,
    /// A plain request on a route with `redirect_https`: 308 to this URL.
    #[error("redirected to {0}")]
    RedirectHttps(String),
    #[error("no route for this host and path")]
    NoRoute,
    #[error("no backend available")]
    NoBackend,
    /// No backend available because every one is down: health checks (or
    /// live traffic) failed on each. Said in the answer so that a missing
    /// health endpoint is found from the client side too.
    #[error("no backend available: every backend is down")]
    AllDown,
    #[error("the pinned backend is unavailable and failover is \"reject\"")]
    Rejected,
    /// No connection to the last backend tried, and no retry left. Nothing of the
    /// request was sent, so it is a 503 like [`ProxyError::NoBackend`] (the same
    /// outage answers 503 before and after health marks the backends down; after,
    /// [`ProxyError::AllDown`] says why), not a 502. Except a failed TLS
    /// handshake: the backend is there but limpet will not talk to it (a
    /// certificate it does not trust, say), a 502 as nginx answers.
    #[error("backend unreachable: {0}")]
    Unreachable(#[source] crate::pool::ConnectError),
    #[error("backend failed before answering: {0}")]
    BadGateway(#[source] BoxError),
    #[error("backend sent no response within {0:?}")]
    Timeout(std::time::Duration),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) | ProxyError::BadBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::HeadTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Expectation => StatusCode::EXPECTATION_FAILED,
            ProxyError::RedirectHttps(_) => StatusCode::PERMANENT_REDIRECT,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Unreachable(cause) if cause.is_tls() => StatusCode::BAD_GATEWAY,
            ProxyError::NoBackend
            | ProxyError::AllDown
            | ProxyError::Rejected
            | ProxyError::Unreachable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The plain-text body of limpet's answer.
    pub fn body(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) | ProxyError::BadBody(_) => "400 bad request\n",
            ProxyError::HeadTooLarge => "431 request header fields too large\n",
            ProxyError::HeadTimeout => "408 request timeout\n",
            ProxyError::Expectation => "417 expectation failed\n",
            ProxyError::RedirectHttps(_) => "308 permanent redirect to https\n",
            ProxyError::NoRoute => "404 no route\n",
            ProxyError::Unreachable(cause) if cause.is_tls() => {
                "502 bad gateway: the TLS handshake with the backend failed\n"
            }
            ProxyError::NoBackend | ProxyError::Unreachable(_) => "503 no backend available\n",
            ProxyError::AllDown => {
                "503 no backend available: every backend is down (health checks failing)\n"
            }
            ProxyError::Rejected => "503 backend unavailable\n",
            ProxyError::BadGateway(_) => "502 bad gateway\n",
            ProxyError::Timeout(_) => "504 gateway timeout\n",
        }
    }

    /// The `Location` of the answer, for a redirect.
    pub fn location(&self) -> Option<&str> {
        match self {
            ProxyError::RedirectHttps(url) => Some(url),
            _ => None,
        }
    }

    /// Whether the client connection must close after the answer: the request
    /// itself could not be read to its end.
    pub fn closes(&self) -> bool {
        matches!(
            self,
            ProxyError::BadRequest(_)
                | ProxyError::BadBody(_)
                | ProxyError::HeadTooLarge
                | ProxyError::HeadTimeout
                | ProxyError::Expectation
        )
    }
}
