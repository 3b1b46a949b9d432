//! Tryton (8.2) over JSON-RPC.
//!
//! Mapping (DESIGN.md §7): product `code` = sku, warehouse `code` =
//! location_id. Every posting becomes one Tryton shipment whose
//! `reference` is `retail:{event_id}` holding one stock move, taken
//! through its workflow to `done`:
//!
//! | posting                                   | shipment                   | move                  |
//! |-------------------------------------------|----------------------------|-----------------------|
//! | receipt (+)                               | `stock.shipment.in`        | supplier → input      |
//! | return (+)                                | `stock.shipment.out.return`| customer → input      |
//! | sale (−)                                  | `stock.shipment.out`       | output → customer     |
//! | write-off to vendor (−, `return_to_vendor`)| `stock.shipment.in.return`| storage → supplier    |
//! | transfer_out (−) / transfer_in (+)        | `stock.shipment.internal`  | storage ↔ `TRANSIT`   |
//! | anything else (adjustment, count, damage) | `stock.shipment.internal`  | storage ↔ lost-and-found |
//!
//! A posting whose sign does not fit its kind (a sale that increased
//! on_hand is impossible, but a count can go either way) falls back to
//! the lost-and-found internal shipment for its direction.
//!
//! Outgoing stock goes through shipments because Tryton refuses `do` on an
//! unassigned move out of storage; `assign_force` lets stock go negative
//! like the platform's on_hand may.
//!
//! **Exactly once:** before creating, the shipments of the batch are
//! looked up by reference; a `done` one answers `duplicate`, one left in
//! between by an interrupted call is taken on through its remaining steps.
//! Calls are serialised in this process (Tryton's references are not
//! unique, so two writers could both create); system-api runs the Tryton
//! adapter as a single replica.
//!
//! **Order per key:** a batch is worked through in waves (the first
//! posting of every key, then the second, …), so the moves of one
//! (warehouse, product) are created and done in posting order.
//!
//! **Errors:** connection failures, timeouts, HTTP 429/503 are retryable
//! (the whole call fails as unavailable). A Tryton `UserError` is about the
//! data: the wave's group is then posted one posting at a time to find the
//! posting at fault, which fails permanently; the others go through.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use retail_shared::config::TrytonSettings;
use retail_shared::erp::{
    ErpBalance, ErpLocation, ErpMaster, ErpProduct, Posting, PostingResult, PostingStatus,
};
use serde_json::{Value, json};
use tokio::sync::{Mutex, RwLock};

use super::{Erp, ErpError, KeyGate};

/// Prefix of shipment references written by the platform.
pub const REFERENCE_PREFIX: &str = "retail:";

/// Products per `create` call (Tryton on SQLite overflows its SQL parser
/// at about 95).
const PRODUCTS_PER_CALL: usize = 50;

/// Records read per `search_read` page.
const PAGE: usize = 1000;

/// Why one JSON-RPC call failed.
#[derive(Debug, Clone)]
enum CallError {
    /// Not reached, or it cannot serve now.
    Unavailable(String),
    /// Tryton refused (a `UserError` or a server-side error about the data).
    Refused(String),
}

impl From<CallError> for ErpError {
    fn from(error: CallError) -> Self {
        match error {
            CallError::Unavailable(detail) => ErpError::Unavailable(detail),
            CallError::Refused(detail) => ErpError::Refused(detail),
        }
    }
}

/// Ids the adapter needs, looked up once per session.
#[derive(Debug, Clone)]
struct Refs {
    company: i64,
    currency: i64,
    currency_code: String,
    unit: i64,
    supplier: i64,
    customer: i64,
    lost_found: i64,
    transit: i64,
    customer_party: i64,
    customer_address: i64,
    supplier_party: i64,
}

/// A warehouse's zones.
#[derive(Debug, Clone, Copy)]
struct Warehouse {
    id: i64,
    input: i64,
    output: i64,
    storage: i64,
}

/// The Tryton backend.
#[derive(Debug)]
pub struct TrytonErp {
    http: reqwest::Client,
    rpc_url: String,
    root_rpc_url: String,
    username: String,
    password: String,
    session: RwLock<Option<String>>,
    refs: RwLock<Option<Refs>>,
    warehouses: RwLock<HashMap<String, Warehouse>>,
    products: RwLock<HashMap<String, (i64, String)>>,
    /// One posting call at a time (see the module documentation).
    writer: Mutex<()>,
}

/// The shipment models, in the order a wave works through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Model {
    In,
    OutReturn,
    Internal,
    Out,
    InReturn,
}

impl Model {
    fn name(self) -> &'static str {
        match self {
            Model::In => "stock.shipment.in",
            Model::OutReturn => "stock.shipment.out.return",
            Model::Internal => "stock.shipment.internal",
            Model::Out => "stock.shipment.out",
            Model::InReturn => "stock.shipment.in.return",
        }
    }

    /// Workflow steps after `create`, each with the states it moves on
    /// from. A step whose shipments are all past it is skipped.
    fn steps(self, single_zone: bool) -> Vec<Step> {
        match self {
            Model::In | Model::OutReturn => {
                if single_zone {
                    vec![("receive", &["draft"][..], "done")]
                } else {
                    vec![
                        ("receive", &["draft"][..], "received"),
                        ("do", &["received"][..], "done"),
                    ]
                }
            }
            Model::Internal | Model::InReturn => vec![
                ("wait", &["draft"][..], "waiting"),
                ("assign_force", &["waiting"][..], "assigned"),
                ("do", &["assigned"][..], "done"),
            ],
            Model::Out => {
                let mut steps = vec![
                    ("wait", &["draft"][..], "waiting"),
                    ("assign_force", &["waiting"][..], "assigned"),
                ];
                if !single_zone {
                    steps.push(("pick", &["assigned"][..], "picked"));
                }
                steps.push(("pack", &["assigned", "picked"][..], "packed"));
                steps.push(("do", &["packed"][..], "done"));
                steps
            }
        }
    }
}

/// A workflow step: its button, the states it moves on from, the state it
/// leads to.
type Step = (&'static str, &'static [&'static str], &'static str);

fn decimal(value: &str) -> Value {
    json!({"__class__": "Decimal", "decimal": value})
}

fn date(rfc3339: &str) -> Value {
    let today = time::OffsetDateTime::now_utc().date();
    let day = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map(|t| t.to_offset(time::UtcOffset::UTC).date())
        .unwrap_or(today)
        // Tryton refuses moves dated after its today.
        .min(today);
    json!({"__class__": "date", "year": day.year(), "month": u8::from(day.month()), "day": day.day()})
}

fn id_of(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| value["id"].as_i64())
}

/// A decimal or float Tryton value as text.
fn decimal_text(value: &Value) -> Option<String> {
    match value {
        Value::Object(map) => map
            .get("decimal")
            .and_then(Value::as_str)
            .map(str::to_owned),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

impl TrytonErp {
    /// A client of the Tryton server in `settings` (nothing is contacted
    /// until the first call).
    pub fn new(settings: &TrytonSettings) -> anyhow::Result<Self> {
        let base = settings.url.trim_end_matches('/');
        let http = retail_shared::tls::client_builder()
            .timeout(Duration::from_secs(300))
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self {
            http,
            rpc_url: format!("{base}/{}/rpc/", settings.database),
            root_rpc_url: format!("{base}/rpc/"),
            username: settings.username.clone(),
            password: settings.password.expose().to_owned(),
            session: RwLock::new(None),
            refs: RwLock::new(None),
            warehouses: RwLock::new(HashMap::new()),
            products: RwLock::new(HashMap::new()),
            writer: Mutex::new(()),
        })
    }

    async fn raw(
        &self,
        url: &str,
        method: &str,
        params: &Value,
        session: Option<&str>,
    ) -> Result<Value, (Option<u16>, CallError)> {
        let mut request = self
            .http
            .post(url)
            .json(&json!({"id": 1, "method": method, "params": params}));
        if let Some(session) = session {
            request = request.header("authorization", format!("Session {session}"));
        }
        let response = request.send().await.map_err(|e| {
            (
                None,
                CallError::Unavailable(format!("Tryton at {url}: {e}")),
            )
        })?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| {
            (
                Some(status),
                CallError::Unavailable(format!("Tryton answer lost: {e}")),
            )
        })?;
        if status != 200 {
            let detail: String = text.chars().take(300).collect();
            let error = if matches!(status, 429 | 502 | 503 | 504) {
                CallError::Unavailable(format!("Tryton answered {status}: {detail}"))
            } else {
                CallError::Refused(format!("Tryton answered {status} to {method}: {detail}"))
            };
            return Err((Some(status), error));
        }
        let body: Value = serde_json::from_str(&text).map_err(|e| {
            (
                Some(status),
                CallError::Unavailable(format!("Tryton answered something unreadable: {e}")),
            )
        })?;
        if let Some(error) = body.get("error") {
            // ["UserError", [message, description, domain]] or [message, ""].
            let message = error[1][0]
                .as_str()
                .or_else(|| error[0].as_str())
                .unwrap_or("unknown error");
            let kind = error[0].as_str().unwrap_or_default();
            return Err((
                Some(status),
                CallError::Refused(format!("{kind}: {message}").chars().take(500).collect()),
            ));
        }
        Ok(body["result"].clone())
    }

    async fn login(&self) -> Result<String, CallError> {
        let result = self
            .raw(
                &self.rpc_url,
                "common.db.login",
                &json!([self.username, {"password": self.password}, "en"]),
                None,
            )
            .await
            .map_err(|(status, error)| match status {
                Some(401 | 403) => CallError::Refused(format!(
                    "Tryton refused the login of {}: check [erp.tryton] username and password",
                    self.username
                )),
                _ => error,
            })?;
        let user = result[0]
            .as_i64()
            .ok_or_else(|| CallError::Refused(format!("unexpected login answer {result}")))?;
        let key = result[1].as_str().unwrap_or_default();
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{user}:{key}", self.username));
        *self.session.write().await = Some(token.clone());
        Ok(token)
    }

    /// One call with the session (logging in first or again on 401).
    async fn call(&self, method: &str, params: Value) -> Result<Value, CallError> {
        // Bound first: a guard held through the `match` would deadlock
        // with the write lock `login` takes.
        let current = self.session.read().await.clone();
        let session = match current {
            Some(session) => session,
            None => self.login().await?,
        };
        match self
            .raw(&self.rpc_url, method, &params, Some(&session))
            .await
        {
            Ok(value) => Ok(value),
            Err((Some(401), _)) => {
                let session = self.login().await?;
                self.raw(&self.rpc_url, method, &params, Some(&session))
                    .await
                    .map_err(|(_, error)| error)
            }
            Err((_, error)) => Err(error),
        }
    }

    /// `model.{model}.{method}` with the company context appended.
    async fn model(
        &self,
        model: &str,
        method: &str,
        mut params: Vec<Value>,
        company: Option<i64>,
    ) -> Result<Value, CallError> {
        params.push(match company {
            Some(company) => json!({"company": company}),
            None => json!({}),
        });
        self.call(&format!("model.{model}.{method}"), Value::Array(params))
            .await
    }

    async fn search_read(
        &self,
        model: &str,
        domain: Value,
        fields: &[&str],
        company: Option<i64>,
        context_extra: Option<Value>,
    ) -> Result<Vec<Value>, CallError> {
        let mut all = Vec::new();
        let mut offset = 0;
        loop {
            let mut context = json!({});
            if let Some(company) = company {
                context["company"] = json!(company);
            }
            if let Some(Value::Object(extra)) = &context_extra {
                for (k, v) in extra {
                    context[k] = v.clone();
                }
            }
            let page = self
                .call(
                    &format!("model.{model}.search_read"),
                    json!([domain, offset, PAGE, [["id", "ASC"]], fields, context]),
                )
                .await?;
            let page = page.as_array().cloned().unwrap_or_default();
            let full = page.len() == PAGE;
            offset += page.len();
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }

    async fn find_one(&self, model: &str, domain: Value) -> Result<Option<i64>, CallError> {
        let ids = self
            .call(
                &format!("model.{model}.search"),
                json!([domain, 0, 1, [["id", "ASC"]], {}]),
            )
            .await?;
        Ok(ids
            .as_array()
            .and_then(|ids| ids.first())
            .and_then(Value::as_i64))
    }

    /// The company, currency, standard locations and parties; missing
    /// parties and the transit location are created.
    async fn refs(&self) -> Result<Refs, CallError> {
        if let Some(refs) = self.refs.read().await.clone() {
            return Ok(refs);
        }
        let preferences = self
            .call("model.res.user.get_preferences", json!([true, {}]))
            .await?;
        let company = preferences["company"].as_i64().ok_or_else(|| {
            CallError::Refused(
                "the Tryton user has no current company: set one up (scripts/tryton.sh setup)"
                    .into(),
            )
        })?;
        let companies = self
            .model(
                "company.company",
                "read",
                vec![json!([company]), json!(["currency"])],
                Some(company),
            )
            .await?;
        let currency = id_of(&companies[0]["currency"])
            .ok_or_else(|| CallError::Refused("the company has no currency".into()))?;
        let currencies = self
            .model(
                "currency.currency",
                "read",
                vec![json!([currency]), json!(["code"])],
                Some(company),
            )
            .await?;
        let currency_code = currencies[0]["code"].as_str().unwrap_or("EUR").to_owned();
        let unit = self
            .find_one("product.uom", json!([["name", "=", "Unit"]]))
            .await?
            .ok_or_else(|| CallError::Refused("Tryton has no unit of measure \"Unit\"".into()))?;
        let location = |kind: &'static str| async move {
            self.find_one("stock.location", json!([["type", "=", kind]]))
                .await?
                .ok_or_else(|| CallError::Refused(format!("Tryton has no {kind} location")))
        };
        let supplier = location("supplier").await?;
        let customer = location("customer").await?;
        let lost_found = match self
            .find_one(
                "stock.location",
                json!([["type", "=", "lost_found"], ["code", "=", "LF"]]),
            )
            .await?
        {
            Some(id) => id,
            None => location("lost_found").await?,
        };
        let transit = match self
            .find_one("stock.location", json!([["code", "=", "TRANSIT"]]))
            .await?
        {
            Some(id) => id,
            None => id_of(
                &self
                    .model(
                        "stock.location",
                        "create",
                        vec![
                            json!([{"name": "Transit between warehouses", "code": "TRANSIT",
                                      "type": "lost_found"}]),
                        ],
                        Some(company),
                    )
                    .await?[0],
            )
            .unwrap_or_default(),
        };
        let (customer_party, customer_address) = self.party("Walk-in Customer", company).await?;
        let (supplier_party, _) = self.party("Generic Supplier", company).await?;
        let refs = Refs {
            company,
            currency,
            currency_code,
            unit,
            supplier,
            customer,
            lost_found,
            transit,
            customer_party,
            customer_address,
            supplier_party,
        };
        *self.refs.write().await = Some(refs.clone());
        Ok(refs)
    }

    async fn party(&self, name: &str, company: i64) -> Result<(i64, i64), CallError> {
        let found = self
            .search_read(
                "party.party",
                json!([["name", "=", name]]),
                &["addresses"],
                Some(company),
                None,
            )
            .await?;
        let party = match found.first() {
            Some(party) => party.clone(),
            None => {
                let ids = self
                    .model(
                        "party.party",
                        "create",
                        vec![json!([{"name": name, "addresses": [["create", [{}]]]}])],
                        Some(company),
                    )
                    .await?;
                let id = id_of(&ids[0]).unwrap_or_default();
                self.model(
                    "party.party",
                    "read",
                    vec![json!([id]), json!(["addresses"])],
                    Some(company),
                )
                .await?[0]
                    .clone()
            }
        };
        let id = party["id"].as_i64().unwrap_or_default();
        let address = party["addresses"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(Value::as_i64)
            .unwrap_or_default();
        Ok((id, address))
    }

    async fn warehouse(&self, code: &str, company: i64) -> Result<Option<Warehouse>, CallError> {
        if let Some(found) = self.warehouses.read().await.get(code) {
            return Ok(Some(*found));
        }
        let rows = self
            .search_read(
                "stock.location",
                json!([["type", "=", "warehouse"], ["code", "=", code]]),
                &["input_location", "output_location", "storage_location"],
                Some(company),
                None,
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let warehouse = Warehouse {
            id: row["id"].as_i64().unwrap_or_default(),
            input: id_of(&row["input_location"]).unwrap_or_default(),
            output: id_of(&row["output_location"]).unwrap_or_default(),
            storage: id_of(&row["storage_location"]).unwrap_or_default(),
        };
        self.warehouses
            .write()
            .await
            .insert(code.to_owned(), warehouse);
        Ok(Some(warehouse))
    }

    /// Product ids (and list price) by code, for the codes asked.
    async fn products_by_code(
        &self,
        codes: &[&str],
        company: i64,
    ) -> Result<HashMap<String, (i64, String)>, CallError> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        {
            let cache = self.products.read().await;
            for code in codes {
                match cache.get(*code) {
                    Some(product) => {
                        found.insert((*code).to_owned(), product.clone());
                    }
                    None => missing.push(*code),
                }
            }
        }
        if !missing.is_empty() {
            let rows = self
                .search_read(
                    "product.product",
                    json!([["code", "in", missing]]),
                    &["code", "list_price_used"],
                    Some(company),
                    None,
                )
                .await?;
            let mut cache = self.products.write().await;
            for row in rows {
                let Some(code) = row["code"].as_str() else {
                    continue;
                };
                let price = decimal_text(&row["list_price_used"]).unwrap_or_else(|| "0".into());
                let entry = (row["id"].as_i64().unwrap_or_default(), price);
                cache.insert(code.to_owned(), entry.clone());
                found.insert(code.to_owned(), entry);
            }
        }
        Ok(found)
    }

    /// Creates warehouses (single-zone: one storage location serves as
    /// input, output and storage) for codes Tryton lacks. Returns how
    /// many were created. For setting up test and demo ERPs.
    pub async fn ensure_warehouses(
        &self,
        warehouses: &[(String, String)],
    ) -> Result<usize, ErpError> {
        let refs = self.refs().await?;
        let mut created = 0;
        for (code, name) in warehouses {
            if self.warehouse(code, refs.company).await?.is_some() {
                continue;
            }
            let storage = self
                .model(
                    "stock.location",
                    "create",
                    vec![
                        json!([{"name": format!("{name} storage"), "code": format!("{code}-STO"),
                                  "type": "storage"}]),
                    ],
                    Some(refs.company),
                )
                .await?;
            let storage = id_of(&storage[0]).unwrap_or_default();
            self.model(
                "stock.location",
                "create",
                vec![json!([{"name": name, "code": code, "type": "warehouse",
                              "storage_location": storage, "input_location": storage,
                              "output_location": storage}])],
                Some(refs.company),
            )
            .await?;
            created += 1;
        }
        Ok(created)
    }

    /// Creates goods products (code, name, cost) Tryton lacks. Returns how
    /// many were created. For setting up test and demo ERPs.
    pub async fn ensure_products(
        &self,
        products: &[(String, String, String)],
    ) -> Result<usize, ErpError> {
        let refs = self.refs().await?;
        let codes: Vec<&str> = products.iter().map(|p| p.0.as_str()).collect();
        let existing = self.products_by_code(&codes, refs.company).await?;
        let missing: Vec<&(String, String, String)> = products
            .iter()
            .filter(|p| !existing.contains_key(&p.0))
            .collect();
        for chunk in missing.chunks(PRODUCTS_PER_CALL) {
            let templates: Vec<Value> = chunk
                .iter()
                .map(|(code, name, cost)| {
                    json!({"name": name, "type": "goods", "default_uom": refs.unit,
                           "list_price": decimal(cost),
                           "products": [["create", [{"suffix_code": code, "cost_price": decimal(cost)}]]]})
                })
                .collect();
            self.model(
                "product.template",
                "create",
                vec![json!(templates)],
                Some(refs.company),
            )
            .await?;
        }
        Ok(missing.len())
    }

    /// Changes Tryton's stock by hand, as an ERP user would (a
    /// lost-and-found shipment the platform never sent, reference
    /// `retail:erp-manual:…`): what reconciliation is there to find.
    pub async fn correct_stock(
        &self,
        location_id: &str,
        sku: &str,
        delta: i64,
    ) -> Result<(), ErpError> {
        let posting = Posting {
            posting_id: 0,
            event_id: format!("erp-manual:{}", uuid::Uuid::new_v4()),
            kind: "adjustment".into(),
            location_id: location_id.into(),
            sku: sku.into(),
            quantity: delta,
            unit_cost: None,
            currency: None,
            occurred_at: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            counterparty_location_id: None,
            reason: Some("manual correction".into()),
        };
        match self.post(std::slice::from_ref(&posting)).await?.first() {
            Some(result) if result.status == PostingStatus::Posted => Ok(()),
            other => Err(ErpError::Refused(format!(
                "correction not posted: {other:?}"
            ))),
        }
    }

    /// The platform's moves at a warehouse in creation order: (move id,
    /// product code, shipment reference, signed quantity). For checks of
    /// order and uniqueness.
    pub async fn moves_at(
        &self,
        location_id: &str,
    ) -> Result<Vec<(i64, String, String, i64)>, ErpError> {
        let refs = self.refs().await?;
        let Some(warehouse) = self.warehouse(location_id, refs.company).await? else {
            return Ok(Vec::new());
        };
        let models = [
            Model::In,
            Model::OutReturn,
            Model::Internal,
            Model::Out,
            Model::InReturn,
        ];
        let mut by_shipment = vec![json!("OR")];
        for model in models {
            by_shipment.push(json!([
                "shipment.reference",
                "like",
                format!("{REFERENCE_PREFIX}%"),
                model.name()
            ]));
        }
        let rows = self
            .search_read(
                "stock.move",
                json!([
                    [
                        "OR",
                        ["from_location", "child_of", [warehouse.id], "parent"],
                        ["to_location", "child_of", [warehouse.id], "parent"]
                    ],
                    by_shipment
                ]),
                &[
                    "product.code",
                    "shipment.reference",
                    "quantity",
                    "to_location",
                ],
                Some(refs.company),
                None,
            )
            .await?;
        let inside = [warehouse.input, warehouse.output, warehouse.storage];
        #[expect(clippy::cast_possible_truncation, reason = "whole units")]
        let moves = rows
            .into_iter()
            .filter_map(|row| {
                let quantity = row["quantity"].as_f64()?.round() as i64;
                let incoming = id_of(&row["to_location"]).is_some_and(|to| inside.contains(&to));
                Some((
                    row["id"].as_i64()?,
                    row["product."]["code"].as_str()?.to_owned(),
                    row["shipment."]["reference"].as_str()?.to_owned(),
                    if incoming { quantity } else { -quantity },
                ))
            })
            .collect();
        Ok(moves)
    }

    /// Where a posting's move goes: (model, from, to, priced).
    fn route(
        &self,
        posting: &Posting,
        refs: &Refs,
        warehouse: &Warehouse,
    ) -> (Model, i64, i64, bool) {
        let incoming = posting.quantity > 0;
        match (posting.kind.as_str(), incoming) {
            ("receipt", true) => (Model::In, refs.supplier, warehouse.input, true),
            ("return", true) => (Model::OutReturn, refs.customer, warehouse.input, true),
            ("sale", false) => (Model::Out, warehouse.output, refs.customer, true),
            ("write_off", false) if posting.reason.as_deref() == Some("return_to_vendor") => {
                (Model::InReturn, warehouse.storage, refs.supplier, true)
            }
            ("transfer_out", false) => (Model::Internal, warehouse.storage, refs.transit, false),
            ("transfer_in", true) => (Model::Internal, refs.transit, warehouse.storage, false),
            (_, true) => (Model::Internal, refs.lost_found, warehouse.storage, false),
            (_, false) => (Model::Internal, warehouse.storage, refs.lost_found, false),
        }
    }

    fn shipment_values(
        (model, from, to, priced): (Model, i64, i64, bool),
        posting: &Posting,
        refs: &Refs,
        warehouse: &Warehouse,
        product: &(i64, String),
    ) -> Value {
        let mut mv = json!({
            "product": product.0, "unit": refs.unit,
            "quantity": posting.quantity.unsigned_abs(),
            "from_location": from, "to_location": to,
        });
        if priced {
            // Valuation: the platform's unit cost where it has one.
            let price = posting
                .unit_cost
                .clone()
                .unwrap_or_else(|| product.1.clone());
            mv["unit_price"] = decimal(&price);
            mv["currency"] = json!(refs.currency);
        }
        let mut shipment = json!({
            "reference": format!("{REFERENCE_PREFIX}{}", posting.event_id),
            "effective_date": date(&posting.occurred_at),
            "moves": [["create", [mv]]],
        });
        match model {
            Model::In => {
                shipment["supplier"] = json!(refs.supplier_party);
                shipment["warehouse"] = json!(warehouse.id);
                shipment["warehouse_input"] = json!(warehouse.input);
                shipment["warehouse_storage"] = json!(warehouse.storage);
            }
            Model::OutReturn => {
                shipment["customer"] = json!(refs.customer_party);
                shipment["warehouse"] = json!(warehouse.id);
                shipment["warehouse_input"] = json!(warehouse.input);
                shipment["warehouse_storage"] = json!(warehouse.storage);
            }
            Model::Out => {
                shipment["customer"] = json!(refs.customer_party);
                shipment["delivery_address"] = json!(refs.customer_address);
                shipment["warehouse"] = json!(warehouse.id);
                shipment["warehouse_output"] = json!(warehouse.output);
                shipment["warehouse_storage"] = json!(warehouse.storage);
            }
            Model::InReturn => {
                shipment["supplier"] = json!(refs.supplier_party);
                shipment["from_location"] = json!(from);
                shipment["to_location"] = json!(to);
            }
            Model::Internal => {
                shipment["from_location"] = json!(from);
                shipment["to_location"] = json!(to);
            }
        }
        shipment
    }

    /// Reads the state of shipments `ids` into `state` (by reference).
    async fn refresh(
        &self,
        model: Model,
        ids: &[i64],
        state: &mut HashMap<String, (i64, String)>,
        company: i64,
    ) -> Result<(), CallError> {
        let rows = self
            .model(
                model.name(),
                "read",
                vec![json!(ids), json!(["reference", "state"])],
                Some(company),
            )
            .await?;
        for row in rows.as_array().cloned().unwrap_or_default() {
            if let (Some(reference), Some(id)) = (row["reference"].as_str(), row["id"].as_i64()) {
                let status = row["state"].as_str().unwrap_or_default().to_owned();
                state.insert(reference.to_owned(), (id, status));
            }
        }
        Ok(())
    }

    /// Creates (or finds) and completes the shipments of one group (one
    /// model, distinct keys). Returns the shipment id per event id.
    async fn post_group(
        &self,
        model: Model,
        group: &[(&Posting, Value, bool)],
        company: i64,
    ) -> Result<HashMap<String, (i64, bool)>, CallError> {
        let references: Vec<String> = group
            .iter()
            .map(|(p, _, _)| format!("{REFERENCE_PREFIX}{}", p.event_id))
            .collect();
        let existing = self
            .search_read(
                model.name(),
                json!([["reference", "in", references]]),
                &["reference", "state"],
                Some(company),
                None,
            )
            .await?;
        // reference → (id, state)
        let mut state: HashMap<String, (i64, String)> = HashMap::new();
        for row in existing {
            if let (Some(reference), Some(id)) = (row["reference"].as_str(), row["id"].as_i64()) {
                let status = row["state"].as_str().unwrap_or_default().to_owned();
                // A cancelled leftover does not count; anything else does.
                if status != "cancelled" {
                    state.insert(reference.to_owned(), (id, status));
                }
            }
        }
        let already_done: HashSet<String> = state
            .iter()
            .filter(|(_, (_, s))| s == "done")
            .map(|(r, _)| r.clone())
            .collect();
        let to_create: Vec<(&String, &Value)> = references
            .iter()
            .zip(group)
            .filter(|(reference, _)| !state.contains_key(*reference))
            .map(|(reference, (_, values, _))| (reference, values))
            .collect();
        if !to_create.is_empty() {
            let values: Vec<Value> = to_create.iter().map(|(_, v)| (*v).clone()).collect();
            let ids = self
                .model(
                    model.name(),
                    "create",
                    vec![Value::Array(values)],
                    Some(company),
                )
                .await?;
            for ((reference, _), id) in to_create
                .iter()
                .zip(ids.as_array().cloned().unwrap_or_default())
            {
                state.insert(
                    (*reference).clone(),
                    (id.as_i64().unwrap_or_default(), "draft".into()),
                );
            }
        }
        // Single- and multi-zone warehouses take different steps. The
        // first pass trusts each successful step to move its shipments on
        // (one call per step, no reads); one read checks the outcome, and
        // a second pass reads after every step should anything lag.
        for pass in 0..2 {
            for single_zone in [true, false] {
                let members: Vec<&String> = references
                    .iter()
                    .zip(group)
                    .filter(|(_, (_, _, single))| *single == single_zone)
                    .map(|(r, _)| r)
                    .collect();
                for (step, from_states, next_state) in model.steps(single_zone) {
                    let chosen: Vec<(&String, i64)> = members
                        .iter()
                        .filter_map(|r| state.get(*r).map(|entry| (*r, entry)))
                        .filter(|(_, (_, s))| from_states.contains(&s.as_str()))
                        .map(|(r, (id, _))| (r, *id))
                        .collect();
                    if chosen.is_empty() {
                        continue;
                    }
                    let ids: Vec<i64> = chosen.iter().map(|(_, id)| *id).collect();
                    self.model(model.name(), step, vec![json!(ids)], Some(company))
                        .await?;
                    if pass == 0 {
                        for (reference, id) in chosen {
                            state.insert(reference.clone(), (id, next_state.to_owned()));
                        }
                    } else {
                        self.refresh(model, &ids, &mut state, company).await?;
                    }
                }
            }
            let ids: Vec<i64> = state.values().map(|(id, _)| *id).collect();
            self.refresh(model, &ids, &mut state, company).await?;
            if state.values().all(|(_, s)| s == "done") {
                break;
            }
        }
        let mut out = HashMap::new();
        for (reference, (id, status)) in &state {
            if status != "done" {
                return Err(CallError::Refused(format!(
                    "shipment {reference} ended in state {status}, not done"
                )));
            }
            let event_id = reference.trim_start_matches(REFERENCE_PREFIX).to_owned();
            out.insert(event_id, (*id, already_done.contains(reference)));
        }
        Ok(out)
    }
}

/// A posting's result from its group's shipments (by event id).
fn outcome(model: Model, posting: &Posting, done: &HashMap<String, (i64, bool)>) -> PostingResult {
    match done.get(&posting.event_id) {
        Some((id, duplicate)) => PostingResult {
            erp_ref: Some(format!("{}:{id}", model.name())),
            ..PostingResult::new(
                posting.posting_id,
                if *duplicate {
                    PostingStatus::Duplicate
                } else {
                    PostingStatus::Posted
                },
            )
        },
        None => PostingResult::failed(posting.posting_id, true, "not found after posting"),
    }
}

#[async_trait]
impl Erp for TrytonErp {
    fn backend(&self) -> &'static str {
        "tryton"
    }

    async fn health(&self) -> Result<(), String> {
        self.raw(
            &self.root_rpc_url,
            "common.server.version",
            &json!([]),
            None,
        )
        .await
        .map(|_| ())
        .map_err(|(_, error)| format!("{error:?}"))
    }

    async fn post(&self, postings: &[Posting]) -> Result<Vec<PostingResult>, ErpError> {
        let _writer = self.writer.lock().await;
        let refs = self.refs().await?;
        let mut results: HashMap<i64, PostingResult> = HashMap::new();
        let mut gate = KeyGate::default();
        // Waves: the n-th posting of each key goes in wave n.
        let mut waves: Vec<Vec<&Posting>> = Vec::new();
        let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
        for posting in postings {
            let n = seen.entry(posting.key()).or_insert(0);
            if waves.len() <= *n {
                waves.push(Vec::new());
            }
            waves[*n].push(posting);
            *n += 1;
        }
        let codes: Vec<&str> = postings.iter().map(|p| p.sku.as_str()).collect();
        let products = self.products_by_code(&codes, refs.company).await?;
        for wave in waves {
            let mut groups: BTreeMap<Model, Vec<(&Posting, Value, bool)>> = BTreeMap::new();
            for posting in wave {
                if let Some(skipped) = gate.check(posting) {
                    results.insert(posting.posting_id, skipped);
                    continue;
                }
                let warehouse = self.warehouse(&posting.location_id, refs.company).await?;
                let (Some(warehouse), Some(product)) = (warehouse, products.get(&posting.sku))
                else {
                    let missing = if warehouse.is_none() {
                        format!("Tryton has no warehouse with code {}", posting.location_id)
                    } else {
                        format!("Tryton has no product with code {}", posting.sku)
                    };
                    let result = PostingResult::failed(posting.posting_id, false, missing);
                    gate.note(posting, &result);
                    results.insert(posting.posting_id, result);
                    continue;
                };
                let route = self.route(posting, &refs, &warehouse);
                let model = route.0;
                let values = Self::shipment_values(route, posting, &refs, &warehouse, product);
                let single_zone =
                    warehouse.input == warehouse.storage && warehouse.output == warehouse.storage;
                groups
                    .entry(model)
                    .or_default()
                    .push((posting, values, single_zone));
            }
            for (model, group) in groups {
                let singly = match self.post_group(model, &group, refs.company).await {
                    Ok(done) => {
                        for (posting, _, _) in &group {
                            let result = outcome(model, posting, &done);
                            gate.note(posting, &result);
                            results.insert(posting.posting_id, result);
                        }
                        continue;
                    }
                    Err(CallError::Unavailable(detail)) => {
                        return Err(ErpError::Unavailable(detail));
                    }
                    Err(CallError::Refused(detail)) => detail,
                };
                if group.len() > 1 {
                    // Find the posting at fault: one at a time.
                    tracing::warn!(detail = %singly, model = model.name(), "Tryton refused a group; posting singly");
                }
                for entry in &group {
                    let posting = entry.0;
                    let result = if group.len() == 1 {
                        PostingResult::failed(posting.posting_id, false, singly.clone())
                    } else {
                        match self
                            .post_group(model, std::slice::from_ref(entry), refs.company)
                            .await
                        {
                            Ok(done) => outcome(model, posting, &done),
                            Err(CallError::Unavailable(detail)) => {
                                return Err(ErpError::Unavailable(detail));
                            }
                            Err(CallError::Refused(detail)) => {
                                PostingResult::failed(posting.posting_id, false, detail)
                            }
                        }
                    };
                    gate.note(posting, &result);
                    results.insert(posting.posting_id, result);
                }
            }
        }
        Ok(postings
            .iter()
            .map(|p| {
                results
                    .remove(&p.posting_id)
                    .unwrap_or_else(|| PostingResult::new(p.posting_id, PostingStatus::Skipped))
            })
            .collect())
    }

    async fn balances(&self, location_id: &str) -> Result<Option<Vec<ErpBalance>>, ErpError> {
        let refs = self.refs().await?;
        let Some(warehouse) = self.warehouse(location_id, refs.company).await? else {
            return Ok(None);
        };
        let rows = self
            .search_read(
                "product.product",
                json!([["quantity", "!=", 0]]),
                &["code", "quantity"],
                Some(refs.company),
                Some(json!({"locations": [warehouse.id]})),
            )
            .await?;
        #[expect(clippy::cast_possible_truncation, reason = "whole units")]
        let balances = rows
            .into_iter()
            .filter_map(|row| {
                Some(ErpBalance {
                    location_id: location_id.to_owned(),
                    sku: row["code"].as_str()?.to_owned(),
                    quantity: row["quantity"].as_f64()?.round() as i64,
                })
            })
            .collect();
        Ok(Some(balances))
    }

    async fn master(&self) -> Result<ErpMaster, ErpError> {
        let refs = self.refs().await?;
        let locations = self
            .search_read(
                "stock.location",
                json!([["type", "=", "warehouse"], ["code", "!=", null]]),
                &["code", "name"],
                Some(refs.company),
                None,
            )
            .await?
            .into_iter()
            .filter_map(|row| {
                Some(ErpLocation {
                    location_id: row["code"].as_str()?.to_owned(),
                    name: row["name"].as_str().unwrap_or_default().to_owned(),
                })
            })
            .collect();
        let products = self
            .search_read(
                "product.product",
                json!([["code", "!=", null]]),
                &["code", "cost_price", "template.name"],
                Some(refs.company),
                None,
            )
            .await?
            .into_iter()
            .filter_map(|row| {
                Some(ErpProduct {
                    sku: row["code"].as_str()?.to_owned(),
                    name: row["template."]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    unit_cost: decimal_text(&row["cost_price"]),
                    currency: Some(refs.currency_code.clone()),
                })
            })
            .collect();
        Ok(ErpMaster {
            locations,
            products,
        })
    }
}
