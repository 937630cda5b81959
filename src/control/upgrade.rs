//! `loom upgrade`: a zero-downtime upgrade in the order that cannot take the gateway down.
//!
//! Pingora's socket handoff is all-or-nothing once it starts: the old process sends its
//! listening sockets on SIGQUIT and begins its graceful shutdown. A new binary or config that
//! then fails to start leaves nobody accepting. So the old process is only told to hand over
//! when the new one has shown it can run:
//!
//! 1. the new binary validates the config (`NEW -t -c CONF`: parsing, plugins compiled);
//! 2. it is started with `-u` and a pipe (`LOOM_UPGRADE_READY_FD`); it loads everything it
//!    can before taking sockets (config, plugins compiled or taken from the cache, TLS
//!    material, the first health-check round) and writes `ready` on the pipe;
//! 3. only then does the old process get SIGQUIT; the new one receives the sockets and writes
//!    `serving` once its listeners (and the stream's UDP port) accept.
//!
//! If the new process exits, or is not ready within the timeout, before step 3, it is stopped
//! and the old process keeps serving untouched; the command fails.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The environment variable naming the pipe the new process reports on.
pub const READY_FD_ENV: &str = "LOOM_UPGRADE_READY_FD";
/// The descriptor the pipe gets in the new process.
const READY_FD: i32 = 3;

/// What `loom upgrade` was asked to do.
pub struct UpgradeRequest {
    pub config: PathBuf,
    /// The new binary; default: this one.
    pub binary: PathBuf,
    /// Start the new process as a daemon (`-d`), as under systemd.
    pub daemon: bool,
    /// How long the new process may take to be ready, and then to serve.
    pub timeout: Duration,
}

/// What a successful upgrade did.
pub struct UpgradeReport {
    pub old_pid: i32,
    pub new_pid: u32,
    /// From the new process's start to its `ready`.
    pub preparation: Duration,
    /// From SIGQUIT to the new process serving.
    pub handoff: Duration,
}

/// Runs the upgrade; `Err` says why the old process was left serving (or, after the handoff,
/// what went wrong).
pub fn run(request: &UpgradeRequest) -> Result<UpgradeReport, String> {
    let loaded = crate::config::load_file(&request.config).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        format!("the config does not load:\n  {}", lines.join("\n  "))
    })?;
    let pid_file = loaded
        .validated
        .file
        .server
        .pid_file
        .clone()
        .unwrap_or_else(|| "/tmp/pingora.pid".to_string());
    let old_pid = running_pid(Path::new(&pid_file))?;

    // 1. The new binary checks the config the way it will run it.
    let check = Command::new(&request.binary)
        .arg("-t")
        .arg("-c")
        .arg(&request.config)
        .output()
        .map_err(|error| format!("cannot run {}: {error}", request.binary.display()))?;
    if !check.status.success() {
        return Err(format!(
            "the new binary refuses the config ({}); the running process (pid {old_pid}) keeps serving:\n{}{}",
            describe(check.status),
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        ));
    }

    // 2. Start it with -u and wait for `ready`.
    let (reader, writer) = std::io::pipe().map_err(|error| format!("pipe: {error}"))?;
    let writer_fd = OwnedFd::from(writer);
    let raw_writer = writer_fd.as_raw_fd();
    let mut command = Command::new(&request.binary);
    command.arg("-u");
    if request.daemon {
        command.arg("-d");
    }
    // The gateway prints nothing on stdout; its log goes to our stderr, as a job started
    // from a shell would. Not holding our stdout lets a caller that reads it (a script, a
    // test) see this command end.
    command
        .arg("-c")
        .arg(&request.config)
        .env(READY_FD_ENV, READY_FD.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    // SAFETY: between fork and exec only async-signal-safe calls: dup2 onto a fixed number
    // (which clears close-on-exec) and setsid, so the new gateway outlives this command.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(raw_writer, READY_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::setsid();
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = command
        .spawn()
        .map_err(|error| format!("cannot start {}: {error}", request.binary.display()))?;
    // Only the child writes; with our copy closed, the pipe ends when the child's does.
    drop(writer_fd);
    let lines = spawn_line_reader(reader);
    if let Err(reason) = wait_for_line(&lines, "ready", &mut child, request, started) {
        stop(&mut child);
        return Err(format!(
            "{reason}; the running process (pid {old_pid}) keeps serving and was not touched"
        ));
    }
    let preparation = started.elapsed();

    // 3. Hand over.
    let handoff_started = Instant::now();
    // SAFETY: kill(2) with a pid read from the pid file; a stale pid was ruled out above.
    if unsafe { libc::kill(old_pid, libc::SIGQUIT) } != 0 {
        let error = std::io::Error::last_os_error();
        stop(&mut child);
        return Err(format!(
            "cannot signal the running process (pid {old_pid}): {error}; it keeps serving"
        ));
    }
    wait_for_line(&lines, "serving", &mut child, request, handoff_started).map_err(|reason| {
        format!(
            "{reason} after the running process (pid {old_pid}) was told to hand its sockets \
             over; check the gateway now"
        )
    })?;
    Ok(UpgradeReport {
        old_pid,
        new_pid: child.id(),
        preparation,
        handoff: handoff_started.elapsed(),
    })
}

/// The pid in `pid_file`, when that process is alive.
fn running_pid(pid_file: &Path) -> Result<i32, String> {
    let text = std::fs::read_to_string(pid_file).map_err(|error| {
        format!(
            "no running loom to upgrade: cannot read the pid file {} ({error}); start it instead",
            pid_file.display()
        )
    })?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| format!("the pid file {} holds no pid", pid_file.display()))?;
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    if pid <= 0 || unsafe { libc::kill(pid, 0) } != 0 {
        return Err(format!(
            "no running loom to upgrade: pid {pid} from {} is not running; start it instead",
            pid_file.display()
        ));
    }
    Ok(pid)
}

/// Reads the pipe on a thread, so waiting can also watch the child and the clock.
fn spawn_line_reader(reader: std::io::PipeReader) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// Waits for `expected` from the new process. A daemonizing child exits once it has forked,
/// so only an exit before the pipe says anything, or a failing exit, counts as a failure.
fn wait_for_line(
    lines: &mpsc::Receiver<String>,
    expected: &str,
    child: &mut Child,
    request: &UpgradeRequest,
    since: Instant,
) -> Result<(), String> {
    loop {
        match lines.recv_timeout(Duration::from_millis(50)) {
            Ok(line) if line == expected => return Ok(()),
            Ok(_) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.try_wait().ok().flatten();
                return Err(format!(
                    "the new process ended before it was {expected}{}",
                    status
                        .map(|status| format!(" ({})", describe(status)))
                        .unwrap_or_default()
                ));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Ok(Some(status)) = child.try_wait()
            && !status.success()
        {
            return Err(format!(
                "the new process exited before it was {expected} ({})",
                describe(status)
            ));
        }
        if since.elapsed() > request.timeout {
            return Err(format!(
                "the new process was not {expected} within {:?}",
                request.timeout
            ));
        }
    }
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => "unknown exit".to_string(),
    }
}

/// The new process's end of the pipe, taken from the environment at start.
static READY_PIPE: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Takes the pipe `loom upgrade` passed, if this process was started by it.
pub fn adopt_ready_pipe() {
    let Some(fd) = std::env::var(READY_FD_ENV)
        .ok()
        .and_then(|value| value.parse::<i32>().ok())
    else {
        return;
    };
    // SAFETY: removing our own variable before any other thread reads the environment.
    unsafe {
        std::env::remove_var(READY_FD_ENV);
    }
    // SAFETY: `loom upgrade` put the pipe's write end at this number for us alone; nothing
    // else in the process owns it.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    if let Ok(mut slot) = READY_PIPE.lock() {
        *slot = Some(file);
    }
}

/// Whether this process reports to `loom upgrade`.
pub fn is_reporting() -> bool {
    READY_PIPE.lock().is_ok_and(|slot| slot.is_some())
}

/// Tells `loom upgrade` this process is ready to take the sockets.
pub fn report_ready() {
    report("ready", false);
}

/// Tells `loom upgrade` this process serves; the pipe closes.
pub fn report_serving() {
    report("serving", true);
}

fn report(line: &str, last: bool) {
    let Ok(mut slot) = READY_PIPE.lock() else {
        return;
    };
    if let Some(file) = slot.as_mut() {
        let _ = writeln!(file, "{line}");
    }
    if last {
        *slot = None;
    }
}
