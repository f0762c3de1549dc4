//! TLS to the server. With `sslmode=require` the store connects over
//! rustls and verifies the server's certificate: against the Mozilla root
//! certificates (managed Postgres signed by a public CA), or against the CA
//! certificates in the PEM file that `sslrootcert=PATH` names, as libpq
//! does (a server with its own CA, or a self-signed one). Otherwise it
//! connects without TLS, as before: `sslmode=prefer`, the default, does not
//! upgrade.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use tokio_postgres::config::SslMode;
use tokio_postgres::Config;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, InvalidInput, Result};

/// How the store's connections talk to the server.
#[derive(Clone)]
pub(crate) enum Tls {
    /// In the clear (`sslmode` disable or prefer).
    Off,
    /// Over TLS, the server's certificate verified (`sslmode=require`).
    On(MakeRustlsConnect),
}

impl Tls {
    /// What `config`'s `sslmode` asks for, trusting the CA certificates in
    /// `root_certificates` when given, else the Mozilla roots.
    pub(crate) fn new(config: &Config, root_certificates: Option<&Path>) -> Result<Self> {
        if config.get_ssl_mode() != SslMode::Require {
            return Ok(Tls::Off);
        }
        let mut roots = RootCertStore::empty();
        match root_certificates {
            Some(path) => {
                let refuse = |reason: String| -> Error {
                    InvalidInput::new("sslrootcert", format!("{}: {reason}", path.display())).into()
                };
                let certificates: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_file_iter(path)
                        .map_err(|error| refuse(format!("cannot read it: {error}")))?
                        .collect::<std::result::Result<_, _>>()
                        .map_err(|error| refuse(format!("not a PEM certificate file: {error}")))?;
                if certificates.is_empty() {
                    return Err(refuse(
                        "holds no certificate (a PEM file with BEGIN CERTIFICATE)".into(),
                    ));
                }
                for certificate in certificates {
                    roots
                        .add(certificate)
                        .map_err(|error| refuse(format!("a certificate in it is bad: {error}")))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| Error::Postgres {
                message: format!("cannot set up TLS: {error}"),
                code: None,
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls::On(MakeRustlsConnect::new(config)))
    }

    /// `error`, from a connection attempt, with what to do when TLS was the
    /// cause.
    pub(crate) fn explain(&self, error: Error) -> Error {
        let Error::Postgres {
            message,
            code: None,
        } = error
        else {
            return error;
        };
        let hint = match self {
            Tls::On(_) if message.contains("NotValidForName") => {
                "; the server's certificate is for another host name: connect by a name \
                 (or address) the certificate was issued for"
            }
            Tls::On(_) if message.contains("certificate") => {
                "; the server's certificate is not trusted: name the CA that signed it \
                 with sslrootcert=PATH (a PEM file) in the URL"
            }
            Tls::On(_) if message.contains("TLS") || message.contains("SSL") => {
                "; sslmode=require needs a server that offers TLS"
            }
            _ => "",
        };
        Error::Postgres {
            message: format!("{message}{hint}"),
            code: None,
        }
    }
}

/// Splits libpq's `sslrootcert=PATH` off a `postgres://` URL's query, which
/// tokio-postgres does not read; returns the rest of the URL and the path.
pub(crate) fn take_root_certificates(url: &str) -> (String, Option<PathBuf>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    let mut path = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("sslrootcert=") {
            Some(value) => {
                path = Some(PathBuf::from(percent_decoded(value)));
                false
            }
            None => true,
        })
        .collect();
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, path)
}

/// `%XX` escapes decoded (a path in a URL may hold `%2F`, `%20`).
fn percent_decoded(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let escaped = (bytes[at] == b'%')
            .then(|| value.get(at + 1..at + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                at += 3;
            }
            None => {
                decoded.push(bytes[at]);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_certificates_are_taken_off_the_url() {
        let (rest, path) = take_root_certificates(
            "postgres://u@h/db?sslmode=require&sslrootcert=/etc/ca%20bundle.pem&application_name=x",
        );
        assert_eq!(rest, "postgres://u@h/db?sslmode=require&application_name=x");
        assert_eq!(path, Some(PathBuf::from("/etc/ca bundle.pem")));
        let (rest, path) = take_root_certificates("postgres://u@h/db?sslrootcert=ca.pem");
        assert_eq!(
            (rest.as_str(), path),
            ("postgres://u@h/db", Some(PathBuf::from("ca.pem")))
        );
        let (rest, path) = take_root_certificates("postgres://u@h/db");
        assert_eq!((rest.as_str(), path), ("postgres://u@h/db", None));
    }

    #[test]
    fn a_missing_or_empty_root_file_is_refused_by_name() {
        let config: Config = "postgres://u@h/db?sslmode=require".parse().unwrap();
        let missing = Tls::new(&config, Some(Path::new("/nonexistent/ca.pem")));
        let message = missing.err().unwrap().to_string();
        assert!(message.contains("/nonexistent/ca.pem"), "{message}");
        let empty = tempfile::NamedTempFile::new().unwrap();
        let message = Tls::new(&config, Some(empty.path()))
            .err()
            .unwrap()
            .to_string();
        assert!(message.contains("holds no certificate"), "{message}");
        let plain: Config = "postgres://u@h/db".parse().unwrap();
        assert!(matches!(Tls::new(&plain, None), Ok(Tls::Off)));
        assert!(matches!(Tls::new(&config, None), Ok(Tls::On(_))));
    }
}
