//! ARTS POSLog XML (the NRF retail standard) → POS transactions.
//!
//! Read: every `Transaction` with a `RetailTransaction`, its
//! `RetailStoreID`, `WorkstationID`, `SequenceNumber`, `EndDateTime` (else
//! `BusinessDayDate` at midnight) and its `LineItem`s holding a `Sale` or a
//! `Return` with `ItemID` and `Quantity`. Skipped and counted: transactions
//! with `CancelFlag="true"` or `TrainingModeFlag="true"`, retail
//! transactions whose `TransactionStatus` is voided or cancelled, and line
//! items with `VoidFlag="true"`. Namespaces and prefixes are ignored (names
//! match on their local part). A date-time without an offset is taken as
//! UTC. Quantities must be whole units (`2` or `2.000`).
//!
//! Malformed XML, or a transaction missing what it needs, fails the whole
//! document with the line and column where it went wrong: nothing is sent.

use quick_xml::Reader;
use quick_xml::events::Event;

use super::{LineKind, PosLine, PosTransaction};

/// Where in the document something went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (bytes).
    pub column: usize,
    /// What.
    pub message: String,
}

impl std::fmt::Display for XmlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

/// A parsed document.
#[derive(Debug, Clone, Default)]
pub struct PosLog {
    /// The transactions to apply.
    pub transactions: Vec<PosTransaction>,
    /// Voided, cancelled or training transactions skipped.
    pub skipped_transactions: usize,
    /// Voided line items skipped.
    pub skipped_lines: usize,
}

fn locate(input: &str, offset: u64, message: impl Into<String>) -> XmlError {
    let offset = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(input.len());
    let before = &input.as_bytes()[..offset];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = offset
        - before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |p| p + 1)
        + 1;
    XmlError {
        line,
        column,
        message: message.into(),
    }
}

/// A transaction being read.
#[derive(Debug, Default)]
struct Draft {
    start: u64,
    store: Option<String>,
    workstation: Option<String>,
    sequence: Option<String>,
    end_date_time: Option<String>,
    business_day: Option<String>,
    retail: bool,
    skip: bool,
    lines: Vec<PosLine>,
}

/// A line item being read.
#[derive(Debug, Default)]
struct LineDraft {
    start: u64,
    void: bool,
    kind: Option<LineKind>,
    item: Option<String>,
    quantity: Option<String>,
}

fn truthy(value: &str) -> bool {
    matches!(value.trim(), "true" | "1" | "True" | "TRUE")
}

fn local(name: &str) -> String {
    name.to_owned()
}

/// `2026-11-27T10:15:00[.sss][Z|±hh:mm]` → RFC 3339 (UTC when no offset).
fn rfc3339(value: &str) -> Option<String> {
    use time::format_description::well_known::Rfc3339;
    let value = value.trim();
    if time::OffsetDateTime::parse(value, &Rfc3339).is_ok() {
        return Some(value.to_owned());
    }
    let with_utc = format!("{value}Z");
    time::OffsetDateTime::parse(&with_utc, &Rfc3339)
        .ok()
        .map(|_| with_utc)
}

fn whole_units(value: &str) -> Option<i64> {
    let value = value.trim();
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    if !fraction.bytes().all(|b| b == b'0') {
        return None;
    }
    whole.parse().ok()
}

/// Parses a POSLog document.
pub fn parse(input: &str) -> Result<PosLog, XmlError> {
    let mut reader = Reader::from_str(input);
    reader.config_mut().trim_text(true);
    let mut log = PosLog::default();
    let mut path: Vec<String> = Vec::new();
    let mut transaction: Option<Draft> = None;
    let mut line: Option<LineDraft> = None;
    let mut text = String::new();
    let mut saw_root = false;
    loop {
        let position = reader.buffer_position();
        let event = reader.read_event().map_err(|e| {
            locate(
                input,
                reader.error_position(),
                format!("malformed XML: {e}"),
            )
        })?;
        match event {
            Event::Start(start) => {
                let name = local(start.local_name().as_ref());
                if path.is_empty() {
                    if name != "POSLog" {
                        return Err(locate(
                            input,
                            position,
                            format!("the root element is `{name}`, not `POSLog`"),
                        ));
                    }
                    saw_root = true;
                }
                let mut flags = Vec::new();
                for attribute in start.attributes() {
                    let attribute = attribute.map_err(|e| {
                        locate(input, position, format!("malformed attribute: {e}"))
                    })?;
                    let key = local(attribute.key.local_name().as_ref());
                    let value = attribute
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .map_err(|e| locate(input, position, format!("bad attribute value: {e}")))?
                        .into_owned();
                    flags.push((key, value));
                }
                let flag = |wanted: &str| {
                    flags
                        .iter()
                        .any(|(key, value)| key == wanted && truthy(value))
                };
                match name.as_str() {
                    "Transaction" if path.last().is_some_and(|p| p == "POSLog") => {
                        transaction = Some(Draft {
                            start: position,
                            skip: flag("CancelFlag") || flag("TrainingModeFlag"),
                            ..Draft::default()
                        });
                    }
                    "RetailTransaction" => {
                        if let Some(draft) = transaction.as_mut() {
                            draft.retail = true;
                            if flags.iter().any(|(key, value)| {
                                key == "TransactionStatus"
                                    && matches!(
                                        value.to_ascii_lowercase().as_str(),
                                        "voided" | "void" | "cancelled" | "canceled"
                                    )
                            }) {
                                draft.skip = true;
                            }
                        }
                    }
                    "LineItem" if transaction.is_some() => {
                        line = Some(LineDraft {
                            start: position,
                            void: flag("VoidFlag"),
                            ..LineDraft::default()
                        });
                    }
                    "Sale" if line.is_some() && path.last().is_some_and(|p| p == "LineItem") => {
                        if let Some(l) = line.as_mut() {
                            l.kind = Some(LineKind::Sale);
                        }
                    }
                    "Return" if line.is_some() && path.last().is_some_and(|p| p == "LineItem") => {
                        if let Some(l) = line.as_mut() {
                            l.kind = Some(LineKind::Return);
                        }
                    }
                    _ => {}
                }
                path.push(name);
                text.clear();
            }
            Event::Text(content) => text.push_str(&content.into_inner()),
            Event::CData(content) => text.push_str(&content.into_inner()),
            Event::GeneralRef(reference) => {
                let resolved = match reference
                    .resolve_char_ref()
                    .map_err(|e| locate(input, position, format!("bad character reference: {e}")))?
                {
                    Some(c) => c.to_string(),
                    None => match reference.into_inner().as_ref() {
                        "amp" => "&".into(),
                        "lt" => "<".into(),
                        "gt" => ">".into(),
                        "quot" => "\"".into(),
                        "apos" => "'".into(),
                        other => {
                            return Err(locate(
                                input,
                                position,
                                format!("unknown entity `&{other};`"),
                            ));
                        }
                    },
                };
                text.push_str(&resolved);
            }
            Event::End(_) => {
                let name = path.pop().unwrap_or_default();
                let value = std::mem::take(&mut text).trim().to_owned();
                let parent = path.last().map(String::as_str);
                match name.as_str() {
                    "RetailStoreID" | "WorkstationID" | "SequenceNumber" | "EndDateTime"
                    | "BusinessDayDate"
                        if parent == Some("Transaction") =>
                    {
                        if let Some(draft) = transaction.as_mut() {
                            let slot = match name.as_str() {
                                "RetailStoreID" => &mut draft.store,
                                "WorkstationID" => &mut draft.workstation,
                                "SequenceNumber" => &mut draft.sequence,
                                "EndDateTime" => &mut draft.end_date_time,
                                _ => &mut draft.business_day,
                            };
                            *slot = Some(value);
                        }
                    }
                    "ItemID" if line.as_ref().is_some_and(|l| l.kind.is_some()) => {
                        if let Some(l) = line.as_mut() {
                            l.item = Some(value);
                        }
                    }
                    "Quantity" if line.as_ref().is_some_and(|l| l.kind.is_some()) => {
                        if let Some(l) = line.as_mut() {
                            l.quantity = Some(value);
                        }
                    }
                    "LineItem" => {
                        if let (Some(l), Some(draft)) = (line.take(), transaction.as_mut()) {
                            if l.void {
                                log.skipped_lines += 1;
                            } else if let Some(kind) = l.kind {
                                let sku = l.item.ok_or_else(|| {
                                    locate(input, l.start, "a line item has no ItemID")
                                })?;
                                let quantity = match l.quantity {
                                    None => 1,
                                    Some(q) => whole_units(&q).ok_or_else(|| {
                                        locate(
                                            input,
                                            l.start,
                                            format!("Quantity `{q}` is not a whole number"),
                                        )
                                    })?,
                                };
                                draft.lines.push(PosLine {
                                    sku,
                                    quantity,
                                    kind,
                                });
                            }
                        }
                    }
                    "Transaction" if path.last().is_some_and(|p| p == "POSLog") => {
                        if let Some(draft) = transaction.take() {
                            if draft.skip {
                                log.skipped_transactions += 1;
                            } else if draft.retail && !draft.lines.is_empty() {
                                log.transactions.push(finish(input, draft)?);
                            }
                        }
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !saw_root {
        return Err(locate(input, 0, "no POSLog element"));
    }
    if !path.is_empty() {
        return Err(locate(
            input,
            input.len() as u64,
            format!("the document ends inside `{}`", path.join("/")),
        ));
    }
    Ok(log)
}

fn finish(input: &str, draft: Draft) -> Result<PosTransaction, XmlError> {
    let need = |value: Option<String>, what: &str| {
        value
            .filter(|v| !v.is_empty())
            .ok_or_else(|| locate(input, draft.start, format!("a transaction has no {what}")))
    };
    let store_id = need(draft.store.clone(), "RetailStoreID")?;
    let terminal_id = need(draft.workstation.clone(), "WorkstationID")?;
    let transaction_id = need(draft.sequence.clone(), "SequenceNumber")?;
    let occurred_at = match (&draft.end_date_time, &draft.business_day) {
        (Some(at), _) => rfc3339(at).ok_or_else(|| {
            locate(
                input,
                draft.start,
                format!("EndDateTime `{at}` is not a date-time"),
            )
        })?,
        (None, Some(day)) => rfc3339(&format!("{day}T00:00:00")).ok_or_else(|| {
            locate(
                input,
                draft.start,
                format!("BusinessDayDate `{day}` is not a date"),
            )
        })?,
        (None, None) => {
            return Err(locate(
                input,
                draft.start,
                "a transaction has neither EndDateTime nor BusinessDayDate",
            ));
        }
    };
    Ok(PosTransaction {
        store_id,
        terminal_id,
        transaction_id,
        occurred_at,
        lines: draft.lines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<POSLog xmlns="http://www.nrf-arts.org/IXRetail/namespace/">
  <Transaction>
    <RetailStoreID>S001</RetailStoreID>
    <WorkstationID>T01</WorkstationID>
    <SequenceNumber>1001</SequenceNumber>
    <BusinessDayDate>2026-11-27</BusinessDayDate>
    <EndDateTime>2026-11-27T10:15:00</EndDateTime>
    <RetailTransaction TransactionStatus="Finished">
      <LineItem><Sale><ItemID>SKU-000001</ItemID><Quantity Units="1">2</Quantity></Sale></LineItem>
      <LineItem VoidFlag="true"><Sale><ItemID>SKU-000002</ItemID><Quantity>1</Quantity></Sale></LineItem>
      <LineItem><Return><ItemID>SKU-000003</ItemID><Quantity>1.000</Quantity></Return></LineItem>
    </RetailTransaction>
  </Transaction>
  <Transaction CancelFlag="true">
    <RetailStoreID>S001</RetailStoreID><WorkstationID>T01</WorkstationID>
    <SequenceNumber>1002</SequenceNumber><EndDateTime>2026-11-27T10:20:00Z</EndDateTime>
    <RetailTransaction><LineItem><Sale><ItemID>SKU-000001</ItemID><Quantity>5</Quantity></Sale></LineItem></RetailTransaction>
  </Transaction>
  <Transaction>
    <RetailStoreID>S001</RetailStoreID><WorkstationID>T02</WorkstationID>
    <SequenceNumber>7</SequenceNumber><EndDateTime>2026-11-27T11:00:00+01:00</EndDateTime>
    <RetailTransaction TransactionStatus="Voided"><LineItem><Sale><ItemID>SKU-000001</ItemID><Quantity>9</Quantity></Sale></LineItem></RetailTransaction>
  </Transaction>
</POSLog>"#;

    #[test]
    fn sales_and_returns_are_read_and_voids_skipped() {
        let log = parse(SAMPLE).expect("parses");
        assert_eq!(log.transactions.len(), 1);
        assert_eq!((log.skipped_transactions, log.skipped_lines), (2, 1));
        let t = &log.transactions[0];
        assert_eq!(
            (
                t.store_id.as_str(),
                t.terminal_id.as_str(),
                t.transaction_id.as_str()
            ),
            ("S001", "T01", "1001")
        );
        assert_eq!(t.occurred_at, "2026-11-27T10:15:00Z");
        assert_eq!(t.lines.len(), 2);
        assert_eq!(
            (t.lines[0].sku.as_str(), t.lines[0].quantity),
            ("SKU-000001", 2)
        );
        assert_eq!(t.lines[0].kind, LineKind::Sale);
        assert_eq!(
            (t.lines[1].kind, t.lines[1].quantity),
            (LineKind::Return, 1)
        );
    }

    #[test]
    fn malformed_xml_says_where() {
        let broken = "<POSLog>\n  <Transaction>\n    <RetailStoreID>S001</WorkstationID>\n";
        let error = parse(broken).expect_err("malformed");
        assert_eq!(error.line, 3, "{error}");
        let error = parse("<Other/>").expect_err("wrong root");
        assert!(error.message.contains("POSLog"), "{error}");
        let fractional = SAMPLE.replace(
            "<Quantity Units=\"1\">2</Quantity>",
            "<Quantity>1.5</Quantity>",
        );
        let error = parse(&fractional).expect_err("fractional");
        assert!(error.message.contains("whole"), "{error}");
        assert_eq!(error.line, 9, "{error}");
        let missing = SAMPLE.replace("<WorkstationID>T01</WorkstationID>\n", "");
        let error = parse(&missing).expect_err("no workstation");
        assert!(error.message.contains("WorkstationID"), "{error}");
    }
}
