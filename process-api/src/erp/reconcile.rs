//! Reconciliation: ERP quantity per (location, sku) against platform
//! on_hand, scheduled and on demand.
//!
//! Per location: the ERP's balances are read first, then the platform's
//! positions and its undelivered postings. The figure comparable with the
//! ERP is `on_hand − undelivered changes`. Keys with a posting in flight, or
//! delivered since the ERP was read, are left for the next run (the ERP
//! figure may or may not include them). A difference becomes an exception
//! valued at cost; up to `review_above` it is corrected at once, above it
//! waits for an operator.

use std::collections::{BTreeMap, BTreeSet};

use retail_shared::client::{CallContext, ClientError, LayerClient};
use retail_shared::config::ReconciliationSettings;
use retail_shared::correlation::Correlation;
use retail_shared::erp::ErpBalances;
use rust_decimal::Decimal;
use serde::Serialize;
use utoipa::ToSchema;

use crate::storage::Store;
use crate::storage::ledger::IngestContext;
use crate::storage::reconciliation::{Mismatch, ReconciliationException, ReconciliationRun};

/// What a run found.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReconciliationReport {
    /// The run record.
    pub run: ReconciliationRun,
    /// Exceptions it raised or refreshed (corrected ones included).
    pub exceptions: Vec<ReconciliationException>,
}

/// Runs reconciliations.
#[derive(Debug, Clone)]
pub struct Reconciler {
    store: Store,
    system: LayerClient,
    settings: ReconciliationSettings,
}

impl Reconciler {
    /// A reconciler over `store`, reading the ERP through `system`.
    pub fn new(store: Store, system: LayerClient, settings: ReconciliationSettings) -> Self {
        Self {
            store,
            system,
            settings,
        }
    }

    /// One run over every location of the registry.
    pub async fn run(
        &self,
        trigger: &str,
        ctx: &IngestContext,
        correlation: &Correlation,
    ) -> anyhow::Result<ReconciliationReport> {
        let run_id = self.store.start_reconciliation(trigger, &ctx.actor).await?;
        let mut totals = (0_i64, 0_i64, 0_i64);
        let mut exceptions = Vec::new();
        let outcome = self
            .compare_all(run_id, ctx, correlation, &mut totals, &mut exceptions)
            .await;
        let error = outcome.as_ref().err().map(ToString::to_string);
        let run = self
            .store
            .finish_reconciliation(run_id, totals.0, totals.1, totals.2, error.as_deref())
            .await?;
        metrics::counter!("reconciliation_runs_total", "status" => run.status.clone()).increment(1);
        metrics::counter!("reconciliation_mismatches_total")
            .increment(u64::try_from(totals.2).unwrap_or(0));
        Ok(ReconciliationReport { run, exceptions })
    }

    async fn compare_all(
        &self,
        run_id: i64,
        ctx: &IngestContext,
        correlation: &Correlation,
        (compared, skipped, mismatches): &mut (i64, i64, i64),
        exceptions: &mut Vec<ReconciliationException>,
    ) -> anyhow::Result<()> {
        let call = CallContext {
            principal: None,
            correlation,
        };
        for location in self.store.all_locations().await? {
            let read_at = self.store.now();
            let erp = match self
                .system
                .get::<ErpBalances>(
                    "/v1/erp/balances",
                    &[("location_id", location.location_id.clone())],
                    &["erp:read"],
                    call,
                )
                .await
            {
                Ok(erp) => erp,
                // The ERP has no such warehouse: nothing to compare.
                Err(ClientError::Problem { status, .. }) if status.as_u16() == 404 => continue,
                Err(error) => {
                    anyhow::bail!("reading ERP balances of {}: {error}", location.location_id)
                }
            };
            let erp: BTreeMap<String, i64> = erp
                .balances
                .into_iter()
                .map(|b| (b.sku, b.quantity))
                .collect();
            let mut platform = BTreeMap::new();
            let mut after: Option<String> = None;
            loop {
                let page = self
                    .store
                    .positions_at(&location.location_id, after.as_deref(), 1000)
                    .await?;
                let full = page.len() == 1000;
                after = page.last().map(|p| p.sku.clone());
                for position in page {
                    platform.insert(position.sku, position.figures.on_hand);
                }
                if !full {
                    break;
                }
            }
            let (open, recent) = self
                .store
                .open_postings_at(&location.location_id, read_at)
                .await?;
            let skus: BTreeSet<&String> = erp.keys().chain(platform.keys()).collect();
            for sku in skus {
                let pending = open.get(sku).cloned().unwrap_or_default();
                if pending.in_flight || recent.contains(sku) {
                    *skipped += 1;
                    continue;
                }
                *compared += 1;
                let expected = platform.get(sku).copied().unwrap_or(0) - pending.quantity;
                let erp_quantity = erp.get(sku).copied().unwrap_or(0);
                if expected == erp_quantity {
                    continue;
                }
                *mismatches += 1;
                let product = self.store.product(sku).await?;
                let exception = self
                    .store
                    .record_mismatch(
                        run_id,
                        &Mismatch {
                            location_id: location.location_id.clone(),
                            sku: sku.clone(),
                            platform_on_hand: expected,
                            erp_quantity,
                            unit_cost: product.as_ref().map(|p| p.unit_cost),
                            currency: product.map(|p| p.currency),
                        },
                    )
                    .await?;
                let value: Decimal = exception.value_at_cost.parse().unwrap_or(Decimal::MAX);
                let exception = if value <= self.settings.review_above {
                    let auto = IngestContext {
                        actor: "reconciliation".into(),
                        request_id: ctx.request_id.clone(),
                        trace_id: ctx.trace_id.clone(),
                        span_id: ctx.span_id.clone(),
                    };
                    match self
                        .store
                        .settle_exception(
                            exception.exception_id,
                            true,
                            &auto,
                            Some("corrected automatically: value at cost within the review threshold"),
                        )
                        .await?
                    {
                        Ok(corrected) => corrected,
                        Err(refusal) => {
                            tracing::warn!(?refusal, exception = exception.exception_id,
                                "automatic correction refused; left for review");
                            exception
                        }
                    }
                } else {
                    exception
                };
                exceptions.push(exception);
            }
        }
        Ok(())
    }
}
