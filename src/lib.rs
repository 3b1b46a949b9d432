//! The `retail-platform` launcher library: starts the three services in one
//! process (the embedded default) and mints dev tokens. The binary in
//! `main.rs` is a thin command line over it; the end-to-end tests use
//! [`Platform::start`] to run the real services on port 0.

pub mod bench;
pub mod bench_black_friday;
pub mod bench_host;
pub mod bench_pos;
pub mod bench_read;
pub mod bench_reserve;
pub mod import;

use std::future::Future;

use anyhow::Context;
use retail_shared::Settings;
use retail_shared::auth::{SCOPES, TokenIssuer, TokenRequest, audience};
use retail_shared::server;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The three services running in this process.
pub struct Platform {
    /// experience-api's port.
    pub experience_port: u16,
    /// process-api's port.
    pub process_port: u16,
    /// system-api's port.
    pub system_port: u16,
    /// The settings as the services run them (URLs rewired to real ports).
    pub settings: Settings,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Platform {
    /// Binds all three listeners first (so port 0 works and each layer knows
    /// the others' real addresses), then builds and starts the services.
    pub async fn start(mut settings: Settings) -> anyhow::Result<Self> {
        let system_listener = server::bind(&settings.system.host, settings.system.port).await?;
        let process_listener = server::bind(&settings.process.host, settings.process.port).await?;
        let experience_listener =
            server::bind(&settings.experience.host, settings.experience.port).await?;
        let system_port = server::local_addr(&system_listener)?.port();
        let process_port = server::local_addr(&process_listener)?.port();
        let experience_port = server::local_addr(&experience_listener)?.port();
        settings.process.system_url = format!("http://{}:{system_port}", settings.system.host);
        settings.system.process_url = format!("http://{}:{process_port}", settings.process.host);
        settings.experience.process_url =
            format!("http://{}:{process_port}", settings.process.host);

        let system =
            system_api::Application::build_with_listener(settings.clone(), system_listener)
                .await
                .context("system-api")?;
        let process =
            process_api::Application::build_with_listener(settings.clone(), process_listener)
                .await
                .context("process-api")?;
        let experience =
            experience_api::Application::build_with_listener(settings.clone(), experience_listener)
                .await
                .context("experience-api")?;

        let (shutdown, receiver) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(system.run_until(stopped(receiver.clone()))),
            tokio::spawn(process.run_until(stopped(receiver.clone()))),
            tokio::spawn(experience.run_until(stopped(receiver))),
        ];
        Ok(Self {
            experience_port,
            process_port,
            system_port,
            settings,
            shutdown,
            tasks,
        })
    }

    /// Base URL of experience-api.
    pub fn experience_url(&self) -> String {
        format!(
            "http://{}:{}",
            self.settings.experience.host, self.experience_port
        )
    }

    /// Base URL of process-api.
    pub fn process_url(&self) -> String {
        format!(
            "http://{}:{}",
            self.settings.process.host, self.process_port
        )
    }

    /// Base URL of system-api.
    pub fn system_url(&self) -> String {
        format!("http://{}:{}", self.settings.system.host, self.system_port)
    }

    /// Serves until `signal`, then stops all three services gracefully. A
    /// service that stops on its own (storage failure, lost listener) stops
    /// the whole platform with its error.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self {
            shutdown, tasks, ..
        } = self;
        let mut running = futures::future::select_all(tasks);
        let early_exit = tokio::select! {
            () = signal => None,
            (result, _, rest) = &mut running => Some((result, rest)),
        };
        let _ = shutdown.send(true);
        match early_exit {
            None => {
                for task in running.into_inner() {
                    task.await.context("service task panicked")??;
                }
                Ok(())
            }
            Some((result, rest)) => {
                for task in rest {
                    let _ = task.await;
                }
                result.context("service task panicked")??;
                anyhow::bail!("a service stopped unexpectedly")
            }
        }
    }

    /// Stops all three services gracefully.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.run_until(async {}).await
    }
}

async fn stopped(mut receiver: watch::Receiver<bool>) {
    let _ = receiver.wait_for(|stop| *stop).await;
}

/// Mints a token with the configured issuer and secret, checking the
/// audience and scope names against the pinned lists.
pub fn mint_token(settings: &Settings, request: &TokenRequest) -> anyhow::Result<String> {
    anyhow::ensure!(
        audience::ALL.contains(&request.audience.as_str()),
        "unknown audience `{}` (one of {})",
        request.audience,
        audience::ALL.join(", ")
    );
    for scope in &request.scopes {
        anyhow::ensure!(
            SCOPES.contains(&scope.as_str()),
            "unknown scope `{scope}` (one of {})",
            SCOPES.join(" ")
        );
    }
    anyhow::ensure!(!request.subject.is_empty(), "the subject must not be empty");
    TokenIssuer::new(&settings.auth).mint(request)
}

/// Writes each service's OpenAPI document into `dir`, or with `check` only
/// compares them; returns the files that differ.
pub fn openapi_documents() -> Vec<(&'static str, String)> {
    [
        ("experience-api.json", experience_api::openapi()),
        ("process-api.json", process_api::openapi()),
        ("system-api.json", system_api::openapi()),
    ]
    .into_iter()
    .map(|(name, doc)| {
        let mut json = doc.to_pretty_json().unwrap_or_default();
        json.push('\n');
        (name, json)
    })
    .collect()
}
