//! Demo data: `stores` stores (`S001`…), one distribution centre (`DC01`),
//! one online node (`WEB01`), `skus` products (`SKU-000001`…), and an
//! opening stock count for every store and DC position (journalled like
//! any count, source `seed`). Deterministic, so every fresh run shows the
//! same catalogue and stock.

use retail_shared::model::{Capability, LocationInput, LocationType, ProductInput};
use rust_decimal::Decimal;

use crate::storage::Store;
use crate::storage::master::ChangeContext;

const ADJECTIVES: [&str; 12] = [
    "Classic",
    "Organic",
    "Everyday",
    "Premium",
    "Compact",
    "Family",
    "Travel",
    "Eco",
    "Deluxe",
    "Essential",
    "Outdoor",
    "Kids",
];
const NOUNS: [&str; 15] = [
    "Coffee Beans",
    "Rain Jacket",
    "Desk Lamp",
    "Water Bottle",
    "Sneakers",
    "Backpack",
    "Olive Oil",
    "Headphones",
    "Bath Towel",
    "Notebook",
    "Yoga Mat",
    "Tea Kettle",
    "Umbrella",
    "Phone Charger",
    "Wool Socks",
];

/// The demo locations.
pub fn demo_locations(stores: u32) -> Vec<LocationInput> {
    let mut locations: Vec<LocationInput> = (1..=stores)
        .map(|n| {
            // Stores on a spiral around a city centre, 1–40 km out.
            let angle = f64::from(n) * 2.399_963;
            let radius = 0.01 + 0.35 * f64::from(n) / f64::from(stores.max(1));
            let mut capabilities = vec![Capability::ClickAndCollect, Capability::Returns];
            if n % 2 == 1 {
                capabilities.push(Capability::ShipFromStore);
            }
            LocationInput {
                location_id: format!("S{n:03}"),
                name: format!("Store {n:03}"),
                r#type: LocationType::Store,
                latitude: Some(round6(40.7128 + radius * angle.sin())),
                longitude: Some(round6(-74.0060 + radius * angle.cos())),
                capabilities,
                safety_stock_default: 1,
            }
        })
        .collect();
    locations.push(LocationInput {
        location_id: "DC01".into(),
        name: "Distribution Centre 01".into(),
        r#type: LocationType::Warehouse,
        latitude: Some(40.7357),
        longitude: Some(-74.1724),
        capabilities: vec![Capability::Returns],
        safety_stock_default: 0,
    });
    locations.push(LocationInput {
        location_id: "WEB01".into(),
        name: "Online fulfilment".into(),
        r#type: LocationType::Online,
        latitude: None,
        longitude: None,
        capabilities: vec![],
        safety_stock_default: 0,
    });
    locations
}

/// The demo products.
pub fn demo_products(skus: u32) -> Vec<ProductInput> {
    (1..=skus)
        .map(|n| {
            let adjective = ADJECTIVES[n as usize % ADJECTIVES.len()];
            let noun = NOUNS[(n as usize / ADJECTIVES.len()) % NOUNS.len()];
            // 1.99 … 199.99, spread deterministically.
            let cents = 199 + i64::from((n * 7919) % 19_800);
            ProductInput {
                sku: format!("SKU-{n:06}"),
                name: format!("{adjective} {noun} #{n}"),
                unit_cost: Decimal::new(cents, 2),
                currency: "USD".into(),
                gtin: Some(gtin13(u64::from(n))),
                safety_stock: (n % 10 == 0).then_some(2),
            }
        })
        .collect()
}

/// An opening count for every store and DC position, an hour ago.
pub fn opening_counts(stores: u32, skus: u32) -> Vec<crate::inventory::event::EventInput> {
    let at = an_hour_ago();
    opening_locations(stores)
        .iter()
        .enumerate()
        .flat_map(|(l, location)| location_counts(l, location, skus, &at))
        .collect()
}

/// The locations that get an opening count: the stores and the DC.
fn opening_locations(stores: u32) -> Vec<String> {
    (1..=stores)
        .map(|n| format!("S{n:03}"))
        .chain(std::iter::once("DC01".to_owned()))
        .collect()
}

fn an_hour_ago() -> String {
    (time::OffsetDateTime::now_utc() - time::Duration::hours(1))
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The opening counts of the `l`-th location, one per sku.
fn location_counts(
    l: usize,
    location: &str,
    skus: u32,
    at: &str,
) -> Vec<crate::inventory::event::EventInput> {
    (1..=skus)
        .map(|n| {
            let quantity = i64::from((n * 31 + l as u32 * 17) % 40);
            let quantity = if location == "DC01" {
                quantity * 10
            } else {
                quantity
            };
            crate::inventory::event::EventInput {
                event_id: format!("seed-count-{location}-{n:06}"),
                r#type: "count".into(),
                location_id: location.to_owned(),
                sku: format!("SKU-{n:06}"),
                quantity,
                occurred_at: at.to_owned(),
                source: "seed".into(),
                reference: None,
                reason: Some("opening stock".into()),
                counterparty_location_id: None,
                disposition: None,
            }
        })
        .collect()
}

fn round6(value: f64) -> f64 {
    (value * 1e6).round() / 1e6
}

/// A GTIN-13 in the 200–299 "in-store" prefix range with its check digit.
fn gtin13(n: u64) -> String {
    let body = format!("2{:011}", n % 100_000_000_000);
    let sum: u32 = body
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 { d * 3 } else { d }
        })
        .sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}

/// Seeds demo master data when the registry is empty. Returns whether it
/// seeded.
pub async fn seed_if_empty(
    store: &Store,
    stores: u32,
    skus: u32,
    opening_stock: bool,
) -> anyhow::Result<bool> {
    let (locations, products) = store.master_counts().await?;
    if locations > 0 || products > 0 {
        return Ok(false);
    }
    seed(store, stores, skus, opening_stock).await?;
    Ok(true)
}

/// Upserts the demo master data (unchanged records stay as they are).
pub async fn seed(
    store: &Store,
    stores: u32,
    skus: u32,
    opening_stock: bool,
) -> anyhow::Result<()> {
    let ctx = ChangeContext {
        actor: "seed".into(),
        request_id: uuid::Uuid::new_v4().to_string(),
    };
    for chunk in demo_locations(stores).chunks(1000) {
        store.upsert_locations(chunk, &ctx).await?;
    }
    for chunk in demo_products(skus).chunks(1000) {
        store.upsert_products(chunk, &ctx).await?;
    }
    let ingest = crate::storage::ledger::IngestContext {
        actor: "seed".into(),
        request_id: ctx.request_id.clone(),
        trace_id: "0".repeat(32),
        span_id: None,
    };
    if opening_stock {
        // One location's counts at a time: 300 stores x 20,000 skus would
        // hold 6 million events in memory at once.
        let at = an_hour_ago();
        for (l, location) in opening_locations(stores).iter().enumerate() {
            for chunk in location_counts(l, location, skus, &at).chunks(1000) {
                store.ingest(chunk, &ingest).await?;
            }
        }
    }
    tracing::info!(stores, skus, "seeded demo master data");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use retail_shared::model::{LocationsUpsert, ProductsUpsert, is_valid_gtin};
    use retail_shared::validate::Validate;

    #[test]
    fn demo_data_passes_validation() {
        let locations = LocationsUpsert {
            locations: demo_locations(20),
        };
        assert_eq!(locations.locations.len(), 22);
        locations.validated().expect("valid locations");
        let products = ProductsUpsert {
            products: demo_products(500),
        };
        assert!(
            products
                .products
                .iter()
                .all(|p| is_valid_gtin(p.gtin.as_deref().unwrap_or("")))
        );
        products.validated().expect("valid products");
    }
}
