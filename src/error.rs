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
    #[error("request body stalled for client_idle")]
    BodyTimeout,
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
            ProxyError::HeadTimeout | ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
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
            ProxyError::HeadTimeout | ProxyError::BodyTimeout => "408 request timeout\n",
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
                | ProxyError::BodyTimeout
                | ProxyError::Expectation
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every answer limpet can give, one per variant.
    fn every_answer() -> Vec<ProxyError> {
        let cause = || Box::new(std::io::Error::other("cause")) as BoxError;
        let refused = crate::pool::ConnectError::Io(std::io::ErrorKind::ConnectionRefused.into());
        vec![
            ProxyError::BadRequest("x"),
            ProxyError::BadBody(cause()),
            ProxyError::HeadTooLarge,
            ProxyError::HeadTimeout,
            ProxyError::BodyTimeout,
            ProxyError::Expectation,
            ProxyError::RedirectHttps("https://shop.example/".into()),
            ProxyError::NoRoute,
            ProxyError::NoBackend,
            ProxyError::AllDown,
            ProxyError::Rejected,
            ProxyError::Unreachable(refused),
            ProxyError::Unreachable(crate::pool::ConnectError::Tls(std::io::Error::other("x"))),
            ProxyError::BadGateway(cause()),
            ProxyError::Timeout(std::time::Duration::from_secs(1)),
        ]
    }

    #[test]
    fn each_body_starts_with_its_status() {
        for e in every_answer() {
            let status = e.status().as_u16().to_string();
            assert!(e.body().starts_with(&format!("{status} ")), "{e:?}");
            assert!(e.body().ends_with('\n') && e.body().lines().count() == 1);
        }
    }

    /// README's table of limpet's own answers (under "Statuses") is exactly
    /// what the code sends.
    #[test]
    fn the_readme_table_is_the_real_answers() {
        let readme = include_str!("../README.md");
        let mut table: Vec<(String, String)> = readme
            .lines()
            .filter_map(|line| {
                let mut cells = line.trim().strip_prefix('|')?.split('|').map(str::trim);
                let status = cells.next()?;
                let body = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
                (status.len() == 3 && status.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| (status.to_owned(), body.to_owned()))
            })
            .collect();
        let mut real: Vec<(String, String)> = every_answer()
            .iter()
            .map(|e| {
                (
                    e.status().as_u16().to_string(),
                    e.body().trim_end().to_owned(),
                )
            })
            .collect();
        for list in [&mut table, &mut real] {
            list.sort();
            list.dedup();
        }
        assert_eq!(table, real);
    }
}
