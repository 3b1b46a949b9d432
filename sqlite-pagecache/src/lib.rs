//! SQLite's own page cache, behind a wrapper that keeps an upper bound on
//! the page numbers the cache holds, so that the truncation SQLite asks for
//! at the end of every write transaction costs nothing when there is
//! nothing to truncate.
//!
//! # Why
//!
//! When an insert splits a B-tree page, SQLite (`balance_nonroot`) puts the
//! new pages in ascending order by swapping their numbers, and parks one of
//! them for a moment under the number just past the lock-byte page (page
//! 262,145 with 4 KiB pages). The default page cache remembers the largest
//! number it ever held and, when the transaction ends, SQLite truncates the
//! cache to the database's size: finding that remembered number far above
//! the size, the default cache walks every hash bucket and every cached
//! page. Every transaction that splits a page (nearly every one that
//! inserts) then pays a walk of the whole cache: about 6 % of the single
//! writer's time on ingest and 15 % on reservations in the platform's
//! profiles, more the larger the cache.
//!
//! # How
//!
//! [`install`] registers, through `SQLITE_CONFIG_PCACHE2`, a page cache
//! whose every method forwards to SQLite's default one. It also keeps its
//! own bound ([`KeyBound`]): the largest page number fetched, plus the
//! numbers pages were moved to above that and have not left. A truncation
//! whose limit is above the bound has nothing to discard and is not
//! forwarded; any other is forwarded unchanged, so the default cache still
//! does every discard it would have done.
//!
//! Soundness rests on one fact of SQLite's page-cache interface: a page
//! enters a cache under a number only through `xFetch` (which returns it)
//! or `xRekey` (which gives it the new number). The bound sees both; calls
//! the default cache makes on its own (recycling a page, shrinking, a
//! discard on unpin) only ever remove pages. In debug builds every skipped
//! truncation is checked: it is forwarded anyway and the cache's page count
//! must not change (so the test suites, which run debug builds, exercise
//! the guard on every commit).
//!
//! What it does not change: the default cache still remembers the parking
//! number as its largest key, so a truncation that is forwarded (a rollback
//! that shrinks the database) still walks the whole cache, as before.
//!
//! It wraps whatever cache is registered when [`install`] runs, which in
//! this workspace is always SQLite's default one (nothing else registers a
//! cache).
//!
//! The crate also holds a VFS that gathers the WAL's frame writes
//! ([`wal`]).
//!
//! This crate is the one place of the workspace with `unsafe` code: it
//! implements C interfaces.

pub mod wal;

use std::ffi::{c_int, c_uint, c_void};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use libsqlite3_sys as ffi;

/// An upper bound on the page numbers a cache holds.
///
/// Calls for one cache come one at a time, serialised by the connection
/// that owns it (SQLite's default cache relies on the same for its own
/// state); the atomics and the mutex make the type safe to share anyway.
#[derive(Debug, Default)]
pub struct KeyBound {
    /// At least every number fetched since the last truncation below it.
    max: AtomicU32,
    /// Numbers above `max` that a page was moved to and has not left.
    parked: Mutex<Vec<u32>>,
}

impl KeyBound {
    /// A page was fetched (found or created) under `key`.
    pub fn fetched(&self, key: u32) {
        if key > self.max.load(Ordering::Relaxed) {
            self.max.fetch_max(key, Ordering::Relaxed);
        }
    }

    /// A page moved from `old` to `new`.
    pub fn rekeyed(&self, old: u32, new: u32) {
        let mut parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = parked.iter().position(|&key| key == old) {
            parked.swap_remove(at);
        }
        if new > self.max.load(Ordering::Relaxed) {
            parked.push(new);
        }
    }

    /// Whether a truncation to `limit` (discard every page numbered `limit`
    /// or above) may have something to discard. When it may, the caller
    /// forwards it and the bound drops below `limit`.
    pub fn truncate(&self, limit: u32) -> bool {
        let mut parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        let max = self.max.load(Ordering::Relaxed);
        let top = parked.iter().copied().fold(max, u32::max);
        if limit > top {
            return false;
        }
        self.max
            .fetch_min(limit.saturating_sub(1), Ordering::Relaxed);
        parked.retain(|&key| key < limit);
        true
    }
}

/// Truncations since start: how many were forwarded to SQLite's cache and
/// how many had nothing to do and were skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Forwarded to the default cache.
    pub truncations_forwarded: u64,
    /// Skipped: no page at or above the limit.
    pub truncations_skipped: u64,
}

static FORWARDED: AtomicU64 = AtomicU64::new(0);
static SKIPPED: AtomicU64 = AtomicU64::new(0);

/// Counts of truncations since the process started.
pub fn stats() -> Stats {
    Stats {
        truncations_forwarded: FORWARDED.load(Ordering::Relaxed),
        truncations_skipped: SKIPPED.load(Ordering::Relaxed),
    }
}

/// Why [`install`] did not register the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallError {
    /// [`DISABLE_VARIABLE`] asked for SQLite's default cache.
    Disabled,
    /// SQLite refused, with this result code: `SQLITE_MISUSE` (21) when it
    /// was already initialised in this process (a connection was opened
    /// before).
    Refused(i32),
}

impl std::fmt::Display for InstallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Disabled => write!(
                f,
                "{DISABLE_VARIABLE}=default: SQLite's default page cache stays in use"
            ),
            Self::Refused(code) => write!(
                f,
                "SQLite refused the page cache (code {code}); SQLite's default cache stays in use"
            ),
        }
    }
}

impl std::error::Error for InstallError {}

/// The environment variable that, set to `default`, keeps SQLite's default
/// page cache: the way back if this one is ever suspected, and the switch
/// for measuring the difference.
pub const DISABLE_VARIABLE: &str = "SQLITE_PAGE_CACHE";

/// Registers the cache for every SQLite connection this process opens
/// afterwards. Call it before the first connection: SQLite takes page-cache
/// settings only before it initialises, and changing them is not
/// thread-safe, so no other thread may be using SQLite while the first call
/// runs (every place that opens SQLite must call this first; concurrent
/// callers wait for the first call to finish). Later calls return the first
/// call's result. On an error SQLite's default cache stays in use, which is
/// correct, only slower.
pub fn install() -> Result<(), InstallError> {
    static RESULT: OnceLock<Result<(), InstallError>> = OnceLock::new();
    *RESULT.get_or_init(|| {
        if std::env::var(DISABLE_VARIABLE).is_ok_and(|value| value == "default") {
            return Err(InstallError::Disabled);
        }
        register()
    })
}

/// The default cache's methods, which every method here forwards to.
struct DefaultMethods(ffi::sqlite3_pcache_methods2);

// SAFETY: a table of C function pointers and SQLite's own argument pointer,
// written once before SQLite uses it and only read afterwards.
unsafe impl Send for DefaultMethods {}
// SAFETY: as above.
unsafe impl Sync for DefaultMethods {}

static DEFAULT: OnceLock<DefaultMethods> = OnceLock::new();

fn register() -> Result<(), InstallError> {
    let mut default = std::mem::MaybeUninit::<ffi::sqlite3_pcache_methods2>::zeroed();
    // SAFETY: GETPCACHE2 takes one pointer to a methods table to copy into;
    // `default` is one, zeroed and large enough.
    let code = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_GETPCACHE2, default.as_mut_ptr()) };
    if code != ffi::SQLITE_OK {
        return Err(InstallError::Refused(code));
    }
    // SAFETY: SQLite filled in the whole table.
    let default = unsafe { default.assume_init() };
    if default.xCreate.is_none() || default.xFetch.is_none() || default.xTruncate.is_none() {
        return Err(InstallError::Refused(ffi::SQLITE_ERROR));
    }
    let _ = DEFAULT.set(DefaultMethods(default));
    let methods = ffi::sqlite3_pcache_methods2 {
        iVersion: default.iVersion,
        pArg: std::ptr::null_mut(),
        xInit: Some(init),
        xShutdown: Some(shutdown),
        xCreate: Some(create),
        xCachesize: Some(cachesize),
        xPagecount: Some(pagecount),
        xFetch: Some(fetch),
        xUnpin: Some(unpin),
        xRekey: Some(rekey),
        xTruncate: Some(truncate),
        xDestroy: Some(destroy),
        xShrink: Some(shrink),
    };
    // SAFETY: PCACHE2 takes one pointer to a methods table, which SQLite
    // copies; every method in it is defined below.
    let code = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_PCACHE2, &methods) };
    if code != ffi::SQLITE_OK {
        return Err(InstallError::Refused(code));
    }
    Ok(())
}

/// One cache: the default cache's instance and the bound on its numbers.
struct Cache {
    inner: *mut ffi::sqlite3_pcache,
    bound: KeyBound,
}

fn methods() -> &'static ffi::sqlite3_pcache_methods2 {
    // Set before SQLite can call any method of ours (`register`).
    &DEFAULT
        .get()
        .expect("the page cache's methods are registered after the defaults are kept")
        .0
}

/// # Safety
/// `p` came from [`create`] and has not been destroyed.
unsafe fn cache<'a>(p: *mut ffi::sqlite3_pcache) -> &'a Cache {
    // SAFETY: per the function's contract, `p` is a live `Box<Cache>`.
    unsafe { &*(p as *const Cache) }
}

unsafe extern "C" fn init(_arg: *mut c_void) -> c_int {
    let m = methods();
    match m.xInit {
        // SAFETY: the default cache's own init with its own argument.
        Some(f) => unsafe { f(m.pArg) },
        None => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn shutdown(_arg: *mut c_void) {
    let m = methods();
    if let Some(f) = m.xShutdown {
        // SAFETY: the default cache's own shutdown with its own argument.
        unsafe { f(m.pArg) }
    }
}

unsafe extern "C" fn create(
    page_size: c_int,
    extra: c_int,
    purgeable: c_int,
) -> *mut ffi::sqlite3_pcache {
    let Some(f) = methods().xCreate else {
        return std::ptr::null_mut();
    };
    // SAFETY: forwarded as SQLite called it.
    let inner = unsafe { f(page_size, extra, purgeable) };
    if inner.is_null() {
        return inner;
    }
    Box::into_raw(Box::new(Cache {
        inner,
        bound: KeyBound::default(),
    }))
    .cast()
}

unsafe extern "C" fn cachesize(p: *mut ffi::sqlite3_pcache, pages: c_int) {
    if let Some(f) = methods().xCachesize {
        // SAFETY: `p` is ours (SQLite passes back what `create` returned).
        unsafe { f(cache(p).inner, pages) }
    }
}

unsafe extern "C" fn pagecount(p: *mut ffi::sqlite3_pcache) -> c_int {
    match methods().xPagecount {
        // SAFETY: as in `cachesize`.
        Some(f) => unsafe { f(cache(p).inner) },
        None => 0,
    }
}

unsafe extern "C" fn fetch(
    p: *mut ffi::sqlite3_pcache,
    key: c_uint,
    create: c_int,
) -> *mut ffi::sqlite3_pcache_page {
    let Some(f) = methods().xFetch else {
        return std::ptr::null_mut();
    };
    // SAFETY: as in `cachesize`.
    let cache = unsafe { cache(p) };
    // SAFETY: forwarded to the default cache's instance.
    let page = unsafe { f(cache.inner, key, create) };
    if !page.is_null() {
        cache.bound.fetched(key);
    }
    page
}

unsafe extern "C" fn unpin(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    discard: c_int,
) {
    if let Some(f) = methods().xUnpin {
        // SAFETY: as in `cachesize`.
        unsafe { f(cache(p).inner, page, discard) }
    }
}

unsafe extern "C" fn rekey(
    p: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    old: c_uint,
    new: c_uint,
) {
    if let Some(f) = methods().xRekey {
        // SAFETY: as in `cachesize`.
        let cache = unsafe { cache(p) };
        // SAFETY: forwarded to the default cache's instance.
        unsafe { f(cache.inner, page, old, new) };
        cache.bound.rekeyed(old, new);
    }
}

unsafe extern "C" fn truncate(p: *mut ffi::sqlite3_pcache, limit: c_uint) {
    let Some(f) = methods().xTruncate else {
        return;
    };
    // SAFETY: as in `cachesize`.
    let cache = unsafe { cache(p) };
    if cache.bound.truncate(limit) {
        FORWARDED.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded to the default cache's instance.
        unsafe { f(cache.inner, limit) }
    } else {
        SKIPPED.fetch_add(1, Ordering::Relaxed);
        // The guard checked: the truncation skipped would have discarded
        // nothing (a failure aborts the process: no unwinding out of C).
        #[cfg(debug_assertions)]
        if let Some(count) = methods().xPagecount {
            // SAFETY: the default cache's instance, as above.
            let before = unsafe { count(cache.inner) };
            // SAFETY: as above.
            unsafe { f(cache.inner, limit) };
            // SAFETY: as above.
            let after = unsafe { count(cache.inner) };
            assert_eq!(
                before, after,
                "a skipped page-cache truncation to {limit} had pages to discard"
            );
        }
    }
}

unsafe extern "C" fn destroy(p: *mut ffi::sqlite3_pcache) {
    // SAFETY: `p` came from `create` (a `Box<Cache>`) and SQLite destroys a
    // cache once, after its last use.
    let cache = unsafe { Box::from_raw(p as *mut Cache) };
    if let Some(f) = methods().xDestroy {
        // SAFETY: the default cache's instance, destroyed once.
        unsafe { f(cache.inner) }
    }
}

unsafe extern "C" fn shrink(p: *mut ffi::sqlite3_pcache) {
    if let Some(f) = methods().xShrink {
        // SAFETY: as in `cachesize`.
        unsafe { f(cache(p).inner) }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::KeyBound;

    /// The number just past the lock-byte page with 4 KiB pages.
    const PARKING: u32 = 262_145;

    #[test]
    fn a_split_that_parks_a_page_leaves_nothing_to_truncate() {
        let bound = KeyBound::default();
        for key in 1..=100 {
            bound.fetched(key);
        }
        // Pages 50 and 60 swap numbers through the parking number.
        bound.rekeyed(50, PARKING);
        bound.rekeyed(60, 50);
        bound.rekeyed(PARKING, 60);
        assert!(!bound.truncate(101), "nothing is above the database's size");
        // A transaction that grew the database and rolled back does.
        bound.fetched(130);
        assert!(bound.truncate(101));
        assert!(!bound.truncate(101));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Fetch(u32),
        Rekey(usize, u32),
        Discard(usize),
        Truncate(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        let key = prop_oneof![4 => 1u32..80, 1 => Just(PARKING)];
        prop_oneof![
            4 => (1u32..80).prop_map(Op::Fetch),
            3 => (any::<usize>(), key).prop_map(|(at, new)| Op::Rekey(at, new)),
            1 => any::<usize>().prop_map(Op::Discard),
            2 => prop_oneof![1u32..90, PARKING - 2..PARKING + 3].prop_map(Op::Truncate),
        ]
    }

    proptest! {
        /// Against the set of numbers really cached: a truncation is
        /// skipped only when no cached page is at or above its limit.
        #[test]
        fn never_skips_a_truncation_with_something_to_discard(ops in prop::collection::vec(op(), 1..200)) {
            let bound = KeyBound::default();
            let mut cached = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Fetch(key) => {
                        cached.insert(key);
                        bound.fetched(key);
                    }
                    Op::Rekey(at, new) => {
                        let Some(&old) = cached.iter().nth(at % cached.len().max(1)) else {
                            continue;
                        };
                        if old == new {
                            continue;
                        }
                        // SQLite looks up the new number first (a fetch)
                        // and drops the page it finds there.
                        if cached.remove(&new) {
                            bound.fetched(new);
                        }
                        cached.remove(&old);
                        cached.insert(new);
                        bound.rekeyed(old, new);
                    }
                    Op::Discard(at) => {
                        if let Some(&key) = cached.iter().nth(at % cached.len().max(1)) {
                            cached.remove(&key);
                        }
                    }
                    Op::Truncate(limit) => {
                        let needed = cached.iter().any(|&key| key >= limit);
                        let forwarded = bound.truncate(limit);
                        prop_assert!(forwarded || !needed, "skipped a truncation to {} with {:?} cached", limit, cached);
                        cached.retain(|&key| key < limit);
                    }
                }
            }
        }
    }
}
