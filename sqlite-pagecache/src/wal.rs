//! A VFS over the process's default one whose WAL files gather appended
//! frames in memory and write them in large pieces.
//!
//! # Why
//!
//! SQLite writes each WAL frame with two `pwrite` calls, its 24-byte header
//! and then the page, and a frame (4,120 bytes with 4 KiB pages) straddles
//! the file's pages, so a commit of a thousand random pages is two thousand
//! system calls, each taking the inode's lock and walking the kernel's
//! buffered-write path. On the platform's ingest path that was 18 % of the
//! single writer's time (`perf`, DWARF call graphs), the largest share of
//! the commit.
//!
//! # How
//!
//! [`install`] registers a copy of the default VFS (every method the
//! same) under [`NAME`], whose `xOpen` wraps the files it opens with
//! `SQLITE_OPEN_WAL`; other files are the default VFS's own. A wrapped
//! file keeps the bytes written since its last flush when they continue
//! the buffered run (an append) or fall inside it (SQLite rewriting a
//! frame's checksum), and writes them with one call when anything else
//! touches the file: a read, a sync, a truncation, its size, a file
//! control, a memory map, its closing, a write elsewhere, or a full buffer.
//!
//! # What it relies on
//!
//! Other connections read a WAL frame only once the wal-index (shared
//! memory, not this file) says it exists, and SQLite publishes a commit's
//! frames there after the commit's sync when `synchronous` is `FULL` (or
//! `EXTRA`): the sync flushes first. Under `NORMAL` a commit syncs nothing
//! and its frames could stay here while readers look for them: **only
//! connections with `synchronous = FULL` or `EXTRA` may use this VFS**
//! (the platform opens only its single writer with it, which is `FULL`).
//! A crash loses at most frames not yet synced, which belong to a
//! transaction that has not committed, exactly as without the buffer.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::OnceLock;

use libsqlite3_sys as ffi;

/// The VFS's registered name (for `?vfs=` or sqlx's `vfs` option).
pub const NAME: &str = "buffered-wal";
const NAME_C: &CStr = c"buffered-wal";

/// Bytes gathered before a write (and the largest write gathered).
const CAPACITY: usize = 1 << 20;

/// The environment variable that, set to `direct`, keeps the WAL's frames
/// written one by one (no VFS is registered): the way back if this is ever
/// suspected, and the switch for measuring the difference.
pub const DISABLE_VARIABLE: &str = "SQLITE_WAL_WRITES";

/// What [`install`] could not do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallError {
    /// [`DISABLE_VARIABLE`] asked for direct writes.
    Disabled,
    /// SQLite has no default VFS, or its initialisation failed.
    NoDefault,
    /// SQLite refused to register the VFS, with this result code.
    Refused(i32),
}

impl std::fmt::Display for InstallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Disabled => write!(
                f,
                "{DISABLE_VARIABLE}=direct: the WAL's frames are written one by one"
            ),
            Self::NoDefault => write!(f, "SQLite has no default VFS to wrap"),
            Self::Refused(code) => write!(f, "SQLite refused the WAL VFS (code {code})"),
        }
    }
}

impl std::error::Error for InstallError {}

/// The default VFS this one forwards to.
struct Default(*mut ffi::sqlite3_vfs);

// SAFETY: a pointer to SQLite's static default VFS, which lives as long as
// the process and is only read.
unsafe impl Send for Default {}
// SAFETY: as above.
unsafe impl Sync for Default {}

static DEFAULT: OnceLock<Default> = OnceLock::new();

/// Registers the VFS (not as the default: connections ask for it by
/// [`NAME`]). Safe to call from several threads and more than once; later
/// calls return the first call's result. Call it after the page cache's
/// [`crate::install`], which must come before SQLite initialises.
pub fn install() -> Result<(), InstallError> {
    static RESULT: OnceLock<Result<(), InstallError>> = OnceLock::new();
    *RESULT.get_or_init(|| {
        if std::env::var(DISABLE_VARIABLE).is_ok_and(|value| value == "direct") {
            return Err(InstallError::Disabled);
        }
        register()
    })
}

fn register() -> Result<(), InstallError> {
    // SAFETY: a null name asks for the default VFS (SQLite initialises
    // itself first if it has not).
    let default = unsafe { ffi::sqlite3_vfs_find(std::ptr::null()) };
    if default.is_null() {
        return Err(InstallError::NoDefault);
    }
    let _ = DEFAULT.set(Default(default));
    // SAFETY: `default` is SQLite's registered default VFS, valid for the
    // process's life; it is copied, not changed.
    let mut vfs: ffi::sqlite3_vfs = unsafe { std::ptr::read(default) };
    let file_size = usize::try_from(vfs.szOsFile).unwrap_or(0);
    vfs.szOsFile =
        c_int::try_from(file_size.max(std::mem::size_of::<WalFile>())).unwrap_or(vfs.szOsFile);
    vfs.zName = NAME_C.as_ptr();
    vfs.pNext = std::ptr::null_mut();
    vfs.xOpen = Some(open);
    // Registered once for the process's life.
    let vfs = Box::leak(Box::new(vfs));
    // SAFETY: `vfs` is a complete VFS living as long as the process.
    let code = unsafe { ffi::sqlite3_vfs_register(vfs, 0) };
    if code == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(InstallError::Refused(code))
    }
}

fn default_vfs() -> *mut ffi::sqlite3_vfs {
    DEFAULT.get().map_or(std::ptr::null_mut(), |d| d.0)
}

/// The bytes written to a WAL file since its last flush: one run starting
/// at `start`.
#[derive(Debug, Default)]
pub struct Gathered {
    start: i64,
    data: Vec<u8>,
}

impl Gathered {
    /// Takes `bytes` for `offset`, or writes what it holds first with
    /// `write` (and then `bytes` itself when they are too many to gather).
    /// Returns `write`'s error code, if it failed.
    pub fn write(
        &mut self,
        bytes: &[u8],
        offset: i64,
        write: &mut dyn FnMut(&[u8], i64) -> c_int,
    ) -> c_int {
        let len = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        if !self.data.is_empty() {
            let end = self.start + i64::try_from(self.data.len()).unwrap_or(i64::MAX);
            if offset == end && self.data.len() + bytes.len() <= CAPACITY {
                self.data.extend_from_slice(bytes);
                return ffi::SQLITE_OK;
            }
            if offset >= self.start && offset + len <= end {
                let at = usize::try_from(offset - self.start).unwrap_or(0);
                self.data[at..at + bytes.len()].copy_from_slice(bytes);
                return ffi::SQLITE_OK;
            }
            let code = self.flush(write);
            if code != ffi::SQLITE_OK {
                return code;
            }
        }
        if bytes.len() >= CAPACITY {
            return write(bytes, offset);
        }
        if self.data.capacity() == 0 {
            self.data.reserve_exact(CAPACITY);
        }
        self.start = offset;
        self.data.extend_from_slice(bytes);
        ffi::SQLITE_OK
    }

    /// Writes what it holds with `write` and forgets it (also when the
    /// write fails: SQLite then fails the transaction the bytes were for).
    pub fn flush(&mut self, write: &mut dyn FnMut(&[u8], i64) -> c_int) -> c_int {
        if self.data.is_empty() {
            return ffi::SQLITE_OK;
        }
        let code = write(&self.data, self.start);
        self.data.clear();
        code
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// A WAL file as SQLite sees it: the methods below, the default VFS's
/// file (allocated apart) and the gathered bytes.
#[repr(C)]
struct WalFile {
    base: ffi::sqlite3_file,
    inner: *mut ffi::sqlite3_file,
    /// The allocation `inner` points into (u64 words, for alignment).
    inner_words: usize,
    gathered: *mut Gathered,
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let default = default_vfs();
    if default.is_null() {
        return ffi::SQLITE_ERROR;
    }
    // SAFETY: the default VFS is valid for the process's life.
    let (default_open, inner_size) = unsafe { ((*default).xOpen, (*default).szOsFile) };
    let Some(default_open) = default_open else {
        return ffi::SQLITE_ERROR;
    };
    if flags & ffi::SQLITE_OPEN_WAL == 0 {
        // SAFETY: `file` has room for the default VFS's file (szOsFile is
        // at least its size), so the default VFS opens it in place.
        return unsafe { default_open(default, name, file, flags, out_flags) };
    }
    let words = usize::try_from(inner_size).unwrap_or(0).div_ceil(8).max(1);
    let inner_alloc: *mut u64 = Box::into_raw(vec![0u64; words].into_boxed_slice()).cast();
    let inner: *mut ffi::sqlite3_file = inner_alloc.cast();
    // SAFETY: `inner` is zeroed, aligned and `inner_size` bytes long.
    let code = unsafe { default_open(default, name, inner, flags, out_flags) };
    if code != ffi::SQLITE_OK {
        // SAFETY: a failed open leaves nothing to close; the allocation is
        // the one made above.
        unsafe { free_inner(inner_alloc, words) };
        // SAFETY: SQLite reads `pMethods` of a failed open to know that
        // nothing needs closing.
        unsafe { (*file).pMethods = std::ptr::null() };
        return code;
    }
    let wal = WalFile {
        base: ffi::sqlite3_file {
            pMethods: &raw const METHODS,
        },
        inner,
        inner_words: words,
        gathered: Box::into_raw(Box::default()),
    };
    // SAFETY: `file` has room for a `WalFile` (szOsFile is at least its
    // size) and SQLite aligns it for pointers.
    unsafe { std::ptr::write(file.cast::<WalFile>(), wal) };
    ffi::SQLITE_OK
}

/// # Safety
/// `alloc` and `words` are those of a boxed slice made in `open`.
unsafe fn free_inner(alloc: *mut u64, words: usize) {
    // SAFETY: rebuilt from the same pointer and length.
    drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(alloc, words)) });
}

/// # Safety
/// `file` is one `open` wrapped (SQLite passes back what it opened).
unsafe fn wal<'a>(file: *mut ffi::sqlite3_file) -> &'a mut WalFile {
    // SAFETY: see the function's contract.
    unsafe { &mut *file.cast::<WalFile>() }
}

/// The default VFS's methods of the wrapped file.
///
/// # Safety
/// `inner` is an open file of the default VFS.
unsafe fn inner_methods<'a>(inner: *mut ffi::sqlite3_file) -> &'a ffi::sqlite3_io_methods {
    // SAFETY: an open file has its methods.
    unsafe { &*(*inner).pMethods }
}

/// Writes the gathered bytes through the default VFS.
///
/// # Safety
/// `file` is one `open` wrapped.
unsafe fn flush(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: the caller's contract.
    let wal = unsafe { wal(file) };
    // SAFETY: `gathered` lives until `close`.
    let gathered = unsafe { &mut *wal.gathered };
    let inner = wal.inner;
    gathered.flush(&mut |bytes, offset| write_inner(inner, bytes, offset))
}

/// Bytes per write handed to the default VFS: the unix VFS writes at most
/// 128 KiB - 1 bytes per call (it masks the length to 17 bits and reports
/// the rest as a full disk).
const WRITE_PIECE: usize = 64 * 1024;

fn write_inner(inner: *mut ffi::sqlite3_file, bytes: &[u8], offset: i64) -> c_int {
    // SAFETY: `inner` is the open file of a wrapped WAL file.
    let Some(f) = (unsafe { inner_methods(inner) }).xWrite else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let mut at = offset;
    for piece in bytes.chunks(WRITE_PIECE) {
        let Ok(amount) = c_int::try_from(piece.len()) else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        // SAFETY: the default VFS's write with its own file and a valid
        // buffer of `amount` bytes.
        let code = unsafe { f(inner, piece.as_ptr().cast(), amount, at) };
        if code != ffi::SQLITE_OK {
            return code;
        }
        at += i64::from(amount);
    }
    ffi::SQLITE_OK
}

/// Flushes, then forwards the call to the default VFS's method `$method`.
macro_rules! flush_then {
    ($file:ident, $method:ident, $missing:expr, |$f:ident, $inner:ident| $call:expr) => {{
        // SAFETY: SQLite calls with a file `open` wrapped.
        let code = unsafe { flush($file) };
        if code != ffi::SQLITE_OK {
            return code;
        }
        forward!($file, $method, $missing, |$f, $inner| $call)
    }};
}

/// Forwards the call to the default VFS's method `$method`.
macro_rules! forward {
    ($file:ident, $method:ident, $missing:expr, |$f:ident, $inner:ident| $call:expr) => {{
        // SAFETY: SQLite calls with a file `open` wrapped.
        let $inner = unsafe { wal($file) }.inner;
        // SAFETY: `inner` is open until `close`.
        match unsafe { inner_methods($inner) }.$method {
            // SAFETY: the default VFS's own method with its own file and
            // SQLite's arguments.
            Some($f) => unsafe { $call },
            None => $missing,
        }
    }};
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes a file `open` wrapped, once.
    let flushed = unsafe { flush(file) };
    // SAFETY: as above.
    let wal = unsafe { wal(file) };
    let inner = wal.inner;
    // SAFETY: `inner` is open.
    let closed = match unsafe { inner_methods(inner) }.xClose {
        // SAFETY: the default VFS's close of its own file.
        Some(f) => unsafe { f(inner) },
        None => ffi::SQLITE_OK,
    };
    // SAFETY: both made in `open`, freed once here.
    unsafe {
        drop(Box::from_raw(wal.gathered));
        free_inner(inner.cast(), wal.inner_words);
    }
    wal.gathered = std::ptr::null_mut();
    wal.inner = std::ptr::null_mut();
    if flushed != ffi::SQLITE_OK {
        flushed
    } else {
        closed
    }
}

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    flush_then!(file, xRead, ffi::SQLITE_IOERR_READ, |f, inner| f(
        inner, buf, amount, offset
    ))
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    let Ok(len) = usize::try_from(amount) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    // SAFETY: SQLite hands `amount` readable bytes at `buf`.
    let bytes = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) };
    // SAFETY: SQLite calls with a file `open` wrapped.
    let wal = unsafe { wal(file) };
    let inner = wal.inner;
    // SAFETY: `gathered` lives until `close`.
    let gathered = unsafe { &mut *wal.gathered };
    gathered.write(bytes, offset, &mut |bytes, offset| {
        write_inner(inner, bytes, offset)
    })
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    flush_then!(file, xTruncate, ffi::SQLITE_IOERR_TRUNCATE, |f, inner| f(
        inner, size
    ))
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    flush_then!(file, xSync, ffi::SQLITE_IOERR_FSYNC, |f, inner| f(
        inner, flags
    ))
}

unsafe extern "C" fn file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    flush_then!(file, xFileSize, ffi::SQLITE_IOERR_FSTAT, |f, inner| f(
        inner, size
    ))
}

unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    forward!(file, xLock, ffi::SQLITE_OK, |f, inner| f(inner, level))
}

unsafe extern "C" fn unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    forward!(file, xUnlock, ffi::SQLITE_OK, |f, inner| f(inner, level))
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    forward!(file, xCheckReservedLock, ffi::SQLITE_OK, |f, inner| f(
        inner, out
    ))
}

unsafe extern "C" fn file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    flush_then!(file, xFileControl, ffi::SQLITE_NOTFOUND, |f, inner| f(
        inner, op, arg
    ))
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    forward!(file, xSectorSize, 4096, |f, inner| f(inner))
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    forward!(file, xDeviceCharacteristics, 0, |f, inner| f(inner))
}

unsafe extern "C" fn shm_map(
    file: *mut ffi::sqlite3_file,
    region: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    forward!(file, xShmMap, ffi::SQLITE_IOERR_SHMMAP, |f, inner| f(
        inner, region, size, extend, out
    ))
}

unsafe extern "C" fn shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    forward!(file, xShmLock, ffi::SQLITE_IOERR_SHMLOCK, |f, inner| f(
        inner, offset, n, flags
    ))
}

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    forward!(file, xShmBarrier, (), |f, inner| f(inner))
}

unsafe extern "C" fn shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    forward!(file, xShmUnmap, ffi::SQLITE_OK, |f, inner| f(inner, delete))
}

unsafe extern "C" fn fetch(
    file: *mut ffi::sqlite3_file,
    offset: ffi::sqlite3_int64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: SQLite's out pointer; no map means "read instead".
    unsafe { *out = std::ptr::null_mut() };
    flush_then!(file, xFetch, ffi::SQLITE_OK, |f, inner| f(
        inner, offset, amount, out
    ))
}

unsafe extern "C" fn unfetch(
    file: *mut ffi::sqlite3_file,
    offset: ffi::sqlite3_int64,
    page: *mut c_void,
) -> c_int {
    forward!(file, xUnfetch, ffi::SQLITE_OK, |f, inner| f(
        inner, offset, page
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Applies `writes` to a file model directly and through a
    /// [`Gathered`] (flushed at the end): the files must be the same.
    fn same_file(writes: &[(i64, Vec<u8>)]) {
        let apply = |file: &mut Vec<u8>, bytes: &[u8], offset: i64| {
            let at = usize::try_from(offset).expect("offset");
            if file.len() < at + bytes.len() {
                file.resize(at + bytes.len(), 0);
            }
            file[at..at + bytes.len()].copy_from_slice(bytes);
        };
        let mut direct = Vec::new();
        let mut gathered_file = Vec::new();
        let mut calls = 0;
        let mut gathered = Gathered::default();
        for (offset, bytes) in writes {
            apply(&mut direct, bytes, *offset);
            let code = gathered.write(bytes, *offset, &mut |bytes, offset| {
                calls += 1;
                apply(&mut gathered_file, bytes, offset);
                ffi::SQLITE_OK
            });
            assert_eq!(code, ffi::SQLITE_OK);
        }
        let code = gathered.flush(&mut |bytes, offset| {
            calls += 1;
            apply(&mut gathered_file, bytes, offset);
            ffi::SQLITE_OK
        });
        assert_eq!(code, ffi::SQLITE_OK);
        assert_eq!(direct, gathered_file);
        assert!(calls <= writes.len());
    }

    /// Frames appended one after the other become one write.
    #[test]
    fn appended_frames_are_written_at_once() {
        let mut calls = 0;
        let mut gathered = Gathered::default();
        let mut offset = 32;
        for frame in 0..100u8 {
            for part in [vec![frame; 24], vec![frame; 4096]] {
                let len = i64::try_from(part.len()).expect("len");
                let code = gathered.write(&part, offset, &mut |_, _| {
                    calls += 1;
                    ffi::SQLITE_OK
                });
                assert_eq!(code, ffi::SQLITE_OK);
                offset += len;
            }
        }
        assert_eq!(calls, 0);
        gathered.flush(&mut |bytes, at| {
            calls += 1;
            assert_eq!(at, 32);
            assert_eq!(bytes.len(), 100 * 4120);
            ffi::SQLITE_OK
        });
        assert_eq!(calls, 1);
    }

    /// A failed write is reported and nothing stays gathered.
    #[test]
    fn a_failed_flush_is_reported_and_forgotten() {
        let mut gathered = Gathered::default();
        let ok = gathered.write(&[1; 10], 0, &mut |_, _| ffi::SQLITE_OK);
        assert_eq!(ok, ffi::SQLITE_OK);
        let failed = gathered.write(&[2; 10], 100, &mut |_, _| ffi::SQLITE_FULL);
        assert_eq!(failed, ffi::SQLITE_FULL);
        assert!(gathered.is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Appends, rewrites inside the gathered run, writes elsewhere and
        /// writes too large to gather leave the file as direct writes do.
        #[test]
        fn gathering_leaves_the_file_as_direct_writes(
            writes in proptest::collection::vec(
                (0i64..3_000_000, proptest::collection::vec(any::<u8>(), 1..5_000), any::<bool>()),
                1..60,
            ),
        ) {
            // Half the writes continue the previous one (the WAL's pattern).
            let mut next = 0;
            let writes: Vec<(i64, Vec<u8>)> = writes
                .into_iter()
                .map(|(offset, bytes, append)| {
                    let at = if append { next } else { offset };
                    next = at + i64::try_from(bytes.len()).expect("len");
                    (at, bytes)
                })
                .collect();
            same_file(&writes);
        }
    }

    #[test]
    fn a_write_larger_than_the_buffer_goes_straight_through() {
        same_file(&[
            (0, vec![1; 100]),
            (100, vec![2; CAPACITY + 10]),
            (50, vec![3; 10]),
        ]);
    }
}
