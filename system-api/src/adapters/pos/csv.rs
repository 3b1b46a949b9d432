//! The nightly POS CSV batch: one row per basket line, read as a stream.
//!
//! Columns (a header row names them, in any order; extra columns are
//! ignored): `store_id`, `terminal_id`, `transaction_id`, `occurred_at`
//! (RFC 3339), `sku`, `quantity`, `kind` (`sale` or `return`). Rows of one
//! transaction may be anywhere in the file; a row's line number within its
//! transaction is its order of appearance, so the same file always yields
//! the same event ids (`pos:<store>:<terminal>:<transaction>:<n>`), and
//! uploading it again changes nothing.

use std::collections::HashMap;

use csv_core::{ReadRecordResult, Reader};
use serde_json::{Value, json};

use super::MAX_LINE_QUANTITY;

/// The columns a batch must have.
pub const COLUMNS: [&str; 7] = [
    "store_id",
    "terminal_id",
    "transaction_id",
    "occurred_at",
    "sku",
    "quantity",
    "kind",
];

/// Splits a byte stream into CSV records (quotes, embedded commas and
/// newlines handled by `csv-core`), whatever the chunk boundaries.
#[derive(Debug)]
pub struct RecordSplitter {
    reader: Reader,
    output: Vec<u8>,
    ends: Vec<usize>,
    output_len: usize,
    ends_len: usize,
}

impl Default for RecordSplitter {
    fn default() -> Self {
        Self {
            reader: Reader::new(),
            output: vec![0; 4096],
            ends: vec![0; 32],
            output_len: 0,
            ends_len: 0,
        }
    }
}

impl RecordSplitter {
    /// Feeds `input` (an empty slice at the end of the stream) and hands
    /// every completed record to `on_record`.
    pub fn feed(&mut self, mut input: &[u8], mut on_record: impl FnMut(Vec<String>)) {
        let at_end = input.is_empty();
        loop {
            let (result, read, written, ended) = self.reader.read_record(
                input,
                &mut self.output[self.output_len..],
                &mut self.ends[self.ends_len..],
            );
            input = &input[read..];
            self.output_len += written;
            self.ends_len += ended;
            match result {
                ReadRecordResult::InputEmpty => {
                    if !at_end {
                        return;
                    }
                }
                ReadRecordResult::OutputFull => {
                    let len = self.output.len() * 2;
                    self.output.resize(len, 0);
                }
                ReadRecordResult::OutputEndsFull => {
                    let len = self.ends.len() * 2;
                    self.ends.resize(len, 0);
                }
                ReadRecordResult::Record => {
                    let mut start = 0;
                    let fields = self.ends[..self.ends_len]
                        .iter()
                        .map(|&end| {
                            let field =
                                String::from_utf8_lossy(&self.output[start..end]).into_owned();
                            start = end;
                            field
                        })
                        .collect();
                    self.output_len = 0;
                    self.ends_len = 0;
                    on_record(fields);
                }
                ReadRecordResult::End => return,
            }
        }
    }
}

/// Turns rows into canonical events.
#[derive(Debug, Default)]
pub struct BatchReader {
    columns: Option<[usize; 7]>,
    lines_of: HashMap<(String, String, String), usize>,
}

impl BatchReader {
    /// Reads the header row; an error names the missing columns.
    pub fn header(&mut self, fields: &[String]) -> Result<(), String> {
        let position = |name: &str| fields.iter().position(|f| f.trim() == name);
        let missing: Vec<&str> = COLUMNS
            .iter()
            .copied()
            .filter(|c| position(c).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "the header lacks the column(s) {}",
                missing.join(", ")
            ));
        }
        let mut columns = [0; 7];
        for (slot, name) in columns.iter_mut().zip(COLUMNS) {
            *slot = position(name).unwrap_or_default();
        }
        self.columns = Some(columns);
        Ok(())
    }

    /// Whether the header has been read.
    pub fn has_header(&self) -> bool {
        self.columns.is_some()
    }

    /// One data row → (store, event), or why it is rejected.
    pub fn row(&mut self, fields: &[String]) -> Result<(String, Value), String> {
        let columns = self.columns.ok_or("no header row")?;
        let get = |index: usize| {
            fields
                .get(columns[index])
                .map(|f| f.trim())
                .ok_or_else(|| format!("missing the `{}` column", COLUMNS[index]))
        };
        let (store, terminal, transaction) = (get(0)?, get(1)?, get(2)?);
        for (name, value) in [
            ("store_id", store),
            ("terminal_id", terminal),
            ("transaction_id", transaction),
        ] {
            if value.is_empty()
                || value.len() > super::MAX_POS_ID_LEN
                || !value
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !matches!(b, b',' | b'/' | b':'))
            {
                return Err(format!(
                    "{name} must be 1 to {} printable characters without , / or :",
                    super::MAX_POS_ID_LEN
                ));
            }
        }
        let occurred_at = get(3)?;
        if time::OffsetDateTime::parse(occurred_at, &time::format_description::well_known::Rfc3339)
            .is_err()
        {
            return Err(format!(
                "occurred_at `{occurred_at}` is not an RFC 3339 date-time"
            ));
        }
        let sku = get(4)?;
        if sku.is_empty()
            || sku.len() > retail_shared::validate::MAX_ID_LEN
            || !sku
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b',' | b'/'))
        {
            return Err(format!("sku `{sku}` is not a valid sku"));
        }
        let quantity: i64 = get(5)?
            .parse()
            .ok()
            .filter(|q| (1..=MAX_LINE_QUANTITY).contains(q))
            .ok_or_else(|| {
                format!("quantity must be a whole number from 1 to {MAX_LINE_QUANTITY}")
            })?;
        let kind = match get(6)? {
            "sale" => "sale",
            "return" => "return",
            other => return Err(format!("kind `{other}` is not sale or return")),
        };
        let line = self
            .lines_of
            .entry((
                store.to_owned(),
                terminal.to_owned(),
                transaction.to_owned(),
            ))
            .or_default();
        *line += 1;
        Ok((
            store.to_owned(),
            json!({
                "event_id": format!("pos:{store}:{terminal}:{transaction}:{line}"),
                "type": kind,
                "location_id": store,
                "sku": sku,
                "quantity": quantity,
                "occurred_at": occurred_at,
                "source": "pos-batch",
                "reference": format!("{terminal}/{transaction}"),
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(input: &str, chunk: usize) -> Vec<Vec<String>> {
        let mut splitter = RecordSplitter::default();
        let mut out = Vec::new();
        for piece in input.as_bytes().chunks(chunk) {
            splitter.feed(piece, |r| out.push(r));
        }
        splitter.feed(&[], |r| out.push(r));
        out
    }

    #[test]
    fn records_survive_any_chunking() {
        let input = "a,b,c\n1,\"x, \"\"y\"\"\nz\",3\n4,5,6";
        let whole = records(input, input.len());
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[1][1], "x, \"y\"\nz");
        for chunk in 1..8 {
            assert_eq!(records(input, chunk), whole, "chunk {chunk}");
        }
    }

    #[test]
    fn rows_become_events_numbered_per_transaction() {
        let mut reader = BatchReader::default();
        let header: Vec<String> =
            "kind,sku,quantity,occurred_at,transaction_id,terminal_id,store_id,extra"
                .split(',')
                .map(str::to_owned)
                .collect();
        reader.header(&header).expect("header");
        let row = |s: &str| s.split(',').map(str::to_owned).collect::<Vec<_>>();
        let (_, first) = reader
            .row(&row("sale,A,2,2026-11-27T10:00:00Z,9,T1,S001,x"))
            .expect("valid");
        let (_, other) = reader
            .row(&row("sale,A,1,2026-11-27T10:00:00Z,10,T1,S001,x"))
            .expect("valid");
        let (_, second) = reader
            .row(&row("return,B,1,2026-11-27T10:00:00Z,9,T1,S001,x"))
            .expect("valid");
        assert_eq!(first["event_id"], "pos:S001:T1:9:1");
        assert_eq!(other["event_id"], "pos:S001:T1:10:1");
        assert_eq!(second["event_id"], "pos:S001:T1:9:2");
        assert_eq!(second["type"], "return");
        assert!(
            reader
                .row(&row("sale,A,0,2026-11-27T10:00:00Z,9,T1,S001,x"))
                .is_err()
        );
        assert!(
            reader
                .row(&row("gift,A,1,2026-11-27T10:00:00Z,9,T1,S001,x"))
                .is_err()
        );
        assert!(reader.row(&row("sale,A,1,yesterday,9,T1,S001,x")).is_err());
        let mut bad = BatchReader::default();
        assert!(bad.header(&row("sku,quantity")).is_err());
    }
}
