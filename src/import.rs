//! `retail-platform import pos FILE`: uploads a nightly POS CSV batch to
//! system-api in pieces, with a progress bar.
//!
//! Event ids number a transaction's rows in file order, so the file is
//! grouped by transaction first and every piece holds whole transactions:
//! the ids are exactly those of a single upload of the whole file, and
//! importing the file again changes nothing. Failed rows are reported with
//! their row numbers in the original file.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use system_api::adapters::pos::csv::RecordSplitter;

/// A record and its row number in the file (the header is row 1).
type Row = (u64, Vec<String>);

fn quote(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

fn csv_line(fields: &[String]) -> String {
    let mut line = fields
        .iter()
        .map(|f| quote(f))
        .collect::<Vec<_>>()
        .join(",");
    line.push('\n');
    line
}

/// Reads `file` into its header and transactions (rows grouped by store,
/// terminal and transaction, in order of first appearance).
fn group(file: &Path) -> anyhow::Result<(Vec<String>, Vec<Vec<Row>>, u64)> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut records = Vec::new();
    let mut splitter = RecordSplitter::default();
    // The same bounds as system-api's: a row it would refuse stops the
    // import before anything is uploaded.
    splitter
        .feed(&bytes, |r| records.push(r))
        .and_then(|()| splitter.feed(&[], |r| records.push(r)))
        .with_context(|| format!("{} cannot be imported", file.display()))?;
    let mut records = records.into_iter();
    let header = records.next().context("the file is empty")?;
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h.trim() == name)
            .with_context(|| format!("the header has no `{name}` column"))
    };
    let ids = [
        column("store_id")?,
        column("terminal_id")?,
        column("transaction_id")?,
    ];
    let mut order: Vec<Vec<Row>> = Vec::new();
    let mut index: HashMap<Vec<String>, usize> = HashMap::new();
    let mut rows = 0;
    for (offset, record) in records.enumerate() {
        if record.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        rows += 1;
        let key: Vec<String> = ids
            .iter()
            .map(|&i| record.get(i).map_or("", |f| f.trim()).to_owned())
            .collect();
        let slot = *index.entry(key).or_insert_with(|| {
            order.push(Vec::new());
            order.len() - 1
        });
        order[slot].push((offset as u64 + 2, record));
    }
    Ok((header, order, rows))
}

/// Runs the import; returns whether every row applied (or had before).
pub async fn import_pos(
    file: &Path,
    system_url: &str,
    token: &str,
    rows_per_upload: usize,
) -> anyhow::Result<bool> {
    let (header, transactions, total) = group(file)?;
    let progress = ProgressBar::new(total);
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let http = reqwest::Client::new();
    let url = format!("{}/v1/pos/batches", system_url.trim_end_matches('/'));
    let mut totals: HashMap<&str, u64> = HashMap::new();
    let mut failures: Vec<(u64, String, String)> = Vec::new();
    let mut transactions = transactions.into_iter().peekable();
    while transactions.peek().is_some() {
        let mut piece: Vec<Row> = Vec::new();
        while piece.len() < rows_per_upload.max(1)
            && let Some(rows) = transactions.next()
        {
            piece.extend(rows);
        }
        let mut body = csv_line(&header);
        for (_, record) in &piece {
            body.push_str(&csv_line(record));
        }
        let response = http
            .post(&url)
            .bearer_auth(token)
            .header("content-type", "text/csv")
            .body(body)
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let status = response.status();
        let answer: Value = response.json().await.context("the answer is not JSON")?;
        if !status.is_success() {
            progress.abandon();
            bail!("system-api answered {status}: {answer}");
        }
        for field in ["applied", "duplicate", "parked", "rejected"] {
            *totals.entry(field).or_default() += answer[field].as_u64().unwrap_or(0);
        }
        for failure in answer["failures"].as_array().into_iter().flatten() {
            // Piece row r (header = 1) is piece[r - 2].
            let row = failure["row"]
                .as_u64()
                .and_then(|r| usize::try_from(r).ok())
                .and_then(|r| r.checked_sub(2))
                .and_then(|i| piece.get(i))
                .map_or(0, |(row, _)| *row);
            failures.push((
                row,
                failure["status"].as_str().unwrap_or_default().to_owned(),
                failure["reason"].as_str().unwrap_or_default().to_owned(),
            ));
        }
        progress.inc(piece.len() as u64);
    }
    progress.finish();
    failures.sort();
    println!(
        "{total} rows: {} applied, {} already applied, {} parked, {} rejected",
        totals.get("applied").unwrap_or(&0),
        totals.get("duplicate").unwrap_or(&0),
        totals.get("parked").unwrap_or(&0),
        totals.get("rejected").unwrap_or(&0),
    );
    for (row, status, reason) in failures.iter().take(50) {
        println!("row {row}: {status}: {reason}");
    }
    if failures.len() > 50 {
        println!("… and {} more", failures.len() - 50);
    }
    Ok(failures.iter().all(|(_, status, _)| status == "parked"))
}
