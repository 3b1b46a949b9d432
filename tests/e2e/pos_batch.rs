//! The nightly POS CSV batch: per-row outcomes, re-upload changes nothing,
//! bad headers and media types are problems.

use serde_json::Value;

use crate::helpers::{Layer, TestApp, problem};

const FILE: &str = "store_id,terminal_id,transaction_id,occurred_at,sku,quantity,kind,note
S001,T1,100,2026-11-27T10:00:00Z,SKU-000001,2,sale,\"first, basket\"
S001,T1,101,2026-11-27T10:05:00Z,SKU-000001,1,sale,
S001,T1,100,2026-11-27T10:00:00Z,SKU-000002,1,return,
S001,T1,102,2026-11-27T10:06:00Z,SKU-000001,0,sale,zero
S002,T9,1,2026-11-27T10:07:00Z,SKU-000001,1,sale,other store
S001,T1,103,2026-11-27T10:08:00Z,SKU-NOPE,1,sale,unknown sku
";

async fn upload(app: &TestApp, token: &str, content_type: &str, body: &str) -> reqwest::Response {
    app.http
        .post(app.url(Layer::System, "/v1/pos/batches"))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .expect("sent")
}

async fn on_hand(app: &TestApp, sku: &str) -> i64 {
    let token = app.token(Layer::Process, "inventory:read");
    let body: Value = app
        .get(
            Layer::Process,
            &format!("/v1/inventory/positions?sku={sku}&location_id=S001"),
            Some(&token),
        )
        .await
        .json()
        .await
        .expect("json");
    body["positions"][0]["on_hand"].as_i64().unwrap_or(0)
}

#[tokio::test]
async fn a_csv_batch_reports_each_row_and_applies_once() {
    let app = TestApp::spawn().await;
    let till = app.token_for(Layer::System, "back-office", "pos:write", Some(&["S001"]));
    let response = upload(&app, &till, "text/csv", FILE).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["rows"], 6, "{body}");
    assert_eq!(body["applied"], 3);
    assert_eq!(body["parked"], 1);
    assert_eq!(body["rejected"], 2);
    let failures: Vec<(u64, String)> = body["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .map(|f| {
            (
                f["row"].as_u64().unwrap_or(0),
                f["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        failures,
        [
            (5, "rejected".to_owned()),
            (6, "forbidden".to_owned()),
            (7, "parked".to_owned())
        ]
    );
    assert_eq!(on_hand(&app, "SKU-000001").await, -3);
    assert_eq!(on_hand(&app, "SKU-000002").await, 1);

    // The same file again: everything already applied, nothing changes.
    let again: Value = upload(&app, &till, "text/csv", FILE)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(again["applied"], 0, "{again}");
    assert_eq!(again["duplicate"], 4);
    assert_eq!(on_hand(&app, "SKU-000001").await, -3);

    // A missing column or an empty file: 422, nothing sent; not CSV: 415.
    let no_kind = FILE.replace(",kind,", ",type,");
    problem(upload(&app, &till, "text/csv", &no_kind).await, 422).await;
    problem(upload(&app, &till, "text/csv", "").await, 422).await;
    problem(upload(&app, &till, "application/json", FILE).await, 415).await;
    assert_eq!(on_hand(&app, "SKU-000001").await, -3);
}

#[tokio::test]
async fn a_row_over_the_bounds_is_a_422_naming_it() {
    let app = TestApp::spawn().await;
    let till = app.token_for(Layer::System, "back-office", "pos:write", Some(&["S001"]));
    let valid = "S001,T1,200,2026-11-27T11:00:00Z,SKU-000001,1,sale,\n";
    for (bad, bound) in [
        (",".repeat(100_000), "fields"),
        (format!("S001,T1,201,{}", "x".repeat(100_000)), "bytes"),
    ] {
        let body = format!("{FILE}{bad}\n{valid}");

        let refused = problem(upload(&app, &till, "text/csv", &body).await, 422).await;

        assert_eq!(refused["errors"][0]["pointer"], "/rows/8", "{refused}");
        assert_eq!(
            (refused["row"].as_u64(), refused["line"].as_u64()),
            (Some(8), Some(8))
        );
        assert!(
            refused["detail"]
                .as_str()
                .is_some_and(|d| d.contains(bound)),
            "{refused}"
        );
        // Reading stopped at the row: the rows before it were still
        // pending (under a batch of 1000), so nothing was sent.
        assert_eq!(on_hand(&app, "SKU-000001").await, 0);
    }
}

#[tokio::test]
async fn the_import_command_uploads_whole_transactions_in_pieces() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("batch.csv");
    std::fs::write(&file, FILE).expect("write");
    let token = app.token(Layer::System, "pos:write");
    // Unbound token: the S002 row applies too (4 applied, at S001 −3).
    // One row per piece: transaction 100's two rows must still travel
    // together, or their ids would differ from a whole-file upload.
    let clean = retail_platform::import::import_pos(&file, &app.url(Layer::System, ""), &token, 1)
        .await
        .expect("import runs");
    assert!(!clean, "row 5 is invalid");
    assert_eq!(on_hand(&app, "SKU-000001").await, -3);
    assert_eq!(on_hand(&app, "SKU-000002").await, 1);
    // A whole-file upload afterwards finds every event already applied.
    let whole: Value = upload(&app, &token, "text/csv", FILE)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(whole["applied"], 0, "{whole}");
    assert_eq!(on_hand(&app, "SKU-000001").await, -3);
}
