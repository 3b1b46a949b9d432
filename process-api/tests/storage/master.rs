//! Master data: versioned upserts, change journal, paging.

use process_api::storage::master::ChangeContext;
use retail_shared::model::{Capability, LocationInput, LocationType, ProductInput};
use rust_decimal::Decimal;

use crate::backends;

fn ctx() -> ChangeContext {
    ChangeContext {
        actor: "tester".into(),
        request_id: "req-1".into(),
    }
}

fn location(id: &str, name: &str) -> LocationInput {
    LocationInput {
        location_id: id.into(),
        name: name.into(),
        r#type: LocationType::Store,
        latitude: Some(51.5),
        longitude: Some(-0.12),
        capabilities: vec![Capability::Returns, Capability::ClickAndCollect],
        safety_stock_default: 2,
    }
}

fn product(sku: &str, cost: Decimal) -> ProductInput {
    ProductInput {
        sku: sku.into(),
        name: format!("Product {sku}"),
        unit_cost: cost,
        currency: "EUR".into(),
        gtin: None,
        safety_stock: Some(3),
    }
}

#[tokio::test]
async fn upserts_version_only_real_changes() {
    for backend in backends::all().await {
        let store = &backend.store;
        let n = store
            .upsert_locations(&[location("S1", "One"), location("S2", "Two")], &ctx())
            .await
            .expect("insert");
        assert_eq!(n, 2, "{}", backend.name);
        // Same content: nothing changes, versions stay.
        let n = store
            .upsert_locations(&[location("S1", "One"), location("S2", "Two")], &ctx())
            .await
            .expect("noop");
        assert_eq!(n, 0, "{}", backend.name);
        let n = store
            .upsert_locations(&[location("S1", "One renamed")], &ctx())
            .await
            .expect("update");
        assert_eq!(n, 1);
        let s1 = store.location("S1").await.expect("read").expect("exists");
        assert_eq!(s1.version, 2, "{}", backend.name);
        assert_eq!(s1.name, "One renamed");
        assert_eq!(
            s1.capabilities,
            vec![Capability::ClickAndCollect, Capability::Returns]
        );
        assert!(s1.updated_at.ends_with('Z'));
        let s2 = store.location("S2").await.expect("read").expect("exists");
        assert_eq!(s2.version, 1);
        assert!(store.location("nope").await.expect("read").is_none());
    }
}

#[tokio::test]
async fn money_round_trips_as_decimal_and_equal_values_are_no_change() {
    for backend in backends::all().await {
        let store = &backend.store;
        store
            .upsert_products(&[product("A", Decimal::new(1250, 2))], &ctx())
            .await
            .expect("insert");
        // 12.5 == 12.50: not a change.
        let n = store
            .upsert_products(&[product("A", Decimal::new(125, 1))], &ctx())
            .await
            .expect("same value");
        assert_eq!(n, 0, "{}", backend.name);
        let a = store.product("A").await.expect("read").expect("exists");
        assert_eq!(a.unit_cost, Decimal::new(125, 1));
        assert_eq!(a.safety_stock, Some(3));
        assert_eq!(a.version, 1);
    }
}

#[tokio::test]
async fn lists_page_by_keyset() {
    for backend in backends::all().await {
        let store = &backend.store;
        let products: Vec<_> = (0..25)
            .map(|i| product(&format!("SKU-{i:03}"), Decimal::ONE))
            .collect();
        store
            .upsert_products(&products, &ctx())
            .await
            .expect("insert");
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store.products(after.as_deref(), 10).await.expect("page");
            seen.extend(page.items.iter().map(|p| p.sku.clone()));
            match page.next_cursor {
                Some(cursor) => after = Some(cursor),
                None => break,
            }
        }
        let expected: Vec<_> = (0..25).map(|i| format!("SKU-{i:03}")).collect();
        assert_eq!(seen, expected, "{}", backend.name);
        assert_eq!(store.master_counts().await.expect("counts"), (0, 25));
    }
}
