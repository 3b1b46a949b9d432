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

/// Longest record accepted, in bytes as sent (delimiters, quotes and the
/// line end included). A basket line is well under 1 KiB; without a bound
/// one endless line would be buffered whole.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// Most fields in one record. The batch has 7 columns and may carry a few
/// extra; the bound matters because a field costs an allocation however
/// short it is, so a line of commas would otherwise take many times its
/// own size in memory.
pub const MAX_FIELDS: usize = 64;

/// A record that outgrew a bound before it ended: reading stops there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    /// The record's number in the stream (the header is 1), as the rows of
    /// a batch are numbered.
    pub record: u64,
    /// The line of the input where reading stopped (1-based).
    pub line: u64,
    /// Which bound it broke.
    pub detail: String,
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "row {} (line {}): {}",
            self.record, self.line, self.detail
        )
    }
}

impl std::error::Error for RecordError {}

/// Splits a byte stream into CSV records (quotes, embedded commas and
/// newlines handled by `csv-core`), whatever the chunk boundaries, holding
/// at most one record of [`MAX_RECORD_BYTES`] and [`MAX_FIELDS`].
#[derive(Debug)]
pub struct RecordSplitter {
    reader: Reader,
    output: Vec<u8>,
    ends: Vec<usize>,
    output_len: usize,
    ends_len: usize,
    /// Input bytes of the record being read.
    record_bytes: usize,
    /// Records handed out so far.
    records: u64,
    /// Input bytes read so far.
    bytes_read: u64,
}

impl Default for RecordSplitter {
    fn default() -> Self {
        Self {
            reader: Reader::new(),
            output: vec![0; 4096],
            ends: vec![0; 32],
            output_len: 0,
            ends_len: 0,
            record_bytes: 0,
            records: 0,
            bytes_read: 0,
        }
    }
}

impl RecordSplitter {
    /// Feeds `input` (an empty slice at the end of the stream) and hands
    /// every completed record to `on_record`. A record longer than
    /// [`MAX_RECORD_BYTES`] or with more than [`MAX_FIELDS`] fields is an
    /// error as soon as it crosses the bound, with the rest of the input
    /// unread; the stream is then abandoned (feeding on is not supported).
    pub fn feed(
        &mut self,
        mut input: &[u8],
        mut on_record: impl FnMut(Vec<String>),
    ) -> Result<(), RecordError> {
        let at_end = input.is_empty();
        loop {
            // csv-core reads an empty input as the end of the stream, so it
            // only gets one at the real end.
            if input.is_empty() && !at_end {
                return Ok(());
            }
            let allowance = MAX_RECORD_BYTES - self.record_bytes;
            if allowance == 0 && !input.is_empty() {
                return Err(self.refuse(format!("the row is longer than {MAX_RECORD_BYTES} bytes")));
            }
            // Never hand csv-core more than the record may still take, so
            // neither buffer grows past the bound whatever the chunk size.
            let window = &input[..input.len().min(allowance)];
            let (result, read, written, ended) = self.reader.read_record(
                window,
                &mut self.output[self.output_len..],
                &mut self.ends[self.ends_len..],
            );
            input = &input[read..];
            self.record_bytes += read;
            self.bytes_read += read as u64;
            self.output_len += written;
            self.ends_len += ended;
            match result {
                ReadRecordResult::InputEmpty => {
                    if !at_end && input.is_empty() {
                        return Ok(());
                    }
                }
                ReadRecordResult::OutputFull => {
                    // The output holds at most the record's input, which the
                    // window keeps within the bound: one byte more than that
                    // and a record of exactly the bound still fits.
                    let len = (self.output.len() * 2).min(MAX_RECORD_BYTES + 1);
                    if len <= self.output.len() {
                        return Err(
                            self.refuse(format!("the row is longer than {MAX_RECORD_BYTES} bytes"))
                        );
                    }
                    self.output.resize(len, 0);
                }
                ReadRecordResult::OutputEndsFull => {
                    let len = (self.ends.len() * 2).min(MAX_FIELDS);
                    if len <= self.ends.len() {
                        return Err(
                            self.refuse(format!("the row has more than {MAX_FIELDS} fields"))
                        );
                    }
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
                    self.record_bytes = 0;
                    self.records += 1;
                    on_record(fields);
                }
                ReadRecordResult::End => return Ok(()),
            }
        }
    }

    /// Input bytes read so far (reading stops at a refused record).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    fn refuse(&self, detail: String) -> RecordError {
        RecordError {
            record: self.records + 1,
            line: self.reader.line(),
            detail,
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
            splitter
                .feed(piece, |r| out.push(r))
                .expect("within bounds");
        }
        splitter.feed(&[], |r| out.push(r)).expect("within bounds");
        out
    }

    const HEADER: &[u8] = b"store_id,sku\n";

    /// Feeds `input` in `chunk`-byte pieces, as the upload route does, until
    /// a record is refused: the error, the bytes handed over by then, and
    /// the records read before it.
    fn feed_until_refused(input: &[u8], chunk: usize) -> (RecordError, usize, usize) {
        let mut splitter = RecordSplitter::default();
        let mut records = 0;
        let mut fed = 0;
        for piece in input.chunks(chunk).chain([&[][..]]) {
            fed += piece.len();
            if let Err(error) = splitter.feed(piece, |_| records += 1) {
                return (error, fed, records);
            }
        }
        panic!("{fed} bytes in {records} records were read without a refusal");
    }

    #[test]
    fn a_line_of_a_million_commas_is_refused_at_the_field_cap() {
        let mut input = HEADER.to_vec();
        input.extend(std::iter::repeat_n(b',', 1_000_000));
        input.push(b'\n');

        let (error, fed, records) = feed_until_refused(&input, 8192);
        assert_eq!((error.record, error.line, records), (2, 2, 1), "{error}");
        assert!(error.detail.contains("fields"), "{error}");
        // Refused in the first piece holding the line, not at its end.
        assert!(fed <= HEADER.len() + 8192, "{fed} bytes fed");

        // Handed the whole line at once, it still reads no further than
        // the bound.
        let mut splitter = RecordSplitter::default();
        let error = splitter.feed(&input, |_| {}).expect_err("refused");
        assert_eq!(error.record, 2);
        assert!(
            splitter.bytes_read() <= (HEADER.len() + MAX_FIELDS) as u64,
            "{} bytes read",
            splitter.bytes_read()
        );
        assert!(splitter.ends.len() <= MAX_FIELDS);
    }

    #[test]
    fn a_field_longer_than_the_cap_is_refused_without_buffering_it() {
        let mut input = HEADER.to_vec();
        input.extend(b"S001,");
        input.extend(std::iter::repeat_n(b'x', 4 * MAX_RECORD_BYTES));
        input.push(b'\n');

        let (error, fed, records) = feed_until_refused(&input, 8192);
        assert_eq!((error.record, error.line, records), (2, 2, 1), "{error}");
        assert!(error.detail.contains("bytes"), "{error}");
        assert!(
            fed <= HEADER.len() + MAX_RECORD_BYTES + 8192,
            "{fed} bytes fed"
        );

        let mut splitter = RecordSplitter::default();
        let error = splitter.feed(&input, |_| {}).expect_err("refused");
        assert_eq!(error.record, 2);
        assert_eq!(
            splitter.bytes_read(),
            (HEADER.len() + MAX_RECORD_BYTES) as u64
        );
        assert!(splitter.output.len() <= MAX_RECORD_BYTES + 1);
    }

    #[test]
    fn records_at_the_bounds_are_read() {
        let widest = vec![","; MAX_FIELDS - 1].concat();
        // Exactly the bound, line end included; the next record starts
        // afresh, and the last one ends the stream without a line end.
        let longest = format!("{}\n", "x".repeat(MAX_RECORD_BYTES - 1));
        let last = "y".repeat(MAX_RECORD_BYTES);
        let input = format!("{widest}\n{longest}{longest}{last}");
        for chunk in [1000, 8192, input.len()] {
            let read = records(&input, chunk);
            assert_eq!(read.len(), 4, "chunk {chunk}");
            assert_eq!(read[0].len(), MAX_FIELDS);
            assert_eq!(read[1][0].len(), MAX_RECORD_BYTES - 1);
            assert_eq!(read[3][0].len(), MAX_RECORD_BYTES);
        }
        let wider = format!("{widest},\n");
        let (error, _, _) = feed_until_refused(wider.as_bytes(), 7);
        assert_eq!(error.record, 1);
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
