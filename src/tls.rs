//! TLS termination with rustls (ring provider): certificate loading, the SNI
//! resolver (the certificate whose names match the client's server name, else the
//! first), ALPN `h2` and `http/1.1`, TLS 1.2 and 1.3 only.

use std::path::Path;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

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

/// The rustls server configuration for a set of certificates (the first is the default).
pub fn server_config(certs: &[Arc<CertifiedKey>]) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver {
            certs: certs.to_vec(),
        }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
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
