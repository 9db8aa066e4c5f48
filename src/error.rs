//! Errors of the request path and the one place they become HTTP responses:
//! limpet's own answers are short plain-text bodies (SPEC section 4).

use http::{header, HeaderValue, Response, StatusCode};

use crate::upstream::ProxyBody;

/// Any error, as a cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("malformed request body: {0}")]
    BadBody(#[source] BoxError),
    #[error("no route for this host and path")]
    NoRoute,
    #[error("no backend available")]
    NoBackend,
    #[error("the pinned backend is unavailable and failover is \"reject\"")]
    Rejected,
    /// No connection to the last backend tried, and no retry left. Nothing of the
    /// request was sent, so it is a 503 like [`ProxyError::NoBackend`] (the same
    /// outage answers the same before and after health marks the backends down),
    /// not a 502.
    #[error("backend unreachable: {0}")]
    Unreachable(#[source] crate::upstream::ConnectError),
    #[error("backend failed before answering: {0}")]
    BadGateway(#[source] BoxError),
    #[error("backend sent no response within {0:?}")]
    Timeout(std::time::Duration),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) | ProxyError::BadBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoBackend | ProxyError::Rejected | ProxyError::Unreachable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub(crate) fn body(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) | ProxyError::BadBody(_) => "400 bad request\n",
            ProxyError::NoRoute => "404 no route\n",
            ProxyError::NoBackend | ProxyError::Unreachable(_) => "503 no backend available\n",
            ProxyError::Rejected => "503 backend unavailable\n",
            ProxyError::BadGateway(_) => "502 bad gateway\n",
            ProxyError::Timeout(_) => "504 gateway timeout\n",
        }
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        plain(self.status(), self.body())
    }
}

/// A short plain-text response.
pub fn plain(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::text(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
