//! TLS fixtures: self-signed certificates made at test time (rcgen), a config's
//! `https` listener with them, and a rustls client that trusts only them.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

/// A self-signed certificate, written as PEM files.
pub struct TestCert {
    pub der: CertificateDer<'static>,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// A self-signed certificate for `names`, written as `{label}.pem` and
/// `{label}.key` into `dir` (over what is there).
pub fn make_cert(dir: &Path, label: &str, names: &[&str]) -> TestCert {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).expect("generate certificate");
    let cert_path = dir.join(format!("{label}.pem"));
    let key_path = dir.join(format!("{label}.key"));
    std::fs::write(&cert_path, ck.cert.pem()).unwrap();
    std::fs::write(&key_path, ck.key_pair.serialize_pem()).unwrap();
    TestCert {
        der: ck.cert.der().clone(),
        cert_path,
        key_path,
    }
}

/// A new directory under the system's temporary directory, unique to this call.
pub fn temp_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "limpet-{label}-{}-{}",
        std::process::id(),
        random_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// `toml` (which must start its `[listen]` table with the one plain listener
/// `http = ["127.0.0.1:0"]`, as every test config here does) with an `https`
/// listener beside it serving `certs`.
pub fn with_https(toml: &str, certs: &[&TestCert]) -> String {
    const PLAIN: &str = "[listen]\nhttp = [\"127.0.0.1:0\"]\n";
    assert!(toml.contains(PLAIN), "no plain listener to add to: {toml}");
    let pairs: Vec<String> = certs
        .iter()
        .map(|c| format!("{{ cert = {:?}, key = {:?} }}", c.cert_path, c.key_path))
        .collect();
    toml.replacen(
        PLAIN,
        &format!(
            "{PLAIN}https = [\"127.0.0.1:0\"]\n\n[tls]\ncerts = [{}]\n",
            pairs.join(", ")
        ),
        1,
    )
}

/// A TLS client connection to `addr` trusting `roots`, with SNI `name` and `alpn`.
pub async fn tls_connect(
    addr: SocketAddr,
    roots: &[&TestCert],
    name: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tls_handshake(tcp, roots, name, alpn).await
}

/// A TLS handshake as a client on `tcp`, already connected (and maybe
/// already written to: a PROXY header goes first).
pub async fn tls_handshake(
    tcp: TcpStream,
    roots: &[&TestCert],
    name: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut store = rustls::RootCertStore::empty();
    for c in roots {
        store.add(c.der.clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    connector
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
}

/// A certificate authority made at test time, its certificate written as
/// `{label}.pem`; it signs server and client certificates.
pub struct TestCa {
    pub der: CertificateDer<'static>,
    pub cert_path: PathBuf,
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    pub fn new(dir: &Path, label: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("limpet test CA {label}"));
        let key = rcgen::KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let cert_path = dir.join(format!("{label}.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        TestCa {
            der: cert.der().clone(),
            cert_path,
            cert,
            key,
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses) signed by
    /// this CA, written as `{label}.pem` and `{label}.key` into `dir`.
    pub fn server_cert(&self, dir: &Path, label: &str, names: &[&str]) -> TestCert {
        self.issue(dir, label, names, None)
    }

    /// A client certificate (extended key usage clientAuth) signed by this CA.
    pub fn client_cert(&self, dir: &Path, label: &str) -> TestCert {
        self.issue(
            dir,
            label,
            &[],
            Some(rcgen::ExtendedKeyUsagePurpose::ClientAuth),
        )
    }

    fn issue(
        &self,
        dir: &Path,
        label: &str,
        names: &[&str],
        usage: Option<rcgen::ExtendedKeyUsagePurpose>,
    ) -> TestCert {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, label.to_string());
        params.extended_key_usages = usage.into_iter().collect();
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signed certificate");
        let cert_path = dir.join(format!("{label}.pem"));
        let key_path = dir.join(format!("{label}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        TestCert {
            der: cert.der().clone(),
            cert_path,
            key_path,
        }
    }
}
