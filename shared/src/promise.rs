//! Order promising: which nodes can serve an order, best first.
//!
//! Rules: only nodes with the fulfilment method's type and capability
//! count; a node that can serve every line alone beats any split; single
//! nodes rank nearest first (nodes without coordinates last, then by id);
//! a split is offered only when no single node can serve, built greedily
//! from the node covering the most outstanding units (nearest on ties), so
//! it uses few nodes.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// (location_id, sku).
pub type Key = (String, String);

/// How the order reaches the customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Shipped from a warehouse or online fulfilment node.
    Ship,
    /// Collected by the customer at a store offering click-and-collect
    /// (one store: never split).
    ClickAndCollect,
    /// Shipped from a store offering ship-from-store.
    ShipFromStore,
}

impl Method {
    /// Whether a node of `location_type` with `capabilities` can fulfil.
    pub fn admits(self, location_type: &str, capabilities: &[&str]) -> bool {
        match self {
            Self::Ship => matches!(location_type, "warehouse" | "online"),
            Self::ClickAndCollect => {
                location_type == "store" && capabilities.contains(&"click_and_collect")
            }
            Self::ShipFromStore => {
                location_type == "store" && capabilities.contains(&"ship_from_store")
            }
        }
    }

    /// Whether an order may be split over several nodes.
    pub fn may_split(self) -> bool {
        self != Self::ClickAndCollect
    }
}

/// A candidate node and its distance from the customer.
#[derive(Debug, Clone)]
pub struct Node {
    /// Location id.
    pub location_id: String,
    /// Great-circle distance in km (None without coordinates).
    pub distance_km: Option<f64>,
}

/// Units of one sku from one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Allocation {
    /// SKU.
    pub sku: String,
    /// Units.
    pub quantity: i64,
}

/// One node's part of an option.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OptionNode {
    /// Location id.
    pub location_id: String,
    /// Distance from the customer in km (absent without coordinates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance_km: Option<f64>,
    /// What it ships or hands over.
    pub lines: Vec<Allocation>,
}

/// A way to serve the whole order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PromiseOption {
    /// 1 is best.
    pub rank: usize,
    /// Whether more than one node serves it.
    pub split: bool,
    /// The nodes, nearest first.
    pub nodes: Vec<OptionNode>,
}

/// Most lines of a promise request.
pub const MAX_PROMISE_LINES: usize = 100;
/// Most options returned.
pub const MAX_OPTIONS: usize = 20;

/// A line to promise.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromiseLine {
    /// SKU.
    pub sku: String,
    /// Units (1 to the per-line reservation cap).
    pub quantity: i64,
}

/// Where the customer is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Coordinates {
    /// Latitude, −90 to 90.
    pub latitude: f64,
    /// Longitude, −180 to 180.
    pub longitude: f64,
}

/// Body of `POST /v1/promise`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromiseRequest {
    /// 1-100 lines, each sku once.
    pub lines: Vec<PromiseLine>,
    /// Fulfilment method.
    pub method: Method,
    /// The customer's position (distances are measured from it).
    pub customer: Coordinates,
    /// Reserve the best option that still fits, atomically (needs
    /// `reservations:write`, `channel` and `order_ref`).
    #[serde(default)]
    pub reserve: bool,
    /// Channel of the reservation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Order or cart reference of the reservation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_ref: Option<String>,
    /// Lifetime of the reservation in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// Options to return, 1-20 (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_options: Option<usize>,
}

/// Answer of `POST /v1/promise`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PromiseResponse {
    /// Ranked options (empty: the order cannot be served this way now).
    pub options: Vec<PromiseOption>,
    /// The reservation made for the best option that fitted, when asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<crate::model::Reservation>,
}

impl PromiseRequest {
    /// Checks the request; every violation at once.
    pub fn check(&self, limits: &crate::config::ReservationSettings) -> Result<(), crate::Problem> {
        let mut v = crate::validate::Validator::default();
        v.count("lines", self.lines.len(), 1, MAX_PROMISE_LINES);
        let mut seen = std::collections::HashSet::new();
        v.at("lines", |v| {
            for (index, line) in self.lines.iter().enumerate() {
                v.at(index, |v| {
                    v.id("sku", &line.sku);
                    v.range("quantity", line.quantity, 1, limits.max_units_per_line);
                    if !seen.insert(line.sku.as_str()) {
                        v.error("sku", "repeats an earlier line's sku");
                    }
                });
            }
        });
        v.at("customer", |v| {
            if !(-90.0..=90.0).contains(&self.customer.latitude) {
                v.error("latitude", "must be between -90 and 90");
            }
            if !(-180.0..=180.0).contains(&self.customer.longitude) {
                v.error("longitude", "must be between -180 and 180");
            }
        });
        if let Some(max) = self.max_options
            && !(1..=MAX_OPTIONS).contains(&max)
        {
            v.error(
                "max_options",
                format!("must be between 1 and {MAX_OPTIONS}"),
            );
        }
        if self.reserve {
            match &self.channel {
                Some(channel) => v.id("channel", channel),
                None => v.error("channel", "is required with reserve: true"),
            }
            match &self.order_ref {
                Some(r)
                    if !r.is_empty() && r.chars().count() <= crate::model::MAX_REFERENCE_LEN => {}
                Some(_) => v.error("order_ref", "must be 1 to 128 characters"),
                None => v.error("order_ref", "is required with reserve: true"),
            }
            if let Some(ttl) = self.ttl_seconds
                && !(1..=limits.max_ttl_seconds).contains(&ttl)
            {
                v.error(
                    "ttl_seconds",
                    format!("must be between 1 and {}", limits.max_ttl_seconds),
                );
            }
        }
        v.finish()
    }
}

/// Great-circle distance (haversine, mean Earth radius) in km.
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0088;
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

fn nearer(a: &Node, b: &Node) -> std::cmp::Ordering {
    match (a.distance_km, b.distance_km) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    }
    .then_with(|| a.location_id.cmp(&b.location_id))
}

/// Ranked options for `lines` ((sku, quantity), each sku once) from
/// `nodes`, given what each (location, sku) has available.
pub fn rank(
    lines: &[(String, i64)],
    nodes: &[Node],
    available: &HashMap<Key, i64>,
    may_split: bool,
    max_options: usize,
) -> Vec<PromiseOption> {
    let mut nodes: Vec<&Node> = nodes.iter().collect();
    nodes.sort_by(|a, b| nearer(a, b));
    let has = |node: &Node, sku: &str| {
        available
            .get(&(node.location_id.clone(), sku.to_owned()))
            .copied()
            .unwrap_or(0)
    };
    let single: Vec<PromiseOption> = nodes
        .iter()
        .filter(|node| lines.iter().all(|(sku, q)| has(node, sku) >= *q))
        .take(max_options)
        .enumerate()
        .map(|(index, node)| PromiseOption {
            rank: index + 1,
            split: false,
            nodes: vec![OptionNode {
                location_id: node.location_id.clone(),
                distance_km: node.distance_km,
                lines: lines
                    .iter()
                    .map(|(sku, quantity)| Allocation {
                        sku: sku.clone(),
                        quantity: *quantity,
                    })
                    .collect(),
            }],
        })
        .collect();
    if !single.is_empty() || !may_split {
        return single;
    }
    // Split: repeatedly take the node covering most outstanding units.
    let mut outstanding: Vec<(String, i64)> = lines.to_vec();
    let mut used: Vec<OptionNode> = Vec::new();
    let mut remaining: Vec<&Node> = nodes.clone();
    while outstanding.iter().any(|(_, q)| *q > 0) {
        let best = remaining
            .iter()
            .enumerate()
            .map(|(index, node)| {
                let covered: i64 = outstanding
                    .iter()
                    .map(|(sku, q)| has(node, sku).clamp(0, *q))
                    .sum();
                (index, covered)
            })
            .filter(|(_, covered)| *covered > 0)
            // Most units; `remaining` is nearest first, so the first of
            // equals is the nearest.
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)));
        let Some((index, _)) = best else {
            return Vec::new();
        };
        let node = remaining.remove(index);
        let mut allocations = Vec::new();
        for (sku, q) in &mut outstanding {
            let take = has(node, sku).clamp(0, *q);
            if take > 0 {
                *q -= take;
                allocations.push(Allocation {
                    sku: sku.clone(),
                    quantity: take,
                });
            }
        }
        used.push(OptionNode {
            location_id: node.location_id.clone(),
            distance_km: node.distance_km,
            lines: allocations,
        });
    }
    used.sort_by(|a, b| {
        nearer(
            &Node {
                location_id: a.location_id.clone(),
                distance_km: a.distance_km,
            },
            &Node {
                location_id: b.location_id.clone(),
                distance_km: b.distance_km,
            },
        )
    });
    vec![PromiseOption {
        rank: 1,
        split: used.len() > 1,
        nodes: used,
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, km: f64) -> Node {
        Node {
            location_id: id.into(),
            distance_km: Some(km),
        }
    }

    fn stock(entries: &[(&str, &str, i64)]) -> HashMap<Key, i64> {
        entries
            .iter()
            .map(|(l, s, q)| (((*l).to_owned(), (*s).to_owned()), *q))
            .collect()
    }

    #[test]
    fn the_nearest_single_node_with_everything_wins() {
        let nodes = [node("FAR", 50.0), node("NEAR", 2.0), node("MID", 10.0)];
        let available = stock(&[("FAR", "A", 5), ("NEAR", "A", 1), ("MID", "A", 3)]);
        let options = rank(&[("A".into(), 2)], &nodes, &available, true, 5);
        let ids: Vec<&str> = options
            .iter()
            .map(|o| o.nodes[0].location_id.as_str())
            .collect();
        assert_eq!(ids, ["MID", "FAR"]);
        assert!(options.iter().all(|o| !o.split));
    }

    #[test]
    fn a_split_only_when_no_single_node_serves_and_uses_few_nodes() {
        let nodes = [node("N1", 1.0), node("N2", 2.0), node("N3", 3.0)];
        let available = stock(&[
            ("N1", "A", 1),
            ("N2", "A", 3),
            ("N2", "B", 1),
            ("N3", "B", 5),
        ]);
        let options = rank(
            &[("A".into(), 3), ("B".into(), 2)],
            &nodes,
            &available,
            true,
            5,
        );
        assert_eq!(options.len(), 1);
        let ids: Vec<&str> = options[0]
            .nodes
            .iter()
            .map(|n| n.location_id.as_str())
            .collect();
        assert_eq!(ids, ["N2", "N3"]);
        assert!(options[0].split);
        // Not enough anywhere, or no splitting allowed: nothing.
        assert!(rank(&[("A".into(), 9)], &nodes, &available, true, 5).is_empty());
        assert!(
            rank(
                &[("A".into(), 3), ("B".into(), 2)],
                &nodes,
                &available,
                false,
                5
            )
            .is_empty()
        );
    }

    #[test]
    fn distances_are_great_circle_kilometres() {
        // Paris to London, about 344 km.
        let d = distance_km((48.8566, 2.3522), (51.5074, -0.1278));
        assert!((d - 343.5).abs() < 2.0, "{d}");
        assert!(distance_km((10.0, 10.0), (10.0, 10.0)).abs() < 1e-9);
    }
}
