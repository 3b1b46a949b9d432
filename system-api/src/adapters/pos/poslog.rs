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
//! So does a document past one of the bounds below, as soon as it crosses
//! it: whatever the body limit, one document never costs much more memory
//! than its own size.

use quick_xml::Reader;
use quick_xml::events::Event;

use super::{LineKind, MAX_LINES, PosLine, PosTransaction};

/// Deepest element nesting. A POSLog transaction nests about ten deep;
/// every open element holds its name, so depth is bounded apart from size.
pub const MAX_DEPTH: usize = 32;
/// Longest text of one element or value of one attribute, in bytes. The
/// values read are ids, dates and quantities; the bound leaves room for
/// free text that is not read.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// Most attributes on one element: each is kept while the element is read,
/// and the XML reader's duplicate check grows with their square.
pub const MAX_ATTRIBUTES: usize = 32;
/// Most sale and return lines in one document. Each becomes an event built
/// in memory before the first is sent (ten calls to process-api); a store's
/// day within the body limit is well under it.
pub const MAX_DOCUMENT_LINES: usize = 10_000;

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

/// Appends to an element's text, or fails (`too_long`) before the text
/// would outgrow [`MAX_TEXT_BYTES`].
fn keep_text(
    text: &mut String,
    more: &str,
    too_long: impl FnOnce() -> XmlError,
) -> Result<(), XmlError> {
    if text.len() + more.len() > MAX_TEXT_BYTES {
        return Err(too_long());
    }
    text.push_str(more);
    Ok(())
}

fn too_long() -> String {
    format!("an element's text is longer than {MAX_TEXT_BYTES} bytes")
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
    // Lines of the transactions kept so far.
    let mut kept_lines = 0;
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
                if path.len() == MAX_DEPTH {
                    return Err(locate(
                        input,
                        position,
                        format!("elements nest deeper than {MAX_DEPTH}"),
                    ));
                }
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
                for (index, attribute) in start.attributes().enumerate() {
                    if index == MAX_ATTRIBUTES {
                        return Err(locate(
                            input,
                            position,
                            format!("`{name}` has more than {MAX_ATTRIBUTES} attributes"),
                        ));
                    }
                    let attribute = attribute.map_err(|e| {
                        locate(input, position, format!("malformed attribute: {e}"))
                    })?;
                    if attribute.value.len() > MAX_TEXT_BYTES {
                        return Err(locate(
                            input,
                            position,
                            format!(
                                "an attribute of `{name}` is longer than {MAX_TEXT_BYTES} bytes"
                            ),
                        ));
                    }
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
            Event::Text(content) => {
                let content = content.into_inner();
                keep_text(&mut text, &content, || locate(input, position, too_long()))?;
            }
            Event::CData(content) => {
                let content = content.into_inner();
                keep_text(&mut text, &content, || locate(input, position, too_long()))?;
            }
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
                keep_text(&mut text, &resolved, || locate(input, position, too_long()))?;
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
                                // A skipped transaction's lines are dropped
                                // with it, so they are not kept meanwhile.
                                if !draft.skip {
                                    if draft.lines.len() == MAX_LINES {
                                        return Err(locate(
                                            input,
                                            l.start,
                                            format!(
                                                "a transaction has more than {MAX_LINES} sale \
                                                 and return lines"
                                            ),
                                        ));
                                    }
                                    if kept_lines + draft.lines.len() == MAX_DOCUMENT_LINES {
                                        return Err(locate(
                                            input,
                                            l.start,
                                            format!(
                                                "the document has more than \
                                                 {MAX_DOCUMENT_LINES} sale and return lines; \
                                                 split it"
                                            ),
                                        ));
                                    }
                                    draft.lines.push(PosLine {
                                        sku,
                                        quantity,
                                        kind,
                                    });
                                }
                            }
                        }
                    }
                    "Transaction" if path.last().is_some_and(|p| p == "POSLog") => {
                        if let Some(draft) = transaction.take() {
                            if draft.skip {
                                log.skipped_transactions += 1;
                            } else if draft.retail && !draft.lines.is_empty() {
                                kept_lines += draft.lines.len();
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

    /// A retail transaction of `lines` one-unit sales, one line item per
    /// text line: its first line item is on the transaction's fourth line.
    fn transaction(sequence: usize, lines: usize, attributes: &str) -> String {
        let mut xml = format!(
            "<Transaction{attributes}>\n<RetailStoreID>S001</RetailStoreID>\
             <WorkstationID>T01</WorkstationID><SequenceNumber>{sequence}</SequenceNumber>\
             <EndDateTime>2026-11-27T10:15:00Z</EndDateTime>\n<RetailTransaction>\n"
        );
        for _ in 0..lines {
            xml.push_str(
                "<LineItem><Sale><ItemID>A</ItemID><Quantity>1</Quantity></Sale></LineItem>\n",
            );
        }
        xml.push_str("</RetailTransaction>\n</Transaction>\n");
        xml
    }

    fn document(transactions: &[String]) -> String {
        format!("<POSLog>\n{}</POSLog>", transactions.concat())
    }

    #[test]
    fn nesting_stops_at_the_depth_bound() {
        let deep = format!("<POSLog>{}", "<a>".repeat(100_000));
        let error = parse(&deep).expect_err("too deep");
        assert!(error.message.contains("deeper"), "{error}");
        // At the first element past the bound, not at the end of the input.
        assert_eq!((error.line, error.column), (1, 9 + 3 * (MAX_DEPTH - 1)));
    }

    #[test]
    fn text_and_attributes_stop_at_their_bounds() {
        let ok = document(&[transaction(1, 1, "")]);
        assert!(parse(&ok).is_ok());
        let at = |from: &str, to: String| ok.replacen(from, &to, 1);

        // Text gathered from many small pieces (each entity is one) is
        // bounded as a whole.
        let entities = "&amp;".repeat(MAX_TEXT_BYTES + 1);
        let error = parse(&at(
            "<RetailTransaction>",
            format!("<Note>{entities}</Note><RetailTransaction>"),
        ))
        .expect_err("text too long");
        assert!(error.message.contains("text is longer"), "{error}");
        // At the first entity past the bound, not at the end of the text.
        assert_eq!(
            (error.line, error.column),
            (4, "<Note>".len() + 5 * MAX_TEXT_BYTES + 1),
            "{error}"
        );

        let long = "x".repeat(MAX_TEXT_BYTES + 1);
        let error = parse(&at(
            "<Transaction>",
            format!("<Transaction Note=\"{long}\">"),
        ))
        .expect_err("attribute too long");
        assert!(error.message.contains("attribute"), "{error}");

        let many: String = (0..2000).map(|i| format!(" a{i}=\"\"")).collect();
        let error = parse(&at("<Transaction>", format!("<Transaction{many}>")))
            .expect_err("too many attributes");
        assert!(
            error
                .message
                .contains(&format!("more than {MAX_ATTRIBUTES} attributes")),
            "{error}"
        );
    }

    #[test]
    fn lines_per_transaction_stop_at_the_bound() {
        let error = parse(&document(&[transaction(1, 1000, "")])).expect_err("too many");
        assert!(error.message.contains("more than 500"), "{error}");
        // At the first line item past the bound, not at the end of the
        // transaction (the document's line 2 is the transaction's first; a
        // line item is placed where reading it began, which may be the end
        // of the line before).
        let line = 2 + 3 + MAX_LINES;
        assert!((line - 1..=line).contains(&error.line), "{error}");

        // Exactly the bound is read; a cancelled transaction's lines are
        // not kept, so it is skipped whatever its size.
        let log = parse(&document(&[
            transaction(1, MAX_LINES, ""),
            transaction(2, 2 * MAX_LINES, " CancelFlag=\"true\""),
        ]))
        .expect("within bounds");
        assert_eq!(log.transactions[0].lines.len(), MAX_LINES);
        assert_eq!(log.skipped_transactions, 1);
    }

    #[test]
    fn lines_per_document_stop_at_the_bound() {
        let full = MAX_DOCUMENT_LINES / MAX_LINES;
        let mut transactions: Vec<String> =
            (0..full).map(|t| transaction(t, MAX_LINES, "")).collect();
        let log = parse(&document(&transactions)).expect("exactly the bound");
        assert_eq!(log.transactions.len(), full);

        transactions.push(transaction(full, MAX_LINES, ""));
        let error = parse(&document(&transactions)).expect_err("one line too many");
        assert!(error.message.contains("split it"), "{error}");
        // The first line item of the extra transaction; each transaction
        // spans its lines and five more.
        let line = 2 + full * (MAX_LINES + 5) + 3;
        assert!((line - 1..=line).contains(&error.line), "{error}");
    }
}
