//! A parser of the Server-Sent Events wire format (WHATWG HTML, "Server-sent
//! events"), for services that consume another layer's stream. Bytes go in
//! as they arrive, split anywhere; complete events come out.

/// The `Last-Event-ID` request header as a feed position: `None` when
/// absent, 400 when it is not a non-negative integer.
pub fn last_event_id(
    headers: &axum::http::HeaderMap,
) -> Result<Option<i64>, crate::problem::Problem> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|v| *v >= 0)
        .map(Some)
        .ok_or_else(|| {
            crate::problem::Problem::bad_request(
                "Last-Event-ID must be a change seq (a non-negative integer)",
            )
        })
}

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// `event:` (empty means the default type, `message`).
    pub event: String,
    /// `data:` lines joined with `\n`.
    pub data: String,
    /// `id:` of this event, if it set one.
    pub id: Option<String>,
}

/// Longest line kept (1 MiB).
pub const MAX_LINE: usize = 1 << 20;

/// Incremental parser.
#[derive(Debug, Default)]
pub struct SseParser {
    pending: Vec<u8>,
    /// The current event lost a line: drop it when it ends.
    oversized: bool,
    event: String,
    data: Vec<String>,
    id: Option<String>,
}

impl SseParser {
    /// Feeds bytes; returns the events they completed. A line longer than
    /// [`MAX_LINE`] is dropped (with the event it belongs to).
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(offset) = self.pending[start..]
            .iter()
            .position(|b| *b == b'\n' || *b == b'\r')
        {
            let end = start + offset;
            // A CR LF pair ends one line.
            let skip = if self.pending[end] == b'\r' {
                match self.pending.get(end + 1) {
                    Some(b'\n') => 2,
                    Some(_) => 1,
                    // Wait: the LF may come in the next chunk.
                    None => break,
                }
            } else {
                1
            };
            let line = String::from_utf8_lossy(&self.pending[start..end]).into_owned();
            start = end + skip;
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
        }
        // One shift per chunk, not per line.
        self.pending.drain(..start);
        if self.pending.len() > MAX_LINE {
            self.pending.clear();
            self.data.clear();
            self.oversized = true;
        }
        events
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            if std::mem::take(&mut self.oversized) {
                self.data.clear();
                self.event.clear();
                self.id = None;
                return None;
            }
            if self.data.is_empty() {
                self.event.clear();
                self.id = None;
                return None;
            }
            return Some(SseEvent {
                event: std::mem::take(&mut self.event),
                data: std::mem::take(&mut self.data).join("\n"),
                id: self.id.take(),
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_owned(),
            "data" => self.data.push(value.to_owned()),
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_come_out_whole() {
        let wire = b": keep-alive\n\nid: 7\nevent: change\ndata: {\"a\":\ndata: 1}\n\r\nid: 8\r\ndata: x\r\n\r\n";
        for cut in 0..wire.len() {
            let mut parser = SseParser::default();
            let mut events = parser.feed(&wire[..cut]);
            events.extend(parser.feed(&wire[cut..]));
            assert_eq!(
                events,
                vec![
                    SseEvent {
                        event: "change".into(),
                        data: "{\"a\":\n1}".into(),
                        id: Some("7".into())
                    },
                    SseEvent {
                        event: String::new(),
                        data: "x".into(),
                        id: Some("8".into())
                    },
                ],
                "cut at {cut}"
            );
        }
    }
}
