//! A minimal HTTP/1.1 client for the demo: one request per connection (replication
//! between app servers) and a [`Browser`] with a cookie jar (the walkthrough).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::app::{CartView, DemoError};

/// A request (or a replication) that takes longer than this fails.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A response, its body read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, DemoError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            DemoError::Unexpected(format!(
                "{} {e}: {}",
                self.status,
                String::from_utf8_lossy(&self.body).trim()
            ))
        })
    }

    /// The value of the `Set-Cookie` for cookie `name`, if this reply sets it.
    pub fn set_cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next()?.split_once('='))
            .find_map(|(n, v)| (n.trim() == name).then_some(v.trim()))
    }
}

pub fn request(addr: SocketAddr, method: Method, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
}

/// One HTTP/1.1 request on a fresh connection to `addr`, bounded by 5 seconds.
pub async fn fetch(addr: SocketAddr, req: Request<Full<Bytes>>) -> Result<Reply, DemoError> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let (parts, body) = sender.send_request(req).await?.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(FETCH_TIMEOUT, exchange)
        .await
        .map_err(|_| DemoError::Timeout(FETCH_TIMEOUT))?
}

/// A client with a cookie jar, like a browser tab.
#[derive(Debug, Clone)]
pub struct Browser {
    pub addr: SocketAddr,
    /// Cookie name -> value, as set by the responses so far.
    pub jar: BTreeMap<String, String>,
}

impl Browser {
    pub fn new(addr: SocketAddr) -> Browser {
        Browser {
            addr,
            jar: BTreeMap::new(),
        }
    }

    /// Sends a request (with a JSON body if given) and keeps the cookies it sets.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Reply, DemoError> {
        let mut req = request(self.addr, method, path);
        if !self.jar.is_empty() {
            let cookies: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req = req.header(header::COOKIE, cookies.join("; "));
        }
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let reply = fetch(self.addr, req.body(Full::new(body))?).await?;
        for v in reply.headers.get_all(header::SET_COOKIE) {
            if let Some((name, value)) = v
                .to_str()
                .ok()
                .and_then(|v| v.split(';').next()?.split_once('='))
            {
                self.jar
                    .insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
        Ok(reply)
    }

    /// `GET /cart`.
    pub async fn cart(&mut self) -> Result<(CartView, Reply), DemoError> {
        let reply = self.send(Method::GET, "/cart", None).await?;
        Ok((reply.json()?, reply))
    }

    /// `POST /login`.
    pub async fn login(&mut self, name: &str) -> Result<(CartView, Reply), DemoError> {
        let reply = self
            .send(
                Method::POST,
                "/login",
                Some(serde_json::json!({ "name": name })),
            )
            .await?;
        Ok((reply.json()?, reply))
    }

    /// `POST /cart`.
    pub async fn add(&mut self, item: &str) -> Result<(CartView, Reply), DemoError> {
        let reply = self
            .send(
                Method::POST,
                "/cart",
                Some(serde_json::json!({ "item": item })),
            )
            .await?;
        Ok((reply.json()?, reply))
    }
}
