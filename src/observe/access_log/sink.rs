//! Where access log lines wait for the disk, and the thread that writes them.
//!
//! A sink is a few buffers ("slots"), each behind its own lock. A request thread writes its
//! line straight into the slot it was given (a thread keeps its slot, so slots are
//! uncontended while there are at least as many as threads) and returns: no allocation per
//! line, no queue node, no wake-up of the writer. One writer thread per destination sweeps the
//! slots every few milliseconds: it swaps each slot's buffer for an empty one it keeps (the
//! lock is held for that swap only, never for I/O) and writes what it took in one `write`.
//!
//! A request never waits for the disk: a slot that already holds its share of the queue's
//! bytes (the disk stalled, or the file cannot be written) drops the line and counts it in
//! `loom_access_log_dropped_total`.
//!
//! Sinks are shared process-wide by destination ([`sink`]), so a config reload that keeps the
//! same destination keeps the same writer and what it holds. At exit (`std::process::exit`
//! after a graceful stop or an upgrade's handoff) an `atexit` hook writes what the slots
//! still hold, so the last requests' lines are not lost.
//!
//! # Rotation
//!
//! logrotate renames the file and then signals the gateway (SIGUSR1, or SIGHUP which also
//! reloads the config). [`reopen_all`] bumps a generation; each writer compares it before
//! each sweep and, when it changed, opens the configured path again, which creates the new
//! file. What was written before is in the old file. Stdout is never reopened.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Once, PoisonError, TryLockError, Weak};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crate::observe::metrics;

/// Bytes a sink holds across its slots before new lines are dropped: at ~350 bytes a line
/// about 24,000 lines, over a second of a busy gateway's traffic while the disk stalls.
const QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// The least a slot may hold, so that a machine with many threads (and so many slots) still
/// buffers a sweep interval of a busy thread's lines.
const MIN_SLOT_BYTES: usize = 1024 * 1024;

/// At most this many slots: beyond it threads share slots (a short wait on a lock held for
/// one line's formatting) rather than the writer sweeping ever more buffers.
const MAX_SLOTS: usize = 64;

/// How long the writer waits between sweeps while lines keep coming: the most a line waits
/// under load, and what sets how many lines one `write` carries.
const BUSY_SWEEP_INTERVAL: Duration = Duration::from_millis(10);

/// How long an idle writer (its last sweep found nothing) waits before the next sweep.
const IDLE_SWEEP_INTERVAL: Duration = Duration::from_millis(50);

/// A file that cannot be opened or written is retried at most this often, so that a full or
/// read-only disk costs one failed open per second, not one per sweep.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// How long the exit hook waits for a writer that is in the middle of a sweep: a writer stuck
/// on a stalled disk must not keep the process from exiting.
const EXIT_WAIT: Duration = Duration::from_secs(1);

/// Bumped by [`reopen_all`]; each writer remembers the value it opened its file with.
static REOPEN_GENERATION: AtomicU64 = AtomicU64::new(0);

/// The sinks in use, by destination. Locked only when a config snapshot is built and at exit.
/// Held weakly: when no snapshot uses a destination any more its sink drops, and its writer
/// writes what is left and ends (closing the file).
static SINKS: LazyLock<Mutex<HashMap<AccessLogDestination, Weak<AccessLogSink>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AccessLogDestination {
    Stdout,
    /// Opened for appending and created (mode 0640, less the umask) when missing. The
    /// parent directory must exist: creating directories is the deployment's job.
    File(PathBuf),
}

impl fmt::Display for AccessLogDestination {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessLogDestination::Stdout => formatter.write_str("stdout"),
            AccessLogDestination::File(path) => write!(formatter, "{}", path.display()),
        }
    }
}

/// The sink for `destination`, starting its writer thread on first use. Later calls with an
/// equal destination return the same sink, so reloads keep the writer and what it holds.
///
/// When the thread cannot be started the error is logged and a sink that drops (and
/// counts) every line is returned; it is not remembered, so the next reload tries again.
pub fn sink(destination: &AccessLogDestination) -> Arc<AccessLogSink> {
    // The map stays consistent even if a holder panicked: entries are inserted whole.
    let mut sinks = SINKS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(existing) = sinks.get(destination).and_then(Weak::upgrade) {
        return existing;
    }
    sinks.retain(|_, sink| sink.strong_count() > 0);
    match AccessLogSink::start(destination.clone(), slot_count(), QUEUE_BYTES) {
        Ok(started) => {
            let started = Arc::new(started);
            sinks.insert(destination.clone(), Arc::downgrade(&started));
            register_exit_hook();
            started
        }
        Err(error) => {
            log::error!(
                "access log {destination}: cannot start the writer thread, its lines are dropped: {error}"
            );
            Arc::new(AccessLogSink::without_writer(destination.clone(), 1, 0))
        }
    }
}

/// Asks every file writer to reopen its path before its next sweep (logrotate's
/// `postrotate`). Returns at once; the reopen happens on the writer threads.
pub fn reopen_all() {
    // Only the change of value matters; no other memory is published through it.
    REOPEN_GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Two slots per CPU, as a power of two so that picking one is a mask.
fn slot_count() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    (cpus * 2).next_power_of_two().min(MAX_SLOTS)
}

/// The handle request threads write through. Dropping the last one lets the writer write
/// what the slots hold and exit.
pub struct AccessLogSink {
    shared: Arc<SinkShared>,
}

impl fmt::Debug for AccessLogSink {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("AccessLogSink")
            .field("destination", &self.shared.destination)
            .finish_non_exhaustive()
    }
}

/// What the request threads and the writer share.
struct SinkShared {
    destination: AccessLogDestination,
    /// A power of two long.
    slots: Box<[Slot]>,
    /// Bytes one slot may hold before it drops lines.
    slot_limit: usize,
    /// Locked by the writer thread for a sweep, and by the exit hook.
    writer: Mutex<Writer>,
    /// Set when a writer thread runs: a sink without one drops every line at once.
    has_writer: bool,
    /// Set when the last handle is gone: the writer's next sweep is its last.
    closed: AtomicBool,
    /// The writer thread, to wake it when the sink closes.
    writer_thread: std::sync::OnceLock<Thread>,
    counters: SinkCounters,
}

/// One buffer of lines. Aligned to its own cache lines so that two threads writing to
/// neighbouring slots do not share one.
#[repr(align(128))]
struct Slot {
    lines: Mutex<SlotLines>,
}

#[derive(Default)]
struct SlotLines {
    bytes: Vec<u8>,
    count: u64,
}

/// This sink's own counts, besides the process-wide Prometheus counters, so that one
/// destination's losses can be told apart (and tested) without global state.
#[derive(Debug, Default)]
struct SinkCounters {
    dropped: AtomicU64,
    written: AtomicU64,
}

impl SinkCounters {
    fn count_dropped(&self, lines: u64) {
        if lines == 0 {
            return;
        }
        self.dropped.fetch_add(lines, Ordering::Relaxed);
        metrics::metrics().access_log_dropped_total.inc_by(lines);
    }

    fn count_written(&self, lines: u64) {
        if lines == 0 {
            return;
        }
        self.written.fetch_add(lines, Ordering::Relaxed);
        metrics::metrics().access_log_lines_total.inc_by(lines);
    }
}

/// Hands each thread a slot index once, round robin: threads spread over the slots.
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's slot index (before masking), or `usize::MAX` before its first line.
    static THREAD_SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn thread_slot() -> usize {
    let index = THREAD_SLOT.get();
    if index != usize::MAX {
        return index;
    }
    let index = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) & (usize::MAX >> 1);
    THREAD_SLOT.set(index);
    index
}

/// The lock of a slot or of the writer. A panic while one was held cannot leave it
/// inconsistent for our purposes (a line is appended whole or cut short, and a cut line is
/// still followed by a newline from the next), so a poisoned lock is used as it is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl AccessLogSink {
    /// Appends one line, written by `write_line` straight into this thread's slot. A newline
    /// ends it if `write_line` did not; a line it leaves empty is not written. Never waits for
    /// the disk: a full slot, or a sink without a writer, drops the line and counts it.
    pub fn append_with(&self, write_line: impl FnOnce(&mut Vec<u8>)) {
        let shared = &*self.shared;
        if !shared.has_writer {
            shared.counters.count_dropped(1);
            return;
        }
        let slot = &shared.slots[thread_slot() & (shared.slots.len() - 1)];
        let mut lines = lock(&slot.lines);
        if lines.bytes.len() >= shared.slot_limit {
            drop(lines);
            shared.counters.count_dropped(1);
            return;
        }
        let start = lines.bytes.len();
        write_line(&mut lines.bytes);
        if lines.bytes.len() == start {
            return;
        }
        if lines.bytes.last() != Some(&b'\n') {
            lines.bytes.push(b'\n');
        }
        lines.count += 1;
    }

    /// Appends `line` as it is (see [`AccessLogSink::append_with`]).
    #[cfg(test)]
    pub fn append(&self, line: &[u8]) {
        self.append_with(|buffer| buffer.extend_from_slice(line));
    }

    /// Lines this sink has dropped: slots full, no writer, or the file not writable.
    pub fn dropped_lines(&self) -> u64 {
        self.shared.counters.dropped.load(Ordering::Relaxed)
    }

    /// Lines this sink's writer has written to its destination.
    pub fn written_lines(&self) -> u64 {
        self.shared.counters.written.load(Ordering::Relaxed)
    }

    /// A sink with its own writer thread, not shared through [`sink`]: `slots` buffers (a
    /// power of two) holding `queue_bytes` between them.
    pub(crate) fn start(
        destination: AccessLogDestination,
        slots: usize,
        queue_bytes: usize,
    ) -> io::Result<AccessLogSink> {
        let slot_limit = (queue_bytes / slots).max(MIN_SLOT_BYTES.min(queue_bytes));
        let mut started = AccessLogSink::without_writer(destination, slots, slot_limit);
        Arc::get_mut(&mut started.shared)
            .expect("nobody else holds the new sink")
            .has_writer = true;
        let shared = Arc::clone(&started.shared);
        let thread = std::thread::Builder::new()
            .name("loom-access-log".to_owned())
            .spawn(move || run_writer(&shared))?;
        // Set before the handle is returned, so `Drop` always finds it.
        let _ = started.shared.writer_thread.set(thread.thread().clone());
        Ok(started)
    }

    /// A sink nobody writes out: every line is dropped and counted.
    fn without_writer(
        destination: AccessLogDestination,
        slots: usize,
        slot_limit: usize,
    ) -> AccessLogSink {
        let slots = slots.max(1).next_power_of_two();
        let shared = SinkShared {
            writer: Mutex::new(Writer::new(destination.clone())),
            destination,
            slots: (0..slots)
                .map(|_| Slot {
                    lines: Mutex::new(SlotLines::default()),
                })
                .collect(),
            slot_limit,
            has_writer: false,
            closed: AtomicBool::new(false),
            writer_thread: std::sync::OnceLock::new(),
            counters: SinkCounters::default(),
        };
        AccessLogSink {
            shared: Arc::new(shared),
        }
    }
}

impl Drop for AccessLogSink {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        if let Some(thread) = self.shared.writer_thread.get() {
            thread.unpark();
        }
    }
}

/// The writer thread's body: sweeps until the sink is closed, then once more.
fn run_writer(shared: &SinkShared) {
    let mut interval = Duration::ZERO;
    loop {
        std::thread::park_timeout(interval);
        // Read before the sweep: lines appended before the close are in this sweep.
        let closed = shared.closed.load(Ordering::Acquire);
        let wrote = shared.sweep(&mut lock(&shared.writer));
        if closed {
            break;
        }
        interval = if wrote {
            BUSY_SWEEP_INTERVAL
        } else {
            IDLE_SWEEP_INTERVAL
        };
    }
}

impl SinkShared {
    /// Takes every slot's lines and writes them; whether there were any.
    fn sweep(&self, writer: &mut Writer) -> bool {
        writer.reopen_if_requested();
        let mut wrote = false;
        for slot in &self.slots {
            let taken = {
                let mut lines = lock(&slot.lines);
                if lines.count == 0 {
                    continue;
                }
                // The slot gets the writer's empty buffer, which keeps the capacity it grew
                // to: after the first sweeps no slot reallocates.
                let count = std::mem::take(&mut lines.count);
                std::mem::swap(&mut lines.bytes, &mut writer.spare);
                count
            };
            writer.write_lines(taken, &self.counters);
            wrote = true;
        }
        wrote
    }

    /// The exit hook's sweep: waits a little for a writer that is mid-sweep, never forever.
    fn sweep_at_exit(&self) {
        let deadline = Instant::now() + EXIT_WAIT;
        loop {
            match self.writer.try_lock() {
                Ok(mut writer) => {
                    self.sweep(&mut writer);
                    return;
                }
                Err(TryLockError::Poisoned(poisoned)) => {
                    self.sweep(&mut poisoned.into_inner());
                    return;
                }
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(TryLockError::WouldBlock) => return,
            }
        }
    }
}

/// Registers [`write_all_at_exit`] with the C library once: Pingora ends the process with
/// `std::process::exit`, which runs `atexit` hooks but no destructors.
fn register_exit_hook() {
    static REGISTERED: Once = Once::new();
    REGISTERED.call_once(|| {
        // SAFETY: `write_all_at_exit` is an `extern "C" fn()` that does not unwind (it
        // catches panics) and does not call `exit`.
        let result = unsafe { libc::atexit(write_all_at_exit) };
        if result != 0 {
            log::warn!("access log: cannot register the exit hook; lines of the last moments before exit may be lost");
        }
    });
}

/// Writes what every live sink's slots hold.
extern "C" fn write_all_at_exit() {
    // A panic must not unwind into the C library.
    let _ = std::panic::catch_unwind(|| {
        let live: Vec<Arc<AccessLogSink>> = {
            let sinks = match SINKS.try_lock() {
                Ok(sinks) => sinks,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                // A snapshot is being built while the process exits: not worth waiting for.
                Err(TryLockError::WouldBlock) => return,
            };
            sinks.values().filter_map(Weak::upgrade).collect()
        };
        for sink in &live {
            sink.shared.sweep_at_exit();
        }
        // `live` may hold the last handles: the writers then see a closed sink with empty
        // slots and end, which the exiting process does not wait for.
    });
}

/// One destination's output and its failure state, used by one sweep at a time.
struct Writer {
    destination: AccessLogDestination,
    /// None while the destination cannot be opened or after a write failed.
    output: Option<Box<dyn Write + Send>>,
    /// The empty buffer swapped into the next slot swept; holds the lines being written.
    spare: Vec<u8>,
    /// The [`REOPEN_GENERATION`] seen when the output was last opened (or tried).
    opened_generation: u64,
    last_open_attempt: Option<Instant>,
    /// Set once a failure is logged and cleared when writing works again, so that a failing
    /// disk logs one error per episode rather than one per sweep.
    failing: bool,
}

impl Writer {
    fn new(destination: AccessLogDestination) -> Writer {
        Writer {
            destination,
            output: None,
            spare: Vec::new(),
            opened_generation: REOPEN_GENERATION.load(Ordering::Relaxed),
            last_open_attempt: None,
            failing: false,
        }
    }

    fn open(&mut self) {
        // Read before opening: a request that arrives during the open is seen next time.
        self.opened_generation = REOPEN_GENERATION.load(Ordering::Relaxed);
        self.last_open_attempt = Some(Instant::now());
        match open_output(&self.destination) {
            Ok(output) => {
                if self.failing {
                    log::info!("access log {}: writing again", self.destination);
                    self.failing = false;
                }
                self.output = Some(output);
            }
            Err(error) => self.report_failure("cannot open", &error),
        }
    }

    /// Opens the destination the first time, reopens it on a reopen request, and retries a
    /// failed one once the retry interval has passed.
    fn reopen_if_requested(&mut self) {
        let generation = REOPEN_GENERATION.load(Ordering::Relaxed);
        let requested = generation != self.opened_generation;
        if self.output.is_some() {
            if !requested {
                return;
            }
            if self.destination == AccessLogDestination::Stdout {
                // Nothing to rotate: the same descriptor stays.
                self.opened_generation = generation;
                return;
            }
            self.output = None;
            self.open();
        } else if requested
            || self
                .last_open_attempt
                .is_none_or(|attempt| attempt.elapsed() >= RETRY_INTERVAL)
        {
            self.open();
        }
    }

    /// Writes the `count` lines in `spare` and empties it (keeping its capacity).
    fn write_lines(&mut self, count: u64, counters: &SinkCounters) {
        let result = match self.output.as_mut() {
            Some(output) => output.write_all(&self.spare).and_then(|()| output.flush()),
            None => {
                counters.count_dropped(count);
                self.spare.clear();
                return;
            }
        };
        self.spare.clear();
        match result {
            Ok(()) => counters.count_written(count),
            Err(error) => {
                // Some of the lines may have reached the file before the error: a drop may
                // be over-counted, never hidden.
                counters.count_dropped(count);
                self.output = None;
                self.last_open_attempt = Some(Instant::now());
                self.report_failure("cannot write", &error);
            }
        }
    }

    fn report_failure(&mut self, what: &str, error: &io::Error) {
        if !self.failing {
            log::error!(
                "access log {}: {what}: {error}; lines are dropped until it can be written again",
                self.destination
            );
            self.failing = true;
        }
    }
}

fn open_output(destination: &AccessLogDestination) -> io::Result<Box<dyn Write + Send>> {
    match destination {
        AccessLogDestination::Stdout => Ok(Box::new(io::stdout())),
        AccessLogDestination::File(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(path)?;
            Ok(Box::new(file))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::*;

    /// Waits until `path` holds at least `count` lines, polling against a deadline.
    fn wait_for_lines(path: &Path, count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines: Vec<String> = std::fs::read_to_string(path)
                .map(|text| text.lines().map(str::to_owned).collect())
                .unwrap_or_default();
            if lines.len() >= count {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {count} lines in {}, found {lines:?}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_until(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn lines_sent_to_a_file_sink_arrive() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("access.log");
        let destination = AccessLogDestination::File(path.clone());
        let shared = sink(&destination);
        assert!(Arc::ptr_eq(&shared, &sink(&destination)));
        shared.append(b"{\"n\":1}\n");
        // A line without its newline gets one; an empty one is not written.
        shared.append(b"{\"n\":2}");
        shared.append(b"");
        shared.append(b"{\"n\":3}\n");
        let lines = wait_for_lines(&path, 3);
        assert_eq!(lines, ["{\"n\":1}", "{\"n\":2}", "{\"n\":3}"]);
        wait_until("the written count", || shared.written_lines() == 3);
        assert_eq!(shared.dropped_lines(), 0);
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o007, 0, "others may not read the log: {mode:o}");
    }

    #[test]
    fn lines_from_many_threads_arrive_whole() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("access.log");
        // Fewer slots than threads: threads share slots, and lines must still not interleave.
        let shared = Arc::new(
            AccessLogSink::start(AccessLogDestination::File(path.clone()), 2, 1 << 20)
                .expect("writer thread"),
        );
        let threads: Vec<_> = (0..6)
            .map(|thread| {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || {
                    for number in 0..500 {
                        shared.append_with(|line| {
                            line.extend_from_slice(format!("{thread}-{number}-").as_bytes());
                            line.extend_from_slice(&[b'x'; 100]);
                        });
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("writing thread");
        }
        let lines = wait_for_lines(&path, 3000);
        assert_eq!(lines.len(), 3000);
        let mut seen = std::collections::HashSet::new();
        for line in &lines {
            let (prefix, padding) = line.rsplit_once('-').expect("a whole line");
            assert_eq!(padding, "x".repeat(100), "line {line:?}");
            assert!(seen.insert(prefix.to_owned()), "{prefix} twice");
        }
        wait_until("the written count", || shared.written_lines() == 3000);
    }

    #[test]
    fn dropping_the_last_handle_writes_what_is_left() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("access.log");
        let file_sink = AccessLogSink::start(AccessLogDestination::File(path.clone()), 1, 1 << 20)
            .expect("writer thread");
        for number in 0..100 {
            file_sink.append(format!("line {number}\n").as_bytes());
        }
        drop(file_sink);
        assert_eq!(wait_for_lines(&path, 100).len(), 100);
    }

    #[test]
    fn a_reopen_after_rename_writes_a_new_file_at_the_original_path() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("access.log");
        let rotated = directory.path().join("access.log.1");
        let file_sink = AccessLogSink::start(AccessLogDestination::File(path.clone()), 1, 1 << 20)
            .expect("writer thread");
        file_sink.append(b"before-1\n");
        file_sink.append(b"before-2\n");
        wait_for_lines(&path, 2);

        std::fs::rename(&path, &rotated).expect("rename");
        reopen_all();
        file_sink.append(b"after-1\n");
        file_sink.append(b"after-2\n");

        assert_eq!(wait_for_lines(&path, 2), ["after-1", "after-2"]);
        assert_eq!(wait_for_lines(&rotated, 2), ["before-1", "before-2"]);
        assert_eq!(file_sink.dropped_lines(), 0);
    }

    #[test]
    fn a_full_slot_drops_and_counts() {
        // Without a writer nothing empties the slot: 8 lines of 8 bytes fill 64 bytes.
        let mut full_sink = AccessLogSink::without_writer(AccessLogDestination::Stdout, 1, 64);
        Arc::get_mut(&mut full_sink.shared)
            .expect("only handle")
            .has_writer = true;
        for number in 0..10 {
            full_sink.append(format!("line {number:02}\n").as_bytes());
        }
        assert_eq!(full_sink.dropped_lines(), 2);
        assert_eq!(lock(&full_sink.shared.slots[0].lines).count, 8);
        // A sink whose writer could not start drops everything.
        let unstarted = AccessLogSink::without_writer(AccessLogDestination::Stdout, 1, 64);
        unstarted.append(b"late\n");
        assert_eq!(unstarted.dropped_lines(), 1);
    }

    #[test]
    fn a_file_that_cannot_be_opened_drops_and_counts() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory
            .path()
            .join("missing-directory")
            .join("access.log");
        let failing_sink = AccessLogSink::start(AccessLogDestination::File(path), 1, 1 << 20)
            .expect("writer thread");
        for _ in 0..3 {
            failing_sink.append(b"lost\n");
        }
        wait_until("three dropped lines", || failing_sink.dropped_lines() == 3);
        assert_eq!(failing_sink.written_lines(), 0);
    }
}
