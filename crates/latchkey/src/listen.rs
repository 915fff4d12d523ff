//! HTTP and HTTPS accept loops around an axum router: TCP_NODELAY, the peer
//! address as `ConnectInfo`, HTTP/1.1 + HTTP/2, graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// How long in-flight connections may run on after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that has not finished the TLS handshake by then is dropped, so
/// idle sockets cannot pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Slowloris guard for HTTP/1 request heads.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after an accept error such as EMFILE, which would otherwise repeat
/// at once in a tight loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

pub use latchkey_web::request::Scheme;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for {what}: {reason}")]
pub struct ListenError {
    pub addr: SocketAddr,
    pub what: String,
    pub reason: String,
}

/// Binds a TCP listener; `what` names the service in the error ("HTTP").
pub async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr).await.map_err(|error| ListenError { addr, what: what.to_owned(), reason: describe(&error) })
}

fn describe(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::AddrInUse => "address already in use".into(),
        io::ErrorKind::AddrNotAvailable => "address not available on this machine".into(),
        io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)".into()
        }
        _ => {
            // Keep the one-sentence style: drop "(os error N)" and lower-case.
            let text = error.to_string();
            let text = match text.find(" (os error") {
                Some(at) => text[..at].to_owned(),
                None => text,
            };
            let mut chars = text.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => text,
            }
        }
    }
}

/// Serves plain HTTP on `listener` until `shutdown` completes.
pub async fn serve_http(listener: TcpListener, router: Router, shutdown: impl Future<Output = ()> + Send + 'static) {
    serve(listener, None, router, shutdown).await;
}

/// Serves HTTPS on `listener` until `shutdown` completes.
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    serve(listener, Some(TlsAcceptor::from(tls)), router, shutdown).await;
}

async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let scheme = Scheme(if tls.is_some() { "https" } else { "http" });
    let local = listener.local_addr().ok();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    // Connection tasks, so that those still running after the drain timeout
    // can be ended rather than outliving the server.
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    if !is_per_connection(&error) {
                        tracing::error!(?local, %error, "cannot accept a connection; retrying shortly");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                    continue;
                }
            },
        };
        // Without it small responses wait on Nagle + delayed ACK (~40 ms).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
        }
        // A v4 client on a dual-stack [::] socket shows up as ::ffff:a.b.c.d;
        // handlers and trusted-proxy checks want the plain v4 address.
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let router = router.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request.extensions_mut().insert(scheme);
                // Router's error type is Infallible, as hyper's service wants.
                router.clone().oneshot(request)
            });
            let result = match tls {
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(conn).await
                }
                Some(acceptor) => {
                    let Some(stream) = handshake(&acceptor, stream, peer).await else {
                        return;
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(conn).await
                }
            };
            if let Err(error) = result {
                // Mostly clients going away mid-request: not the server's problem.
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }

    // Stop accepting before draining so new clients get a refusal, not a hang.
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tracing::warn!(
                ?local,
                open = connections.len(),
                "connections still open {DRAIN_TIMEOUT:?} after shutdown began; closing them"
            );
        }
    }
    connections.shutdown().await;
}

async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// Errors that concern one connection only: retry at once.
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    fn app() -> Router {
        Router::new()
            .route(
                "/",
                get(
                    |ConnectInfo(peer): ConnectInfo<SocketAddr>,
                     axum::Extension(Scheme(scheme)): axum::Extension<Scheme>| async move {
                        format!("{scheme} {}", peer.ip())
                    },
                ),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "done"
                }),
            )
    }

    #[tokio::test]
    async fn bind_error_is_one_sentence() {
        let first = bind("127.0.0.1:0".parse().expect("addr"), "HTTP").await.expect("bind");
        let addr = first.local_addr().expect("addr");
        let err = bind(addr, "HTTP").await.expect_err("port in use");
        assert_eq!(err.to_string(), format!("cannot listen on {addr} for HTTP: address already in use"));
    }

    #[tokio::test]
    async fn http_serves_connect_info_and_drains_on_shutdown() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"), "HTTP").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_http(listener, app(), async {
            let _ = stopped.await;
        }));

        let client = reqwest::Client::new();
        let body = client.get(format!("http://{addr}/")).send().await.expect("request").text().await.expect("body");
        assert_eq!(body, "http 127.0.0.1");

        // A request in flight when shutdown begins still completes.
        let slow = tokio::spawn({
            let client = client.clone();
            async move { client.get(format!("http://{addr}/slow")).send().await?.text().await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = stop.send(());
        assert_eq!(slow.await.expect("task").expect("slow request"), "done");
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("server stops").expect("server task");
        // And the port is no longer accepting.
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn https_marks_scheme_and_survives_bad_handshakes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = crate::tls::load_or_generate(dir.path(), &[]).expect("tls");
        let cert = std::fs::read(dir.path().join("cert.pem")).expect("cert");
        let listener = bind("127.0.0.1:0".parse().expect("addr"), "HTTPS").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_https(listener, tls, app(), async {
            let _ = stopped.await;
        }));

        // Plain text on the TLS port fails the handshake and must not stop the loop.
        {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut raw = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
            raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
            let mut buf = Vec::new();
            let _ = raw.read_to_end(&mut buf).await;
        }

        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&cert).expect("pem"))
            .build()
            .expect("client");
        let body =
            client.get(format!("https://localhost:{port}/")).send().await.expect("request").text().await.expect("body");
        assert_eq!(body, "https 127.0.0.1");

        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("server stops").expect("server task");
    }

    #[tokio::test]
    async fn http2_prior_knowledge_is_detected() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = bind("127.0.0.1:0".parse().expect("addr"), "HTTP").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_http(listener, app(), async {
            let _ = stopped.await;
        }));
        // The HTTP/2 connection preface and an empty SETTINGS frame: an h2
        // server answers with its own SETTINGS frame (type 4).
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.expect("write");
        let mut header = [0u8; 9];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut header))
            .await
            .expect("reply in time")
            .expect("read");
        assert_eq!(header[3], 4, "first frame is SETTINGS");
        drop(stream);
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("server stops").expect("server task");
    }
}
