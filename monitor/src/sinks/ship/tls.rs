//! TLS to the trail's destinations (syslog over TLS, RFC 5425; PostgreSQL), with rustls and
//! its ring provider. The server's certificate is always verified, chain and name (libpq's
//! `verify-full`); the trust anchors are the configured CA file or the system's. A client
//! certificate is presented when configured.
//!
//! For syslog, [`Counted`] sits between rustls and the socket: the shipper needs the bytes
//! put on the wire (ciphertext) to compare them with what the collector's TCP acknowledged.
use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::Arc,
};

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
};

use crate::config::ShipTls;

/// A TLS setting refused: the key of [`ShipTls`] and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct TlsConfigError {
    pub field: &'static str,
    pub reason: String,
}

fn refused(field: &'static str, reason: impl Into<String>) -> TlsConfigError {
    TlsConfigError {
        field,
        reason: reason.into(),
    }
}

/// The rustls client configuration of `tls`: files read and checked now, so that a bad setting
/// refuses to start rather than failing at the first connection.
pub fn client_config(tls: &ShipTls) -> Result<Arc<ClientConfig>, TlsConfigError> {
    match (&tls.client_cert, &tls.client_key) {
        (Some(_), None) => return Err(refused("client_key", "is required with client_cert")),
        (None, Some(_)) => return Err(refused("client_cert", "is required with client_key")),
        _ => {}
    }
    let mut roots = RootCertStore::empty();
    match &tls.ca_file {
        Some(file) => {
            let certs = certificates(file).map_err(|r| refused("ca_file", r))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| refused("ca_file", format!("{file}: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(refused(
                    "ca_file",
                    "not given, and the system has no certificate authorities (/etc/ssl/certs): name the CA that signed the server's certificate",
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| refused("ca_file", e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let chain = certificates(cert).map_err(|r| refused("client_cert", r))?;
            let key = private_key(key).map_err(|r| refused("client_key", r))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| refused("client_key", format!("does not go with client_cert: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Every certificate of a PEM file (at least one).
fn certificates(file: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{file}: not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{file}: no certificate (PEM `CERTIFICATE`) in it"));
    }
    Ok(certs)
}

/// The private key of a PEM file, which group and others must not be able to read.
fn private_key(file: &str) -> Result<PrivateKeyDer<'static>, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(file).map_err(|e| format!("{file}: {e}"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{file}: mode {mode:03o} lets others read the key: chmod 600 it"
        ));
    }
    let pem = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
    // The parser's error may quote the file: say only that it is not a key.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| format!("{file}: no PEM private key in it"))
}

/// The name the server's certificate must carry, from a `host:port` address.
pub fn server_name(address: &str) -> Result<ServerName<'static>, String> {
    let host = match address.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => address,
    };
    ServerName::try_from(host.to_string()).map_err(|e| format!("{host:?}: {e}"))
}

/// A TCP stream that counts the bytes written to it.
#[derive(Debug)]
pub struct Counted {
    pub stream: TcpStream,
    pub written: u64,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.stream.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

/// A client TLS session over a [`Counted`] TCP stream.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, Counted>;

/// Opens a TLS session on `stream` and completes the handshake (the server's certificate is
/// checked here: a failure names why).
pub fn handshake(
    config: &Arc<ClientConfig>,
    name: ServerName<'static>,
    stream: TcpStream,
) -> std::io::Result<TlsStream> {
    let conn = rustls::ClientConnection::new(config.clone(), name)
        .map_err(|e| std::io::Error::other(format!("TLS: {e}")))?;
    let mut tls = rustls::StreamOwned::new(conn, Counted { stream, written: 0 });
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| std::io::Error::new(e.kind(), format!("TLS handshake: {e}")))?;
    }
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_settings_name_their_key() {
        let dir = std::env::temp_dir().join(format!("vigie-shiptls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = |n: &str| dir.join(n).to_string_lossy().into_owned();
        std::fs::write(path("empty.pem"), "not a certificate\n").unwrap();
        let e = client_config(&ShipTls {
            ca_file: Some(path("missing.pem")),
            ..ShipTls::default()
        })
        .unwrap_err();
        assert_eq!(e.field, "ca_file");
        let e = client_config(&ShipTls {
            ca_file: Some(path("empty.pem")),
            ..ShipTls::default()
        })
        .unwrap_err();
        assert!(e.reason.contains("no certificate"), "{e}");
        // A key readable by others is refused before it is read.
        std::fs::write(path("key.pem"), "-----BEGIN PRIVATE KEY-----\n").unwrap();
        std::fs::set_permissions(
            path("key.pem"),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        assert!(
            private_key(&path("key.pem"))
                .unwrap_err()
                .contains("chmod 600")
        );
        let e = client_config(&ShipTls {
            ca_file: None,
            client_cert: Some(path("empty.pem")),
            client_key: None,
        })
        .unwrap_err();
        assert_eq!(e.field, "client_key");
        assert_eq!(
            server_name("logs.example.net:6514").unwrap(),
            ServerName::try_from("logs.example.net").unwrap()
        );
        assert!(matches!(
            server_name("[::1]:6514").unwrap(),
            ServerName::IpAddress(_)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
