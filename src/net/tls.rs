//! TLS with rustls: the server side of every client-facing port (optionally verifying
//! client certificates), certificate reload without a restart, and the client side used
//! towards DC1 and DC2.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::UpstreamTlsConfig;

/// A TLS configuration problem, naming the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: {message}")]
    File {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate CA: {0}")]
    Verifier(String),
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError::File {
        what,
        path: path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate found".into()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        what: "private key",
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn roots(path: &Path, what: &'static str) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certs(path, what)? {
        store.add(cert).map_err(|e| TlsError::File {
            what,
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    }
    Ok(store)
}

/// Files that make up the server side.
#[derive(Debug, Clone)]
pub struct ServerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl ServerTlsFiles {
    fn build(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(ca, "client CA")?),
                    provider(),
                )
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config =
            builder.with_single_cert(certs(&self.cert, "certificate")?, key(&self.key)?)?;
        Ok(Arc::new(config))
    }

    fn mtimes(&self) -> Vec<Option<SystemTime>> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }
}

/// The server side, reloadable: new connections use the newest good certificate;
/// open connections keep theirs.
pub struct ServerTls {
    files: ServerTlsFiles,
    current: RwLock<(TlsAcceptor, Vec<Option<SystemTime>>)>,
}

impl ServerTls {
    pub fn load(files: ServerTlsFiles) -> Result<Arc<Self>, TlsError> {
        let stamp = files.mtimes();
        let acceptor = TlsAcceptor::from(files.build()?);
        Ok(Arc::new(Self {
            files,
            current: RwLock::new((acceptor, stamp)),
        }))
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        crate::sync::read(&self.current).0.clone()
    }

    /// Reloads the files if any changed. A broken new file keeps the old certificate
    /// in service and is reported.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let stamp = self.files.mtimes();
        if crate::sync::read(&self.current).1 == stamp {
            return Ok(false);
        }
        let built = self.files.build();
        let mut cur = crate::sync::write(&self.current);
        // Remember the stamp either way, so a bad file is reported once, not every tick.
        cur.1 = stamp;
        cur.0 = TlsAcceptor::from(built?);
        Ok(true)
    }
}

/// Client side towards a DC1 or DC2 broker.
impl UpstreamTlsConfig {
    pub fn connector(&self) -> Result<Option<TlsConnector>, TlsError> {
        if !self.enabled {
            return Ok(None);
        }
        let Some(ca) = &self.ca else {
            return Err(TlsError::Verifier(
                "tls.ca is required when upstream TLS is enabled".into(),
            ));
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_root_certificates(roots(ca, "upstream CA")?);
        let config = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => {
                builder.with_client_auth_cert(certs(c, "client certificate")?, key(k)?)?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Some(TlsConnector::from(Arc::new(config))))
    }

    /// The name to verify for a dialled `host:port`.
    pub fn server_name(&self, addr: &str) -> Result<ServerName<'static>, TlsError> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => addr
                .rsplit_once(':')
                .map_or(addr, |(h, _)| h)
                .trim_matches(['[', ']'])
                .to_owned(),
        };
        ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName(name))
    }
}
