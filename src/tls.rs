//! TLS with rustls (ring provider), TLS 1.2 and 1.3 only, both ways:
//!
//! - termination: certificate loading, the SNI resolver (the certificate whose
//!   names match the client's server name, else the first), ALPN `h2` and
//!   `http/1.1`, and session resumption ([`Resumption`]: a ticket key and a
//!   session cache that a reload keeps);
//! - to backends (`[upstream.NAME.tls]`): the client configuration (the CA
//!   file's roots or the compiled-in webpki roots, or no verification; an
//!   optional client certificate), ALPN `http/1.1`, and the server name each
//!   backend is verified against.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{
    ClientHello, NoServerSessionStorage, ProducesTickets, ResolvesServerCert,
    ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// Reads a PEM certificate chain and its private key; the message says what is wrong.
pub fn load_cert_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no PEM certificate", cert.display()));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, private, &provider)
        .map(Arc::new)
        .map_err(|e| {
            format!(
                "{} and {} do not make a usable pair: {e}",
                cert.display(),
                key.display()
            )
        })
}

/// The rustls server configuration for a set of certificates (the first is
/// the default), resuming sessions with `resumption`.
pub fn server_config(
    certs: &[Arc<CertifiedKey>],
    resumption: &Resumption,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver {
            certs: certs.to_vec(),
        }));
    // http/1.0 too, as nginx offers it: rustls refuses a client whose list
    // has none of the server's (curl --http1.0 over TLS failed its handshake).
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    config.session_storage = resumption.cache.clone();
    config.ticketer = resumption.ticketer.clone();
    Ok(Arc::new(config))
}

/// What lets a returning client resume its session instead of a full
/// handshake: stateless tickets sealed with a key of this process (rustls's
/// ring ticketer: a new key every 6 hours, the previous one still accepted)
/// and an in-memory session cache. Both are kept across reloads while their
/// setting is unchanged, so clients go on resuming; neither survives a
/// restart nor is shared between limpet processes.
#[derive(Clone, Debug)]
pub struct Resumption {
    /// `[tls] session_tickets`.
    tickets: bool,
    /// `[tls] session_cache`.
    cache_size: usize,
    ticketer: Arc<dyn ProducesTickets>,
    cache: Arc<dyn StoresServerSessions>,
}

impl Resumption {
    /// Resumption as configured, reusing `previous`'s ticket key and cache
    /// where their setting is the same.
    pub fn carried(
        tickets: bool,
        cache_size: usize,
        previous: Option<&Resumption>,
    ) -> Result<Resumption, rustls::Error> {
        let ticketer = match previous.filter(|p| p.tickets == tickets) {
            Some(p) => p.ticketer.clone(),
            None if tickets => rustls::crypto::ring::Ticketer::new()?,
            None => Arc::new(NoTickets),
        };
        let cache: Arc<dyn StoresServerSessions> =
            match previous.filter(|p| p.cache_size == cache_size) {
                Some(p) => p.cache.clone(),
                None if cache_size == 0 => Arc::new(NoServerSessionStorage {}),
                None => ServerSessionMemoryCache::new(cache_size),
            };
        Ok(Resumption {
            tickets,
            cache_size,
            ticketer,
            cache,
        })
    }
}

/// `session_tickets = false`: no tickets (rustls's own stand-in is not public).
#[derive(Debug)]
struct NoTickets;

impl ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }

    fn lifetime(&self) -> u32 {
        0
    }

    fn encrypt(&self, _plain: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn decrypt(&self, _cipher: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

/// Picks the certificate whose names cover the SNI name, else the first.
#[derive(Debug)]
struct SniResolver {
    certs: Vec<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let by_name = hello
            .server_name()
            .and_then(|name| ServerName::try_from(name).ok())
            .and_then(|name| self.certs.iter().find(|c| covers(c, &name)));
        by_name.or_else(|| self.certs.first()).cloned()
    }
}

fn covers(cert: &CertifiedKey, name: &ServerName<'_>) -> bool {
    cert.cert
        .first()
        .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
        .is_some_and(|ee| ee.verify_is_valid_for_subject_name(name).is_ok())
}

/// The roots a backend's certificate must chain to.
pub enum Roots<'a> {
    /// The certificates of this PEM file (`ca`).
    File(&'a Path),
    /// The Mozilla roots compiled into limpet (webpki-roots): no `ca` given.
    Public,
}

/// Reads the CA certificates of a PEM file; the message says what is wrong.
pub fn load_roots(ca: &Path) -> Result<RootCertStore, String> {
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", ca.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", ca.display()));
    }
    let mut store = RootCertStore::empty();
    for cert in certs {
        store
            .add(cert)
            .map_err(|e| format!("{} holds an unusable CA certificate: {e}", ca.display()))?;
    }
    Ok(store)
}

/// The rustls client configuration for one upstream's backends: their
/// certificates checked against `roots` (or not at all, without `verify`),
/// `client` presented to a backend that asks for a certificate, ALPN `http/1.1`.
pub fn client_config(
    roots: Roots<'_>,
    verify: bool,
    client: Option<Arc<CertifiedKey>>,
) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = match verify {
        true => builder.with_root_certificates(match roots {
            Roots::File(ca) => load_roots(ca)?,
            Roots::Public => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        }),
        false => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))),
    };
    let mut config = match client {
        Some(key) => builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(key))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The name a backend's certificate is verified against: `sni` when given,
/// else the host of its address. A DNS name is also sent as SNI; an IP
/// address is not (TLS has no SNI for addresses) and must be in the
/// certificate's IP subject alternative names.
pub fn backend_name(sni: Option<&str>, addr: &str) -> Result<ServerName<'static>, String> {
    let host = match sni {
        Some(name) => name,
        None => host_of(addr),
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_string())
        .map_err(|_| format!("\"{host}\" is not a DNS name to verify a certificate against"))
}

/// `host` of `host:port` or `[v6]:port`.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// `verify = false`: any certificate is accepted (the handshake's signatures
/// are still checked, so the session is encrypted to whoever answered).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_is_verified_against_its_host_unless_sni_is_given() {
        let dns = |n: &str| ServerName::try_from(n.to_string()).unwrap();
        assert_eq!(
            backend_name(None, "app.internal:8443"),
            Ok(dns("app.internal"))
        );
        assert_eq!(
            backend_name(Some("shop.example"), "10.0.0.1:8443"),
            Ok(dns("shop.example"))
        );
        let ip = |t: &str| ServerName::IpAddress(t.parse::<IpAddr>().unwrap().into());
        assert_eq!(backend_name(None, "127.0.0.1:8443"), Ok(ip("127.0.0.1")));
        assert_eq!(backend_name(None, "[::1]:8443"), Ok(ip("::1")));
        assert!(backend_name(Some("bad name"), "127.0.0.1:1").is_err());
    }
}
