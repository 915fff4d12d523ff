//! TLS for the HTTPS (and LDAPS) listeners: the certificate in
//! `data_dir/certs`, or a self-signed one generated there on first start.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS certificate {}: {error}", path.display())]
    ReadCertificate { path: PathBuf, error: io::Error },
    #[error("cannot read TLS private key {}: {error}", path.display())]
    ReadKey { path: PathBuf, error: io::Error },
    #[error("TLS certificate {} contains no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("TLS private key {} contains no PEM private key", path.display())]
    NoKey { path: PathBuf },
    #[error("found {} but not {}; provide both, or remove it to have a self-signed certificate generated", present.display(), missing.display())]
    Incomplete { present: PathBuf, missing: PathBuf },
    #[error("TLS certificate {} and private key {} cannot be used together: {error}", cert.display(), key.display())]
    Unusable { cert: PathBuf, key: PathBuf, error: rustls::Error },
    #[error("cannot generate a self-signed TLS certificate: {0}")]
    Generate(rcgen::Error),
    #[error("cannot write {}: {error}", path.display())]
    Write { path: PathBuf, error: io::Error },
}

/// Loads `certs_dir/cert.pem` and `certs_dir/key.pem`, or generates a
/// self-signed certificate for localhost, 127.0.0.1, ::1 and `hostnames` and
/// writes it there. The server offers ALPN h2 and http/1.1.
pub fn load_or_generate(certs_dir: &Path, hostnames: &[String]) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_path = certs_dir.join(CERT_FILE);
    let key_path = certs_dir.join(KEY_FILE);
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {}
        (false, false) => {
            generate(certs_dir, &cert_path, &key_path, hostnames)?;
            tracing::info!(
                certificate = %cert_path.display(),
                "generated a self-signed TLS certificate; replace cert.pem and key.pem to use your own"
            );
        }
        // Generating now would overwrite the half that is there.
        (true, false) => return Err(TlsError::Incomplete { present: cert_path, missing: key_path }),
        (false, true) => return Err(TlsError::Incomplete { present: key_path, missing: cert_path }),
    }
    let certs = read_certificates(&cert_path)?;
    let key = read_key(&key_path)?;
    server_config(certs, key).map_err(|error| TlsError::Unusable { cert: cert_path, key: key_path, error })
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_error = |error| TlsError::ReadCertificate { path: path.to_path_buf(), error };
    let pem = fs::read(path).map_err(read_error)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice()).collect::<Result<Vec<_>, _>>().map_err(read_error)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_path_buf() });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let read_error = |error| TlsError::ReadKey { path: path.to_path_buf(), error };
    let pem = fs::read(path).map_err(read_error)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(read_error)?
        .ok_or_else(|| TlsError::NoKey { path: path.to_path_buf() })
}

fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    // An explicit provider: the process-wide default is unset (or ambiguous
    // when several crates enable different rustls backends).
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn generate(certs_dir: &Path, cert_path: &Path, key_path: &Path, hostnames: &[String]) -> Result<(), TlsError> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for name in hostnames {
        if !name.is_empty() && !names.contains(name) {
            names.push(name.clone());
        }
    }
    let mut params = rcgen::CertificateParams::new(names).map_err(TlsError::Generate)?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "Latchkey self-signed certificate");
    // Some clients (Apple's) refuse server certificates without this.
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key_pair = rcgen::KeyPair::generate().map_err(TlsError::Generate)?;
    let cert = params.self_signed(&key_pair).map_err(TlsError::Generate)?;

    fs::create_dir_all(certs_dir).map_err(|error| TlsError::Write { path: certs_dir.to_path_buf(), error })?;
    // Key first: a crash in between leaves no cert.pem, so the next start
    // regenerates instead of reporting a half-written pair.
    write_atomically(key_path, key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_atomically(cert_path, cert.pem().as_bytes(), 0o644)
}

/// Writes to a temporary file and renames it into place so a reader never
/// sees a partial file; the mode is set at creation so the key is never
/// readable by others, even briefly.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let write_error = |error| TlsError::Write { path: path.to_path_buf(), error };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp).map_err(write_error)?;
    // A leftover temporary file from a crash keeps its old mode; fix it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(mode)).map_err(write_error)?;
    }
    file.write_all(contents).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    drop(file);
    fs::rename(&tmp, path).map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn client_config(cert_pem: &[u8], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut &cert_pem[..]) {
            roots.add(cert.expect("pem")).expect("add root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// Handshakes with `server` on loopback as `name`; returns the ALPN protocol.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        name: &str,
    ) -> Result<Option<Vec<u8>>, io::Error> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let server_task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let mut tls = acceptor.accept(stream).await?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await?;
            tls.write_all(&buf).await?;
            tls.shutdown().await
        });
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let connector = tokio_rustls::TlsConnector::from(client);
        let server_name = ServerName::try_from(name.to_owned()).expect("server name");
        let mut tls = connector.connect(server_name, stream).await?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        tls.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        server_task.await.expect("server task")?;
        Ok(alpn)
    }

    #[tokio::test]
    async fn generates_reloads_and_handshakes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs_dir = dir.path().join("data/certs");
        let server = load_or_generate(&certs_dir, &["auth.example.com".into()]).expect("generate");
        let cert_pem = fs::read(certs_dir.join(CERT_FILE)).expect("cert written");
        let key_pem = fs::read(certs_dir.join(KEY_FILE)).expect("key written");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |f: &str| fs::metadata(certs_dir.join(f)).expect("metadata").permissions().mode() & 0o777;
            assert_eq!(mode(KEY_FILE), 0o600);
            assert_eq!(mode(CERT_FILE), 0o644);
        }

        // A second call loads the same files rather than regenerating.
        let reloaded = load_or_generate(&certs_dir, &[]).expect("reload");
        assert_eq!(fs::read(certs_dir.join(CERT_FILE)).expect("cert"), cert_pem);
        assert_eq!(fs::read(certs_dir.join(KEY_FILE)).expect("key"), key_pem);

        let client = client_config(&cert_pem, &[b"h2", b"http/1.1"]);
        for name in ["localhost", "auth.example.com", "127.0.0.1", "::1"] {
            if name == "::1" && tokio::net::TcpListener::bind("[::1]:0").await.is_err() {
                continue;
            }
            let alpn = handshake(reloaded.clone(), client.clone(), name)
                .await
                .unwrap_or_else(|e| panic!("handshake as {name}: {e}"));
            assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        }
        let http1 = client_config(&cert_pem, &[b"http/1.1"]);
        let alpn = handshake(server, http1, "localhost").await.expect("http/1.1");
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));

        // A name that is not in the certificate is refused.
        assert!(handshake(reloaded, client, "other.example").await.is_err());
    }

    #[test]
    fn errors_name_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(CERT_FILE), "not pem").expect("write");
        let err = load_or_generate(dir.path(), &[]).expect_err("half a pair");
        assert!(err.to_string().starts_with("found "), "{err}");

        fs::write(dir.path().join(KEY_FILE), "not pem").expect("write");
        let err = load_or_generate(dir.path(), &[]).expect_err("no certificate");
        assert_eq!(
            err.to_string(),
            format!("TLS certificate {} contains no PEM certificate", dir.path().join(CERT_FILE).display())
        );

        #[cfg(unix)]
        {
            // A directory where the file should be cannot be read.
            let other = tempfile::tempdir().expect("tempdir");
            fs::create_dir(other.path().join(CERT_FILE)).expect("mkdir");
            fs::write(other.path().join(KEY_FILE), "x").expect("write");
            let err = load_or_generate(other.path(), &[]).expect_err("unreadable");
            assert!(
                err.to_string()
                    .starts_with(&format!("cannot read TLS certificate {}: ", other.path().join(CERT_FILE).display())),
                "{err}"
            );
        }
    }

    #[test]
    fn mismatched_pair_is_reported() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        load_or_generate(a.path(), &[]).expect("a");
        load_or_generate(b.path(), &[]).expect("b");
        fs::copy(b.path().join(KEY_FILE), a.path().join(KEY_FILE)).expect("copy");
        let err = load_or_generate(a.path(), &[]).expect_err("mismatch");
        assert!(err.to_string().contains("cannot be used together"), "{err}");
    }
}
