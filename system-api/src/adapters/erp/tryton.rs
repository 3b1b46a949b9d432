//! Tryton over JSON-RPC (in progress).

use async_trait::async_trait;
use retail_shared::config::TrytonSettings;
use retail_shared::erp::{ErpBalance, ErpMaster, Posting, PostingResult};

use super::{Erp, ErpError};

/// The Tryton backend.
#[derive(Debug)]
pub struct TrytonErp {
    url: String,
}

impl TrytonErp {
    /// A client of the Tryton server in `settings`.
    pub fn new(settings: &TrytonSettings) -> anyhow::Result<Self> {
        Ok(Self {
            url: settings.url.clone(),
        })
    }
}

#[async_trait]
impl Erp for TrytonErp {
    fn backend(&self) -> &'static str {
        "tryton"
    }

    async fn health(&self) -> Result<(), String> {
        Err(format!("{}: not yet", self.url))
    }

    async fn post(&self, _postings: &[Posting]) -> Result<Vec<PostingResult>, ErpError> {
        Err(ErpError::Unavailable("not yet".into()))
    }

    async fn balances(&self, _location_id: &str) -> Result<Option<Vec<ErpBalance>>, ErpError> {
        Err(ErpError::Unavailable("not yet".into()))
    }

    async fn master(&self) -> Result<ErpMaster, ErpError> {
        Err(ErpError::Unavailable("not yet".into()))
    }
}
