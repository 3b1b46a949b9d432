//! The sandbox ERP built into system-api (the embedded default). It keeps
//! its state in system-api's own SQLite database so the posting pipeline can
//! be exercised without a real ERP.

use async_trait::async_trait;
use sqlx::SqlitePool;

use super::Erp;

/// The sandbox backend.
#[derive(Debug, Clone)]
pub struct SandboxErp {
    pool: SqlitePool,
}

impl SandboxErp {
    /// A sandbox on system-api's database.
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl Erp for SandboxErp {
    fn backend(&self) -> &'static str {
        "sandbox"
    }

    async fn health(&self) -> Result<(), String> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| format!("sandbox ERP storage: {e}"))
    }
}
