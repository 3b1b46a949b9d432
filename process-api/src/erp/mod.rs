//! The ERP side of process-api: delivery of the outbox ([`poster`]),
//! reconciliation of balances ([`reconcile`]) and the master data pull
//! ([`master_sync`]). All of it talks to the ERP through system-api.

pub mod master_sync;
pub mod poster;
pub mod reconcile;

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use serde::Serialize;
use utoipa::ToSchema;

use crate::storage::micros_to_rfc3339;

/// The circuit breaker in front of the ERP (one per process-api replica).
///
/// Closed: calls flow. After `threshold` consecutive failed calls it opens
/// for a cooldown (doubling per failed probe up to a maximum); then one
/// probe call is let through (half-open): success closes it, failure opens
/// it again.
#[derive(Debug, Default)]
pub struct Breaker {
    inner: Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    consecutive_failures: u32,
    /// Open until (µs); 0 when closed.
    open_until: i64,
    cooldown: i64,
    half_open: bool,
    probe_out: bool,
}

impl Breaker {
    /// [`Breaker::permit`]: go ahead normally.
    pub const CLOSED: i64 = -1;
    /// [`Breaker::permit`]: go ahead with one probe.
    pub const PROBE: i64 = -2;

    fn state(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `CLOSED`, `PROBE`, or the µs to wait before asking again.
    pub fn permit(&self, now: i64) -> i64 {
        let mut state = self.state();
        if state.open_until == 0 && !state.half_open {
            return Self::CLOSED;
        }
        if !state.half_open && now < state.open_until {
            return state.open_until - now;
        }
        state.half_open = true;
        if state.probe_out {
            return 100_000;
        }
        state.probe_out = true;
        Self::PROBE
    }

    /// A call succeeded: close.
    pub fn success(&self) {
        let mut state = self.state();
        *state = BreakerState::default();
    }

    /// A probe found nothing to send: let another one try.
    pub fn release_probe(&self) {
        self.state().probe_out = false;
    }

    /// A call failed as a whole. Returns how long its postings should wait.
    pub fn failure(&self, now: i64, base: i64, max: i64, threshold: u32) -> i64 {
        let mut state = self.state();
        state.consecutive_failures = state.consecutive_failures.saturating_add(1);
        if state.half_open || state.consecutive_failures >= threshold {
            state.cooldown = if state.cooldown == 0 {
                base.max(1)
            } else {
                state.cooldown.saturating_mul(2).min(max.max(1))
            };
            state.open_until = now + state.cooldown;
            state.half_open = false;
            state.probe_out = false;
            state.cooldown
        } else {
            base.max(1)
        }
    }

    fn view(&self, now: i64) -> BreakerView {
        let state = self.state();
        let name = if state.half_open {
            "half_open"
        } else if state.open_until > now {
            "open"
        } else if state.open_until != 0 {
            // Cooldown over, no probe yet.
            "half_open"
        } else {
            "closed"
        };
        BreakerView {
            state: name.into(),
            consecutive_failures: state.consecutive_failures,
            open_until: (state.open_until > now).then(|| micros_to_rfc3339(state.open_until)),
        }
    }
}

/// The breaker as operators see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BreakerView {
    /// `closed`, `open` or `half_open`.
    pub state: String,
    /// Failed calls in a row.
    pub consecutive_failures: u32,
    /// When the next probe may go (open only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_until: Option<String>,
}

/// How this replica's link to the ERP is doing.
#[derive(Debug, Default)]
pub struct SyncStatus {
    /// The breaker.
    pub breaker: Breaker,
    last_success: AtomicI64,
    last_failure: AtomicI64,
    last_error: Mutex<Option<String>>,
    /// Until then (µs) claims take one posting at a time (after a batch
    /// was refused as a whole).
    single_until: AtomicI64,
}

/// [`SyncStatus`] for operators.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErpLinkView {
    /// The circuit breaker of this replica.
    pub breaker: BreakerView,
    /// Last successful call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<String>,
    /// Last failed call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure_at: Option<String>,
    /// Its error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl SyncStatus {
    /// Records a successful call.
    pub fn record_success(&self, now: i64) {
        self.last_success.store(now, Ordering::Relaxed);
    }

    /// When the last successful call was (unix microseconds).
    pub fn last_success_micros(&self) -> Option<i64> {
        let at = self.last_success.load(Ordering::Relaxed);
        (at > 0).then_some(at)
    }

    /// Records a failed call.
    pub fn record_failure(&self, now: i64, error: &str) {
        self.last_failure.store(now, Ordering::Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error.to_owned());
    }

    /// Claims go one posting at a time for the next 30 seconds.
    pub fn single_file(&self) {
        self.single_until
            .store(crate::storage::now_micros() + 30_000_000, Ordering::Relaxed);
    }

    /// Whether claims go one at a time now.
    pub fn is_single_file(&self, now: i64) -> bool {
        now < self.single_until.load(Ordering::Relaxed)
    }

    /// The operator view.
    pub fn view(&self, now: i64) -> ErpLinkView {
        let at = |v: &AtomicI64| {
            let v = v.load(Ordering::Relaxed);
            (v > 0).then(|| micros_to_rfc3339(v))
        };
        ErpLinkView {
            breaker: self.breaker.view(now),
            last_success_at: at(&self.last_success),
            last_failure_at: at(&self.last_failure),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_after_the_threshold_and_probes_once() {
        let breaker = Breaker::default();
        assert_eq!(breaker.permit(0), Breaker::CLOSED);
        assert_eq!(breaker.failure(0, 1_000, 8_000, 3), 1_000);
        assert_eq!(breaker.failure(0, 1_000, 8_000, 3), 1_000);
        assert_eq!(breaker.permit(0), Breaker::CLOSED);
        // Third failure: open for the cooldown.
        assert_eq!(breaker.failure(10, 1_000, 8_000, 3), 1_000);
        assert_eq!(breaker.permit(500), 510);
        // Cooldown over: exactly one probe.
        assert_eq!(breaker.permit(1_010), Breaker::PROBE);
        assert!(breaker.permit(1_010) > 0);
        // The probe fails: open again, twice as long.
        assert_eq!(breaker.failure(1_100, 1_000, 8_000, 3), 2_000);
        assert!(breaker.permit(2_000) > 0);
        assert_eq!(breaker.permit(3_100), Breaker::PROBE);
        breaker.success();
        assert_eq!(breaker.permit(3_100), Breaker::CLOSED);
    }

    #[test]
    fn the_cooldown_is_capped() {
        let breaker = Breaker::default();
        let mut now = 0;
        let mut last = 0;
        for _ in 0..10 {
            last = breaker.failure(now, 1_000, 4_000, 1);
            now += last;
            assert_eq!(breaker.permit(now), Breaker::PROBE);
        }
        assert_eq!(last, 4_000);
    }
}
