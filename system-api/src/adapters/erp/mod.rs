//! The ERP adapter: one trait, a backend chosen by `[erp] backend`.

pub mod sandbox;

use async_trait::async_trait;

/// What process-api and operators need from an ERP backend.
#[async_trait]
pub trait Erp: Send + Sync + std::fmt::Debug {
    /// The backend name (`sandbox`, `tryton`).
    fn backend(&self) -> &'static str;

    /// Whether the ERP answers right now.
    async fn health(&self) -> Result<(), String>;
}
