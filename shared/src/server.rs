//! Binding, serving and graceful shutdown, shared by the three services.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;

/// Binds `host:port` (port 0 picks a free port).
pub async fn bind(host: &str, port: u16) -> anyhow::Result<TcpListener> {
    TcpListener::bind((host, port))
        .await
        .with_context(|| format!("cannot bind {host}:{port}"))
}

/// What every service does before it serves on `listener`: refuses a
/// listener beyond loopback guarded by a published secret
/// ([`crate::config::Settings::check_exposure`]), trusts the configured CA
/// file, and loads its service-token keys.
pub fn prepare(
    settings: &crate::Settings,
    listener: &TcpListener,
    service: &str,
) -> anyhow::Result<crate::service_keys::ServiceKeys> {
    settings.check_exposure(local_addr(listener)?)?;
    crate::tls::trust(&settings.tls)?;
    crate::service_keys::ServiceKeys::load(&settings.auth.service_keys, service)
        .with_context(|| format!("{service}: service-token keys"))
}

/// The address a listener is bound to.
pub fn local_addr(listener: &TcpListener) -> anyhow::Result<SocketAddr> {
    listener
        .local_addr()
        .context("listener has no local address")
}

/// Serves `router` until `shutdown` resolves, then drains in-flight
/// requests before returning.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (draining, watcher) = tokio::sync::watch::channel(false);
    let router = router.layer(axum::Extension(Draining(watcher)));
    let signal = async move {
        shutdown.await;
        let _ = draining.send(true);
    };
    // The peer address is the key of the throttle before authentication.
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(signal)
    .await
    .context("server failed")
}

/// Resolves when the server serving the request starts shutting down.
/// Endless responses (event streams) end with it, so a graceful shutdown
/// does not wait for them forever. Handlers take it as
/// `Option<Extension<Draining>>` (absent when a router is driven without
/// [`serve`], as in tests).
#[derive(Debug, Clone)]
pub struct Draining(tokio::sync::watch::Receiver<bool>);

impl Draining {
    /// Waits for the shutdown.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|draining| *draining).await;
    }

    /// `wait` for an optional extension (never resolves when absent).
    pub async fn of(draining: Option<axum::Extension<Self>>) {
        match draining {
            Some(axum::Extension(draining)) => draining.wait().await,
            None => std::future::pending().await,
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}
