//! Master data pulled from the ERP: products (name, cost, currency) and
//! warehouses, on start, on a schedule and on demand.
//!
//! Decisions: the ERP owns product names and costs, so those are updated
//! (a product's GTIN and safety stock, which the ERP does not carry, are
//! kept). Warehouses the registry lacks are added as type `warehouse`
//! without coordinates; locations the registry has keep their type,
//! coordinates and capabilities (the ERP knows none of them). Records that
//! fail the registry's validation are skipped and counted.

use retail_shared::client::{CallContext, LayerClient};
use retail_shared::correlation::Correlation;
use retail_shared::erp::ErpMaster;
use retail_shared::model::{LocationInput, LocationType, ProductInput};
use retail_shared::validate::{Validate, Validator};
use rust_decimal::Decimal;
use serde::Serialize;
use utoipa::ToSchema;

use crate::storage::Store;
use crate::storage::master::ChangeContext;

/// What a pull did.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct MasterSyncReport {
    /// Warehouses the ERP listed.
    pub erp_locations: usize,
    /// Of them, added to the registry.
    pub locations_added: u64,
    /// Products the ERP listed.
    pub erp_products: usize,
    /// Of them, added or changed in the registry.
    pub products_changed: u64,
    /// Records skipped as invalid for the registry.
    pub skipped: usize,
}

/// Pulls the ERP's master data into the registry.
pub async fn pull(
    store: &Store,
    system: &LayerClient,
    ctx: &ChangeContext,
    correlation: &Correlation,
) -> anyhow::Result<MasterSyncReport> {
    let master: ErpMaster = system
        .get(
            "/v1/erp/master",
            &[],
            &["erp:read"],
            CallContext {
                principal: None,
                correlation,
            },
        )
        .await?;
    let mut report = MasterSyncReport {
        erp_locations: master.locations.len(),
        erp_products: master.products.len(),
        ..MasterSyncReport::default()
    };
    let known: std::collections::HashSet<String> = store
        .all_locations()
        .await?
        .into_iter()
        .map(|l| l.location_id)
        .collect();
    let mut new_locations = Vec::new();
    for location in master.locations {
        if known.contains(&location.location_id) {
            continue;
        }
        let input = LocationInput {
            location_id: location.location_id,
            name: location.name,
            r#type: LocationType::Warehouse,
            latitude: None,
            longitude: None,
            capabilities: Vec::new(),
            safety_stock_default: 0,
        };
        if is_valid(&input) {
            new_locations.push(input);
        } else {
            report.skipped += 1;
        }
    }
    for chunk in new_locations.chunks(1000) {
        report.locations_added += store.upsert_locations(chunk, ctx).await?;
    }
    let mut products = Vec::new();
    for product in master.products {
        let existing = store.product(&product.sku).await?;
        let Some(unit_cost) = product
            .unit_cost
            .as_deref()
            .and_then(|c| c.parse::<Decimal>().ok())
            .or_else(|| existing.as_ref().map(|p| p.unit_cost))
        else {
            report.skipped += 1;
            continue;
        };
        let Some(currency) = product
            .currency
            .or_else(|| existing.as_ref().map(|p| p.currency.clone()))
        else {
            report.skipped += 1;
            continue;
        };
        let input = ProductInput {
            sku: product.sku,
            name: product.name,
            // Four decimal places at most in the registry.
            unit_cost: unit_cost.round_dp(4),
            currency,
            gtin: existing.as_ref().and_then(|p| p.gtin.clone()),
            safety_stock: existing.as_ref().and_then(|p| p.safety_stock),
        };
        if is_valid(&input) {
            products.push(input);
        } else {
            report.skipped += 1;
        }
    }
    for chunk in products.chunks(1000) {
        report.products_changed += store.upsert_products(chunk, ctx).await?;
    }
    Ok(report)
}

fn is_valid<T: Validate>(value: &T) -> bool {
    let mut validator = Validator::default();
    value.validate(&mut validator);
    validator.is_ok()
}
