//! Master data queries: versioned upserts with a change journal, reads by
//! id and keyset-paged lists.

use retail_shared::model::{
    Capability, Location, LocationInput, LocationType, Product, ProductInput,
};
use rust_decimal::Decimal;
use sqlx::Row;

use super::{BeginWrite, Store, micros_to_rfc3339};
use crate::{on_reader, on_writer};

/// Who changed master data, for the change journal.
#[derive(Debug, Clone)]
pub struct ChangeContext {
    /// The acting principal.
    pub actor: String,
    /// The request that made the change.
    pub request_id: String,
}

/// One page of a keyset-paged list.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The items, in id order.
    pub items: Vec<T>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

const UPSERT_LOCATION: &str = "\
INSERT INTO locations (location_id, name, type, latitude, longitude, capabilities, \
    safety_stock_default, version, updated_at) \
VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8) \
ON CONFLICT (location_id) DO UPDATE SET \
    name = excluded.name, type = excluded.type, latitude = excluded.latitude, \
    longitude = excluded.longitude, capabilities = excluded.capabilities, \
    safety_stock_default = excluded.safety_stock_default, \
    version = locations.version + 1, updated_at = excluded.updated_at \
WHERE locations.name IS DISTINCT FROM excluded.name \
    OR locations.type IS DISTINCT FROM excluded.type \
    OR locations.latitude IS DISTINCT FROM excluded.latitude \
    OR locations.longitude IS DISTINCT FROM excluded.longitude \
    OR locations.capabilities IS DISTINCT FROM excluded.capabilities \
    OR locations.safety_stock_default IS DISTINCT FROM excluded.safety_stock_default \
RETURNING version";

const UPSERT_PRODUCT: &str = "\
INSERT INTO products (sku, name, unit_cost, currency, gtin, safety_stock, version, updated_at) \
VALUES ($1, $2, $3, $4, $5, $6, 1, $7) \
ON CONFLICT (sku) DO UPDATE SET \
    name = excluded.name, unit_cost = excluded.unit_cost, currency = excluded.currency, \
    gtin = excluded.gtin, safety_stock = excluded.safety_stock, \
    version = products.version + 1, updated_at = excluded.updated_at \
WHERE products.name IS DISTINCT FROM excluded.name \
    OR products.unit_cost IS DISTINCT FROM excluded.unit_cost \
    OR products.currency IS DISTINCT FROM excluded.currency \
    OR products.gtin IS DISTINCT FROM excluded.gtin \
    OR products.safety_stock IS DISTINCT FROM excluded.safety_stock \
RETURNING version";

const INSERT_CHANGE: &str = "\
INSERT INTO master_changes (entity, entity_id, version, changed_at, actor, request_id, payload) \
VALUES ($1, $2, $3, $4, $5, $6, $7)";

fn capabilities_to_text(capabilities: &[Capability]) -> String {
    let mut names: Vec<&str> = capabilities.iter().map(|c| c.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    names.join(",")
}

fn capabilities_from_text(text: &str) -> Vec<Capability> {
    text.split(',').filter_map(Capability::parse).collect()
}

/// Normalises a unit cost so `12.5` and `12.50` compare equal in SQL.
fn cost_text(cost: Decimal) -> String {
    cost.normalize().to_string()
}

impl Store {
    /// Inserts or updates locations in one transaction; unchanged records
    /// keep their version. Returns how many were inserted or changed.
    pub async fn upsert_locations(
        &self,
        locations: &[LocationInput],
        ctx: &ChangeContext,
    ) -> Result<u64, sqlx::Error> {
        let now = self.now();
        self.master_cache().clear();
        on_writer!(self.db(), |pool| {
            let mut tx = pool.begin_write().await?;
            let mut changed = 0;
            for location in locations {
                let before: Option<i64> = sqlx::query_scalar(
                    "SELECT safety_stock_default FROM locations WHERE location_id = $1",
                )
                .bind(&location.location_id)
                .fetch_optional(&mut *tx)
                .await?;
                if before.is_some_and(|b| b != location.safety_stock_default) {
                    // Availability moves at every position there: the
                    // change feed carries it (rare: a full look at the
                    // location's positions).
                    sqlx::query(
                        "INSERT INTO outbox_changes (location_id, sku, created_at) \
                         SELECT location_id, sku, $2 FROM positions WHERE location_id = $1",
                    )
                    .bind(&location.location_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                let version: Option<i64> = sqlx::query_scalar(UPSERT_LOCATION)
                    .bind(&location.location_id)
                    .bind(&location.name)
                    .bind(location.r#type.as_str())
                    .bind(location.latitude)
                    .bind(location.longitude)
                    .bind(capabilities_to_text(&location.capabilities))
                    .bind(location.safety_stock_default)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(version) = version {
                    changed += 1;
                    sqlx::query(INSERT_CHANGE)
                        .bind("location")
                        .bind(&location.location_id)
                        .bind(version)
                        .bind(now)
                        .bind(&ctx.actor)
                        .bind(&ctx.request_id)
                        .bind(serde_json::to_string(location).unwrap_or_default())
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
            // Again after the commit: an ingest between the first clear and
            // the commit may have cached the old values.
            self.master_cache().clear();
            Ok(changed)
        })
    }

    /// Inserts or updates products in one transaction; unchanged records
    /// keep their version. Returns how many were inserted or changed.
    pub async fn upsert_products(
        &self,
        products: &[ProductInput],
        ctx: &ChangeContext,
    ) -> Result<u64, sqlx::Error> {
        let now = self.now();
        self.master_cache().clear();
        on_writer!(self.db(), |pool| {
            let mut tx = pool.begin_write().await?;
            let mut changed = 0;
            for product in products {
                let before: Option<Option<i64>> =
                    sqlx::query_scalar("SELECT safety_stock FROM products WHERE sku = $1")
                        .bind(&product.sku)
                        .fetch_optional(&mut *tx)
                        .await?;
                if before.is_some_and(|b| b != product.safety_stock) {
                    // Availability moves at every position of the sku.
                    sqlx::query(
                        "INSERT INTO outbox_changes (location_id, sku, created_at) \
                         SELECT location_id, sku, $2 FROM positions WHERE sku = $1",
                    )
                    .bind(&product.sku)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                let version: Option<i64> = sqlx::query_scalar(UPSERT_PRODUCT)
                    .bind(&product.sku)
                    .bind(&product.name)
                    .bind(cost_text(product.unit_cost))
                    .bind(&product.currency)
                    .bind(&product.gtin)
                    .bind(product.safety_stock)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(version) = version {
                    changed += 1;
                    sqlx::query(INSERT_CHANGE)
                        .bind("product")
                        .bind(&product.sku)
                        .bind(version)
                        .bind(now)
                        .bind(&ctx.actor)
                        .bind(&ctx.request_id)
                        .bind(serde_json::to_string(product).unwrap_or_default())
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
            // Again after the commit: an ingest between the first clear and
            // the commit may have cached the old values.
            self.master_cache().clear();
            Ok(changed)
        })
    }

    /// One location.
    pub async fn location(&self, location_id: &str) -> Result<Option<Location>, sqlx::Error> {
        on_reader!(self.db(), |pool| {
            let row = sqlx::query(
                "SELECT location_id, name, type, latitude, longitude, capabilities, \
                 safety_stock_default, version, updated_at FROM locations WHERE location_id = $1",
            )
            .bind(location_id)
            .fetch_optional(pool)
            .await?;
            row.map(|row| location_from_row(&row)).transpose()
        })
    }

    /// A page of locations with ids after `after`.
    pub async fn locations(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<Location>, sqlx::Error> {
        let after = after.unwrap_or("");
        let items = on_reader!(self.db(), |pool| {
            let rows = sqlx::query(
                "SELECT location_id, name, type, latitude, longitude, capabilities, \
                 safety_stock_default, version, updated_at FROM locations \
                 WHERE location_id > $1 ORDER BY location_id LIMIT $2",
            )
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(location_from_row)
                .collect::<Result<Vec<_>, _>>()
        })?;
        let next_cursor = (items.len() == limit as usize)
            .then(|| items.last().map(|l| l.location_id.clone()))
            .flatten();
        Ok(Page { items, next_cursor })
    }

    /// One product.
    pub async fn product(&self, sku: &str) -> Result<Option<Product>, sqlx::Error> {
        on_reader!(self.db(), |pool| {
            let row = sqlx::query(
                "SELECT sku, name, unit_cost, currency, gtin, safety_stock, version, updated_at \
                 FROM products WHERE sku = $1",
            )
            .bind(sku)
            .fetch_optional(pool)
            .await?;
            row.map(|row| product_from_row(&row)).transpose()
        })
    }

    /// A page of products with skus after `after`.
    pub async fn products(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<Product>, sqlx::Error> {
        let after = after.unwrap_or("");
        let items = on_reader!(self.db(), |pool| {
            let rows = sqlx::query(
                "SELECT sku, name, unit_cost, currency, gtin, safety_stock, version, updated_at \
                 FROM products WHERE sku > $1 ORDER BY sku LIMIT $2",
            )
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(product_from_row)
                .collect::<Result<Vec<_>, _>>()
        })?;
        let next_cursor = (items.len() == limit as usize)
            .then(|| items.last().map(|p| p.sku.clone()))
            .flatten();
        Ok(Page { items, next_cursor })
    }

    /// Counts of (locations, products): seeding runs only on an empty registry.
    pub async fn master_counts(&self) -> Result<(i64, i64), sqlx::Error> {
        on_reader!(self.db(), |pool| {
            let locations: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM locations")
                .fetch_one(pool)
                .await?;
            let products: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM products")
                .fetch_one(pool)
                .await?;
            Ok((locations, products))
        })
    }
}

fn location_from_row<R: Row>(row: &R) -> Result<Location, sqlx::Error>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<f64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let kind: String = row.try_get("type")?;
    let capabilities: String = row.try_get("capabilities")?;
    Ok(Location {
        location_id: row.try_get("location_id")?,
        name: row.try_get("name")?,
        r#type: LocationType::parse(&kind)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown location type {kind}").into()))?,
        latitude: row.try_get("latitude")?,
        longitude: row.try_get("longitude")?,
        capabilities: capabilities_from_text(&capabilities),
        safety_stock_default: row.try_get("safety_stock_default")?,
        version: row.try_get("version")?,
        updated_at: micros_to_rfc3339(row.try_get("updated_at")?),
    })
}

fn product_from_row<R: Row>(row: &R) -> Result<Product, sqlx::Error>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let cost: String = row.try_get("unit_cost")?;
    Ok(Product {
        sku: row.try_get("sku")?,
        name: row.try_get("name")?,
        unit_cost: cost
            .parse::<Decimal>()
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        currency: row.try_get("currency")?,
        gtin: row.try_get("gtin")?,
        safety_stock: row.try_get("safety_stock")?,
        version: row.try_get("version")?,
        updated_at: micros_to_rfc3339(row.try_get("updated_at")?),
    })
}

impl Store {
    /// Every location (paged through in id order).
    pub async fn all_locations(&self) -> Result<Vec<Location>, sqlx::Error> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.locations(after.as_deref(), 1000).await?;
            all.extend(page.items);
            match page.next_cursor {
                Some(cursor) => after = Some(cursor),
                None => return Ok(all),
            }
        }
    }
}
