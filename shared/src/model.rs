//! The canonical model shared by the three layers: master data (locations,
//! products) and the wire shapes clients code against (DESIGN.md §5).

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::validate::{Validate, Validator};

/// Largest bulk upsert of master data in one request.
pub const MAX_MASTER_BATCH: usize = 1000;
/// Longest display name.
pub const MAX_NAME_LEN: usize = 200;
/// Largest safety stock a position, product or location may set.
pub const MAX_SAFETY_STOCK: i64 = 1_000_000;

/// Kind of node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LocationType {
    /// A physical store.
    Store,
    /// A warehouse or distribution centre.
    Warehouse,
    /// An online fulfilment node.
    Online,
}

impl LocationType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Store => "store",
            Self::Warehouse => "warehouse",
            Self::Online => "online",
        }
    }

    /// Parses the wire name.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "store" => Some(Self::Store),
            "warehouse" => Some(Self::Warehouse),
            "online" => Some(Self::Online),
            _ => None,
        }
    }
}

/// What a node can do for channels.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Ships online orders.
    ShipFromStore,
    /// Customers collect online orders here.
    ClickAndCollect,
    /// Accepts returns.
    Returns,
}

impl Capability {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ShipFromStore => "ship_from_store",
            Self::ClickAndCollect => "click_and_collect",
            Self::Returns => "returns",
        }
    }

    /// Parses the wire name.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "ship_from_store" => Some(Self::ShipFromStore),
            "click_and_collect" => Some(Self::ClickAndCollect),
            "returns" => Some(Self::Returns),
            _ => None,
        }
    }
}

/// A location as sent in `PUT /v1/master/locations` (pinned fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LocationInput {
    /// 1–128 printable ASCII characters, no spaces, commas or slashes.
    #[schema(example = "S001", min_length = 1, max_length = 128)]
    pub location_id: String,
    /// Display name (≤ 200 characters).
    #[schema(max_length = 200)]
    pub name: String,
    /// Kind of node.
    pub r#type: LocationType,
    /// WGS84 latitude in [-90, 90]; required with longitude for distance
    /// ranking, absent for online nodes.
    #[serde(default)]
    pub latitude: Option<f64>,
    /// WGS84 longitude in [-180, 180].
    #[serde(default)]
    pub longitude: Option<f64>,
    /// Channel capabilities.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// Safety stock for positions here without a position or product value.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1000000)]
    pub safety_stock_default: i64,
}

impl Validate for LocationInput {
    fn validate(&self, v: &mut Validator) {
        v.id("location_id", &self.location_id);
        if self.name.trim().is_empty() {
            v.error("name", "must not be blank");
        }
        v.text("name", &self.name, MAX_NAME_LEN);
        match (self.latitude, self.longitude) {
            (Some(lat), Some(lon)) => {
                if !(-90.0..=90.0).contains(&lat) || lat.is_nan() {
                    v.error("latitude", "must be between -90 and 90");
                }
                if !(-180.0..=180.0).contains(&lon) || lon.is_nan() {
                    v.error("longitude", "must be between -180 and 180");
                }
            }
            (None, None) => {}
            (Some(_), None) => v.error("longitude", "latitude and longitude come together"),
            (None, Some(_)) => v.error("latitude", "latitude and longitude come together"),
        }
        let mut seen = std::collections::BTreeSet::new();
        for (index, capability) in self.capabilities.iter().enumerate() {
            if !seen.insert(*capability) {
                v.at("capabilities", |v| {
                    v.error(&index.to_string(), "listed twice")
                });
            }
        }
        v.range(
            "safety_stock_default",
            self.safety_stock_default,
            0,
            MAX_SAFETY_STOCK,
        );
    }
}

/// Body of `PUT /v1/master/locations`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LocationsUpsert {
    /// 1–1000 locations.
    #[schema(min_items = 1, max_items = 1000)]
    pub locations: Vec<LocationInput>,
}

impl Validate for LocationsUpsert {
    fn validate(&self, v: &mut Validator) {
        v.count("locations", self.locations.len(), 1, MAX_MASTER_BATCH);
        let mut seen = std::collections::HashSet::new();
        v.at("locations", |v| {
            for (index, location) in self.locations.iter().enumerate() {
                v.at(index, |v| {
                    location.validate(v);
                    if !seen.insert(location.location_id.as_str()) {
                        v.error("location_id", "appears twice in this request");
                    }
                });
            }
        });
    }
}

/// A product as sent in `PUT /v1/master/products` (pinned fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductInput {
    /// Stock keeping unit: 1–128 printable ASCII characters.
    #[schema(example = "SKU-000001", min_length = 1, max_length = 128)]
    pub sku: String,
    /// Display name (≤ 200 characters).
    #[schema(max_length = 200)]
    pub name: String,
    /// Unit cost as a decimal string, ≥ 0, at most 4 decimal places.
    #[schema(value_type = String, example = "12.50")]
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_cost: Decimal,
    /// ISO 4217 alphabetic code.
    #[schema(example = "USD")]
    pub currency: String,
    /// GTIN-8/12/13/14 with a valid check digit.
    #[serde(default)]
    pub gtin: Option<String>,
    /// Product-level safety stock.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1000000)]
    pub safety_stock: Option<i64>,
}

impl Validate for ProductInput {
    fn validate(&self, v: &mut Validator) {
        v.id("sku", &self.sku);
        if self.name.trim().is_empty() {
            v.error("name", "must not be blank");
        }
        v.text("name", &self.name, MAX_NAME_LEN);
        if self.unit_cost.is_sign_negative() {
            v.error("unit_cost", "must not be negative");
        }
        if self.unit_cost.scale() > 4 {
            v.error("unit_cost", "at most 4 decimal places");
        }
        if self.unit_cost > Decimal::from(1_000_000_000_i64) {
            v.error("unit_cost", "must be below 1,000,000,000");
        }
        if !is_iso4217(&self.currency) {
            v.error("currency", "must be an ISO 4217 currency code (e.g. USD)");
        }
        if let Some(gtin) = &self.gtin
            && !is_valid_gtin(gtin)
        {
            v.error(
                "gtin",
                "must be 8, 12, 13 or 14 digits with a valid check digit",
            );
        }
        if let Some(safety) = self.safety_stock {
            v.range("safety_stock", safety, 0, MAX_SAFETY_STOCK);
        }
    }
}

/// Body of `PUT /v1/master/products`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductsUpsert {
    /// 1–1000 products.
    #[schema(min_items = 1, max_items = 1000)]
    pub products: Vec<ProductInput>,
}

impl Validate for ProductsUpsert {
    fn validate(&self, v: &mut Validator) {
        v.count("products", self.products.len(), 1, MAX_MASTER_BATCH);
        let mut seen = std::collections::HashSet::new();
        v.at("products", |v| {
            for (index, product) in self.products.iter().enumerate() {
                v.at(index, |v| {
                    product.validate(v);
                    if !seen.insert(product.sku.as_str()) {
                        v.error("sku", "appears twice in this request");
                    }
                });
            }
        });
    }
}

/// Answer of both bulk upserts.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Upserted {
    /// Records inserted or changed.
    pub upserted: u64,
}

/// A stored location.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Location {
    /// Id.
    pub location_id: String,
    /// Name.
    pub name: String,
    /// Kind.
    pub r#type: LocationType,
    /// Latitude.
    pub latitude: Option<f64>,
    /// Longitude.
    pub longitude: Option<f64>,
    /// Capabilities.
    pub capabilities: Vec<Capability>,
    /// Location default safety stock.
    pub safety_stock_default: i64,
    /// Version: bumped by every change.
    pub version: i64,
    /// Last change (RFC 3339).
    pub updated_at: String,
}

/// A stored product.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Product {
    /// SKU.
    pub sku: String,
    /// Name.
    pub name: String,
    /// Unit cost (decimal string).
    #[schema(value_type = String)]
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_cost: Decimal,
    /// ISO 4217 currency.
    pub currency: String,
    /// GTIN.
    pub gtin: Option<String>,
    /// Product-level safety stock.
    pub safety_stock: Option<i64>,
    /// Version: bumped by every change.
    pub version: i64,
    /// Last change (RFC 3339).
    pub updated_at: String,
}

/// Active ISO 4217 alphabetic codes (the list as published in 2024, minus
/// funds codes and precious metals).
const ISO_4217: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD",
    "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ",
    "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD",
    "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR",
    "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN",
    "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR",
    "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB",
    "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS",
    "VED", "VES", "VND", "VUV", "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER", "ZAR", "ZMW",
    "ZWG",
];

/// Whether `code` is an active ISO 4217 currency code.
pub fn is_iso4217(code: &str) -> bool {
    ISO_4217.binary_search(&code).is_ok()
}

/// Whether `gtin` is a GTIN-8/12/13/14 with a valid mod-10 check digit.
pub fn is_valid_gtin(gtin: &str) -> bool {
    if !matches!(gtin.len(), 8 | 12 | 13 | 14) || !gtin.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let digits: Vec<u32> = gtin.bytes().map(|b| u32::from(b - b'0')).collect();
    let (body, check) = digits.split_at(digits.len() - 1);
    let sum: u32 = body
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| if i % 2 == 0 { d * 3 } else { *d })
        .sum();
    (10 - sum % 10) % 10 == check[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_list_is_sorted_for_binary_search() {
        assert!(ISO_4217.windows(2).all(|w| w[0] < w[1]));
        assert!(is_iso4217("USD") && is_iso4217("EUR") && !is_iso4217("usd"));
        assert!(!is_iso4217("XXX"));
    }

    #[test]
    fn gtin_check_digits() {
        assert!(is_valid_gtin("4006381333931"));
        assert!(is_valid_gtin("036000291452"));
        assert!(!is_valid_gtin("4006381333932"));
        assert!(!is_valid_gtin("12345"));
    }

    #[test]
    fn product_validation_names_each_field() {
        let body = ProductsUpsert {
            products: vec![ProductInput {
                sku: "bad sku".into(),
                name: "".into(),
                unit_cost: Decimal::new(-1, 0),
                currency: "usd".into(),
                gtin: Some("123".into()),
                safety_stock: Some(-1),
            }],
        };
        let problem = body.validated().expect_err("invalid");
        let pointers: Vec<_> = problem.errors().iter().map(|e| e.pointer.clone()).collect();
        for expected in [
            "/products/0/sku",
            "/products/0/name",
            "/products/0/unit_cost",
            "/products/0/currency",
            "/products/0/gtin",
            "/products/0/safety_stock",
        ] {
            assert!(
                pointers.iter().any(|p| p == expected),
                "{expected} in {pointers:?}"
            );
        }
    }
}

/// Longest `order_ref` or `channel` of a reservation.
pub const MAX_REFERENCE_LEN: usize = 128;

/// A line of a reservation (pinned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReservationLine {
    /// SKU.
    pub sku: String,
    /// Location the units are held at.
    pub location_id: String,
    /// Units, from 1 to the configured per-line cap.
    pub quantity: i64,
}

/// Body of `POST /v1/reservations` (pinned).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReservationRequest {
    /// Sales channel asking (e.g. `web`, `mobile`, `store`, `partner`).
    pub channel: String,
    /// The channel's order or cart reference.
    pub order_ref: String,
    /// Lines: each (sku, location_id) at most once; all are held or none.
    pub lines: Vec<ReservationLine>,
    /// Lifetime in seconds (default and maximum from configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

impl ReservationRequest {
    /// Checks the request against the configured caps; every violation is
    /// reported at once with its JSON pointer.
    pub fn check(&self, limits: &crate::config::ReservationSettings) -> Result<(), crate::Problem> {
        let mut v = Validator::default();
        v.id("channel", &self.channel);
        if self.order_ref.is_empty() || self.order_ref.chars().count() > MAX_REFERENCE_LEN {
            v.error(
                "order_ref",
                format!("must be 1 to {MAX_REFERENCE_LEN} characters"),
            );
        }
        v.count("lines", self.lines.len(), 1, limits.max_lines);
        let mut seen = std::collections::HashSet::new();
        let mut total: i64 = 0;
        v.at("lines", |v| {
            for (index, line) in self.lines.iter().enumerate() {
                v.at(index, |v| {
                    v.id("sku", &line.sku);
                    v.id("location_id", &line.location_id);
                    v.range("quantity", line.quantity, 1, limits.max_units_per_line);
                    if !seen.insert((line.sku.as_str(), line.location_id.as_str())) {
                        v.error(
                            "",
                            "repeats the sku and location of an earlier line; merge them",
                        );
                    }
                });
                total = total.saturating_add(line.quantity.max(0));
            }
        });
        if total > limits.max_units_per_order {
            v.error(
                "lines",
                format!(
                    "hold {total} units in all; at most {} per reservation",
                    limits.max_units_per_order
                ),
            );
        }
        if let Some(ttl) = self.ttl_seconds
            && !(1..=limits.max_ttl_seconds).contains(&ttl)
        {
            v.error(
                "ttl_seconds",
                format!("must be between 1 and {}", limits.max_ttl_seconds),
            );
        }
        v.finish()
    }

    /// The lifetime to use.
    pub fn ttl(&self, limits: &crate::config::ReservationSettings) -> u64 {
        self.ttl_seconds.unwrap_or(limits.default_ttl_seconds)
    }
}

/// Lifecycle of a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    /// Holding its units.
    Active,
    /// Released by the channel.
    Released,
    /// Turned into sales.
    Fulfilled,
    /// Reached `expires_at` while active.
    Expired,
}

impl ReservationStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Released => "released",
            Self::Fulfilled => "fulfilled",
            Self::Expired => "expired",
        }
    }

    /// From the stored name (anything unknown reads as active).
    pub fn parse(value: &str) -> Self {
        match value {
            "released" => Self::Released,
            "fulfilled" => Self::Fulfilled,
            "expired" => Self::Expired,
            _ => Self::Active,
        }
    }
}

/// A reservation as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Reservation {
    /// Id (UUID v7).
    pub reservation_id: String,
    /// The client that created it (only it may read or end it).
    #[serde(skip)]
    pub client_id: String,
    /// Status now (an active reservation past `expires_at` shows `expired`
    /// even before the sweeper records it).
    pub status: ReservationStatus,
    /// Sales channel that asked.
    pub channel: String,
    /// The channel's order or cart reference.
    pub order_ref: String,
    /// The held lines.
    pub lines: Vec<ReservationLine>,
    /// Creation time.
    pub created_at: String,
    /// When the hold lapses.
    pub expires_at: String,
    /// When it was released, fulfilled or expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<String>,
}
