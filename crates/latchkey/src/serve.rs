//! `latchkey serve`: every listener and background job in one runtime.

use anyhow::anyhow;
use axum::routing::get;
use latchkey_web::{AppState, WebConfig};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::time::{Duration, Instant};
use tokio::sync::watch;

use crate::app::App;
use crate::config::Config;
use crate::{listen, mailer, tls};

/// How long `serve` waits for an unreachable database at start.
const DATABASE_PATIENCE: Duration = Duration::from_secs(60);

fn metrics_router(handle: PrometheusHandle) -> axum::Router {
    axum::Router::new().route("/metrics", get(move || std::future::ready(handle.render())))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let started = Instant::now();
    // Bind first: a port in use should fail before anything is written.
    let http = listen::bind(config.listen.http, "HTTP").await?;
    let https = listen::bind(config.listen.https, "HTTPS").await?;
    let metrics = listen::bind(config.listen.metrics, "metrics").await?;
    let ldap = listen::bind(config.listen.ldap, "LDAP").await?;
    let ldaps = listen::bind(config.listen.ldaps, "LDAPS").await?;

    let app = App::open(config, DATABASE_PATIENCE).await?;
    crate::commands::apply_blueprint_dir(&app).await?;
    let config = &app.config;
    let hostnames: Vec<String> = config.external_url.iter().filter_map(|u| u.host_str().map(String::from)).collect();
    let tls_config = tls::load_or_generate(&config.data_dir.join("certs"), &hostnames)?;
    let ldap_tls = tls_config.clone();
    let prometheus =
        PrometheusBuilder::new().install_recorder().map_err(|e| anyhow!("cannot start the metrics recorder: {e}"))?;
    // Histogram samples pile up in the recorder until drained: without a scrape of /metrics
    // that is memory growing with every request. Upkeep drains them every few seconds.
    let upkeep = prometheus.clone();
    let _upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
            crate::return_free_memory();
        }
    });

    let sender = mailer::Sender::new(&config.email)?;
    let _background = app.core.spawn_background();
    let _outbox = mailer::spawn(app.core.clone(), sender);
    let state = AppState::new(
        app.core.clone(),
        WebConfig {
            external_url: config.external_url.clone(),
            trusted_proxies: config.listen.trusted_proxy_cidrs.clone(),
            template_dir: Some(config.data_dir.join("templates")),
            avatars: match config.avatars {
                crate::config::Avatars::None => "none",
                crate::config::Avatars::Initials => "initials",
                crate::config::Avatars::Gravatar => "gravatar",
            }
            .to_string(),
        },
    );
    let router = latchkey_web::router(state);

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let servers = tokio::spawn({
        let router = router.clone();
        let (a, b, c) = (stopped(), stopped(), stopped());
        async move {
            tokio::join!(
                listen::serve_http(http, router.clone(), a),
                listen::serve_https(https, tls_config, router, b),
                listen::serve_http(metrics, metrics_router(prometheus), c),
            )
        }
    });
    let ldap_servers = tokio::spawn({
        let settings = latchkey_ldap::LdapSettings {
            bind_cache_ttl: config.ldap.bind_cache_ttl,
            idle_timeout: config.ldap.idle_timeout,
            max_connections: usize::try_from(config.ldap.max_connections).unwrap_or(usize::MAX),
        };
        let service = latchkey_ldap::LdapService::with_settings(app.core.clone(), settings);
        let (a, b) = (stopped(), stopped());
        async move {
            tokio::join!(
                latchkey_ldap::serve_ldap(ldap, service.clone(), Some(ldap_tls.clone()), a),
                latchkey_ldap::serve_ldaps(ldaps, ldap_tls, service, b),
            )
        }
    });
    tracing::info!(
        http = %config.listen.http,
        https = %config.listen.https,
        metrics = %config.listen.metrics,
        ldap = %config.listen.ldap,
        ldaps = %config.listen.ldaps,
        store = app.core.store.engine(),
        ready_in_ms = started.elapsed().as_millis() as u64,
        "Latchkey is ready"
    );
    crate::return_free_memory();
    if let Some(link) = app.core.setup_link(&app.base_url()).await.map_err(|e| anyhow!("{e}"))? {
        tracing::info!("Initial setup: open {link} to create the first administrator");
    }

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = servers.await;
    let _ = ldap_servers.await;
    app.store.close().await;
    Ok(())
}
