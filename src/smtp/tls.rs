//! TLS for SMTP: rustls with the ring provider, trusting the platform's
//! roots plus CA files the user adds; failures sorted into "the
//! certificate is not acceptable" and "TLS itself failed".

use crate::error::{Error, Result, ASOCK_E_FORMAT, ASOCK_E_IO, ASOCK_E_SMTP_CERTIFICATE, ASOCK_E_SMTP_TLS};
use crate::trace;
use crate::trace::LEVEL_INFO;
use once_cell::sync::OnceCell;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use std::sync::Arc;

/// The platform's trust store, read once per process (reading it parses
/// every certificate on the system, milliseconds each time).
fn platform_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceCell<Vec<CertificateDer<'static>>> = OnceCell::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            trace!(LEVEL_INFO, "smtp", "platform trust store: {e}");
        }
        found.certs
    })
}

/// Reads every certificate in a PEM file.
pub fn read_ca_file(path: &str) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(path).map_err(|e| Error::new(ASOCK_E_IO, format!("cannot read '{path}': {e}")))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::new(ASOCK_E_FORMAT, format!("'{path}' is not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(Error::new(ASOCK_E_FORMAT, format!("'{path}' holds no PEM certificate")));
    }
    Ok(certs)
}

/// A client configuration trusting the platform's roots and `extra`.
pub fn client_config(extra: &[CertificateDer<'static>]) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(platform_roots().iter().cloned());
    for cert in extra {
        roots.add(cert.clone()).map_err(|e| Error::new(ASOCK_E_FORMAT, format!("a trusted CA is not usable: {e}")))?;
    }
    let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(ASOCK_E_SMTP_TLS, format!("TLS configuration: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A session for `host`: its name is sent as SNI (unless it is an IP
/// address) and is what the certificate must be valid for.
pub fn connect(config: &Arc<ClientConfig>, host: &str) -> Result<ClientConnection> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| Error::new(ASOCK_E_SMTP_TLS, format!("'{host}' is not a host name TLS can verify")))?;
    ClientConnection::new(config.clone(), name).map_err(|e| Error::new(ASOCK_E_SMTP_TLS, format!("TLS: {e}")))
}

/// The code for a handshake or record failure, with the reason.
pub fn classify(e: &rustls::Error) -> (i32, String) {
    match e {
        rustls::Error::InvalidCertificate(_) => {
            (ASOCK_E_SMTP_CERTIFICATE, format!("the server's certificate was rejected: {e}"))
        }
        _ => (ASOCK_E_SMTP_TLS, format!("TLS failed: {e}")),
    }
}
