//! Trust roots of every outgoing TLS connection the platform makes over
//! HTTP (JWKS, webhooks, Tryton, OTLP, the layers' own clients).
//!
//! rustls with webpki's root certificates, built into the binary (an image
//! needs no system CA bundle), plus the certificates of the PEM file
//! `[tls] ca_file` when a deployment runs a private CA. A service adds its
//! file once at start ([`trust`]); clients built afterwards trust it.
//! PostgreSQL (sqlx) takes `sslmode=require` and `sslrootcert=FILE` in its
//! URL; Redis takes a `rediss://` URL and trusts webpki's roots.

use std::sync::RwLock;
use std::time::Duration;

use anyhow::Context;

use crate::config::TlsSettings;

/// CA certificates (DER) added to webpki's roots by [`trust`]. Only ever
/// grows: two services in one process (the launcher, tests) each add
/// theirs without taking the other's away.
static EXTRA_ROOTS: RwLock<Vec<Vec<u8>>> = RwLock::new(Vec::new());

/// Adds the CA certificates of `settings.ca_file` (if set) to the roots of
/// every client built from now on. Fails on an unreadable file or one with
/// no certificate, so a typo refuses start instead of failing every call.
pub fn trust(settings: &TlsSettings) -> anyhow::Result<()> {
    if settings.ca_file.is_empty() {
        return Ok(());
    }
    let pem = std::fs::read(&settings.ca_file)
        .with_context(|| format!("tls.ca_file {}: cannot read", settings.ca_file))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("tls.ca_file {}: not PEM certificates", settings.ca_file))?;
    anyhow::ensure!(
        !certificates.is_empty(),
        "tls.ca_file {}: no certificate in it",
        settings.ca_file
    );
    let ders = parse_pem_certificates(&pem);
    let mut roots = EXTRA_ROOTS
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for der in ders {
        if !roots.contains(&der) {
            roots.push(der);
        }
    }
    Ok(())
}

/// The DER bytes of each `CERTIFICATE` block of a PEM bundle.
fn parse_pem_certificates(pem: &[u8]) -> Vec<Vec<u8>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .map(|certificate| certificate.as_ref().to_vec())
        .collect()
}

/// Every root a client trusts: webpki's, then the extra ones.
fn roots() -> Vec<reqwest::Certificate> {
    let mut roots: Vec<reqwest::Certificate> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .filter_map(|der| reqwest::Certificate::from_der(der.as_ref()).ok())
        .collect();
    let extra = EXTRA_ROOTS
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    roots.extend(
        extra
            .iter()
            .filter_map(|der| reqwest::Certificate::from_der(der).ok()),
    );
    roots
}

/// A reqwest client builder that trusts exactly [`roots`] (no system
/// store: the same answer on every host), TLS 1.2 at least.
pub fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .tls_certs_only(roots())
        .tls_version_min(reqwest::tls::Version::TLS_1_2)
}

/// The blocking flavour of [`client_builder`] (the OTLP exporter's thread).
pub fn blocking_client_builder() -> reqwest::blocking::ClientBuilder {
    reqwest::blocking::Client::builder()
        .tls_certs_only(roots())
        .tls_version_min(reqwest::tls::Version::TLS_1_2)
        .timeout(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_refuses() {
        let missing = TlsSettings {
            ca_file: "/nonexistent/ca.pem".into(),
        };
        assert!(trust(&missing).is_err());
        let file = tempfile::NamedTempFile::new().expect("file");
        std::fs::write(file.path(), "not a certificate").expect("write");
        let empty = TlsSettings {
            ca_file: file.path().to_string_lossy().into_owned(),
        };
        assert!(trust(&empty).is_err());
        trust(&TlsSettings::default()).expect("none configured");
    }

    #[test]
    fn webpki_roots_are_built_in() {
        assert!(roots().len() > 100);
        client_builder().build().expect("a client");
    }
}
