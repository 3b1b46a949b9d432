//! The limits every event stream this platform serves keeps.
//!
//! A Server-Sent Events stream is authorised once, when it opens, and
//! could otherwise run for as long as the connection holds. So each one:
//!
//! - ends when the caller's token stops being accepted (its `exp` plus the
//!   configured leeway) or when the server drains, whichever comes first;
//!   the client reconnects with a fresh token and `Last-Event-ID` and
//!   misses nothing;
//! - holds one of its client's `[feed] max_streams_per_client` slots on
//!   this replica until it ends (beyond the cap: 429 with `Retry-After`);
//! - starts at most `[feed] max_resume_depth` changes behind the head: an
//!   older (or pruned, or never reached) `Last-Event-ID` starts with
//!   `event: reset` instead of paging through an unbounded backlog.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::Event;
use futures::{Stream, StreamExt};
use serde::Deserialize;

use crate::auth::{Principal, SERVICE_SUBJECT_PREFIX};
use crate::problem::Problem;
use crate::server::Draining;

/// The stream limits of one service instance (one per replica: the cap
/// counts this replica's streams).
#[derive(Debug)]
pub struct StreamLimits {
    max_per_client: usize,
    max_resume_depth: i64,
    leeway: Duration,
    retry_after: u64,
    open: Mutex<HashMap<String, usize>>,
}

/// Where a stream resuming after a seq starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePoint {
    /// The stream sends the changes after this seq.
    pub after: i64,
    /// The requested point could not be honoured: the stream starts with
    /// `event: reset` (the consumer re-reads positions).
    pub reset: bool,
}

impl StreamLimits {
    /// Limits from `[feed]` and `[auth] leeway_seconds`.
    pub fn new(settings: &crate::Settings) -> Arc<Self> {
        Arc::new(Self {
            max_per_client: settings.feed.max_streams_per_client,
            max_resume_depth: i64::try_from(settings.feed.max_resume_depth).unwrap_or(i64::MAX),
            leeway: Duration::from_secs(settings.auth.leeway_seconds),
            // A stream whose client went away holds its slot until a write
            // fails: at the latest the next keep-alive comment.
            retry_after: settings.feed.keep_alive_seconds.max(1),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Admits a new stream of `principal`, whose verified bearer token is
    /// in `headers`: 429 when the client already holds its cap of streams
    /// here.
    ///
    /// Service callers (`svc:` subjects, which only a layer's own signing
    /// key can issue) are not counted: experience-api's relay holds one
    /// stream per replica, and counting it would cap how far the edge can
    /// scale.
    pub fn admit(
        self: &Arc<Self>,
        principal: &Principal,
        headers: &HeaderMap,
    ) -> Result<Admission, Problem> {
        let until = UNIX_EPOCH + Duration::from_secs(token_expiry(headers)?) + self.leeway;
        let counted =
            self.max_per_client > 0 && !principal.subject.starts_with(SERVICE_SUBJECT_PREFIX);
        if counted {
            let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
            let held = open.entry(principal.subject.clone()).or_default();
            if *held >= self.max_per_client {
                metrics::counter!("sse_streams_refused_total").increment(1);
                return Err(Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too-many-streams",
                    "Too many open streams",
                )
                .with_detail(format!(
                    "client `{}` already holds {} event streams here, the most allowed; \
                     close one, or retry in {} s",
                    principal.subject, self.max_per_client, self.retry_after
                ))
                .with_header(header::RETRY_AFTER, HeaderValue::from(self.retry_after)));
            }
            *held += 1;
        }
        Ok(Admission {
            slot: counted.then(|| (self.clone(), principal.subject.clone())),
            until,
        })
    }

    /// Streams `subject` holds open here.
    pub fn open_streams(&self, subject: &str) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(subject)
            .copied()
            .unwrap_or_default()
    }

    fn release(&self, subject: &str) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = open.get_mut(subject) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                open.remove(subject);
            }
        }
    }

    /// Where a stream asking for the changes after `after` starts, given
    /// the feed's `head` (newest seq) and `tail` (oldest seq kept): after
    /// `after` itself when that is at most `max_resume_depth` behind the
    /// head and not pruned; otherwise a reset, going on that deep behind
    /// the head (or from the tail, if that is newer). A point past the head
    /// (another feed's id, a restored database) resets to the head.
    pub fn resume_point(&self, after: i64, head: i64, tail: i64) -> ResumePoint {
        if after > head {
            return ResumePoint {
                after: head,
                reset: true,
            };
        }
        let floor = (tail - 1).max(head.saturating_sub(self.max_resume_depth));
        if after < floor {
            ResumePoint {
                after: floor,
                reset: true,
            }
        } else {
            ResumePoint {
                after,
                reset: false,
            }
        }
    }
}

/// The `exp` of the request's bearer token (seconds since the epoch).
///
/// Read without verifying, on purpose: the route's `Authorized` extractor
/// (or the authenticating layer before it) verified this same header
/// before the handler ran, so its claims are trusted. Reading `exp` here,
/// where a stream needs it, keeps [`Principal`] the caller's identity
/// alone rather than adding a lifetime that every other route would carry
/// and ignore.
pub fn token_expiry(headers: &HeaderMap) -> Result<u64, Problem> {
    #[derive(Deserialize)]
    struct Expiry {
        exp: u64,
    }
    let token = crate::auth::bearer(headers)?;
    jsonwebtoken::dangerous::insecure_decode_claims::<Expiry>(token)
        .map(|claims| claims.exp)
        .map_err(|_| Problem::unauthorized("the token's exp cannot be read"))
}

/// A stream let in: its client's slot (released when dropped) and when
/// its token stops being accepted.
#[derive(Debug)]
pub struct Admission {
    slot: Option<(Arc<StreamLimits>, String)>,
    until: SystemTime,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some((limits, subject)) = self.slot.take() {
            limits.release(&subject);
        }
    }
}

/// What the last words of a stream ended by its token say (an SSE
/// comment: consumers ignore it; people reading the wire see why).
const EXPIRED: &str = "the token expired: reconnect with a fresh one and Last-Event-ID";

impl Admission {
    /// When the stream ends because its token does.
    pub fn until(&self) -> SystemTime {
        self.until
    }

    /// `events` until the token expires (then a comment saying so) or the
    /// server drains, whichever is first; the slot is held as long.
    pub fn bound<S>(
        self,
        events: S,
        draining: Option<axum::Extension<Draining>>,
    ) -> impl Stream<Item = Result<Event, Infallible>> + Send
    where
        S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
    {
        // A clock set back makes the wait longer, never the token valid
        // for longer than the authenticator would accept it anew.
        let left = self
            .until
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let ends = Box::pin(async move {
            tokio::select! {
                () = Draining::of(draining) => false,
                () = tokio::time::sleep(left) => true,
            }
        });
        futures::stream::unfold(Some((Box::pin(events), ends, self)), |state| async move {
            let (mut events, mut ends, admission) = state?;
            tokio::select! {
                biased;
                expired = &mut ends => {
                    if !expired {
                        return None;
                    }
                    metrics::counter!("sse_streams_expired_total").increment(1);
                    drop(admission);
                    Some((Ok(Event::default().comment(EXPIRED)), None))
                }
                event = events.next() => {
                    event.map(|event| (event, Some((events, ends, admission))))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn limits(adjust: impl FnOnce(&mut crate::Settings)) -> Arc<StreamLimits> {
        let mut settings = crate::Settings::defaults();
        adjust(&mut settings);
        StreamLimits::new(&settings)
    }

    fn principal(subject: &str) -> Principal {
        Principal {
            subject: subject.into(),
            scopes: BTreeSet::new(),
            locations: None,
            on_behalf_of: None,
        }
    }

    fn bearer(exp: u64) -> HeaderMap {
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &serde_json::json!({ "sub": "c", "exp": exp }),
            &jsonwebtoken::EncodingKey::from_secret(b"test"),
        )
        .expect("sign");
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).expect("ascii"),
        );
        headers
    }

    #[test]
    fn slots_are_capped_per_client_and_come_back_when_a_stream_ends() {
        let limits = limits(|s| s.feed.max_streams_per_client = 2);
        let headers = bearer(4_000_000_000);
        let first = limits.admit(&principal("a"), &headers).expect("1st");
        let _second = limits.admit(&principal("a"), &headers).expect("2nd");
        let refused = limits
            .admit(&principal("a"), &headers)
            .expect_err("3rd of the same client");
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        let _other = limits
            .admit(&principal("b"), &headers)
            .expect("another client is not affected");
        drop(first);
        assert_eq!(limits.open_streams("a"), 1);
        let _again = limits.admit(&principal("a"), &headers).expect("freed");
        // Service callers are never counted.
        let relays: Vec<_> = (0..5)
            .map(|_| limits.admit(&principal("svc:experience-api"), &headers))
            .collect();
        assert!(relays.iter().all(Result::is_ok));
        assert_eq!(limits.open_streams("svc:experience-api"), 0);
    }

    #[test]
    fn a_stream_lives_until_exp_plus_the_leeway() {
        let limits = limits(|s| s.auth.leeway_seconds = 5);
        let admission = limits
            .admit(&principal("a"), &bearer(1_000))
            .expect("admitted");
        assert_eq!(admission.until(), UNIX_EPOCH + Duration::from_secs(1_005));
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(
            limits
                .admit(&principal("a"), &headers)
                .expect_err("no exp")
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn resume_points_older_than_the_depth_or_the_tail_reset() {
        let limits = limits(|s| s.feed.max_resume_depth = 100);
        let point = |after, reset| ResumePoint { after, reset };
        // head 1000, tail 1: anything 100 behind the head or newer is kept.
        assert_eq!(limits.resume_point(950, 1000, 1), point(950, false));
        assert_eq!(limits.resume_point(900, 1000, 1), point(900, false));
        assert_eq!(limits.resume_point(899, 1000, 1), point(900, true));
        assert_eq!(limits.resume_point(0, 1000, 1), point(900, true));
        // Pruned past the depth: from the tail.
        assert_eq!(limits.resume_point(940, 1000, 960), point(959, true));
        // Past the head: another feed's id.
        assert_eq!(limits.resume_point(1001, 1000, 1), point(1000, true));
        // A young feed.
        assert_eq!(limits.resume_point(0, 50, 1), point(0, false));
    }

    #[tokio::test]
    async fn a_bound_stream_ends_at_expiry_and_frees_its_slot() {
        let limits = limits(|s| {
            s.auth.leeway_seconds = 0;
            s.feed.max_streams_per_client = 1;
        });
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            + 1;
        let admission = limits
            .admit(&principal("a"), &bearer(exp))
            .expect("admitted");
        let endless = futures::stream::pending::<Result<Event, Infallible>>();
        let mut stream = Box::pin(admission.bound(endless, None));
        let last = tokio::time::timeout(Duration::from_secs(3), stream.next())
            .await
            .expect("ends by itself");
        assert!(last.is_some(), "a last comment says why");
        assert_eq!(limits.open_streams("a"), 0, "the slot is free at once");
        let end = tokio::time::timeout(Duration::from_secs(1), stream.next())
            .await
            .expect("ended");
        assert!(end.is_none());
    }
}
