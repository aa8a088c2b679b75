//! systemd's two protocols, spoken without libsystemd: socket activation
//! (listening sockets passed as descriptors 3, 4, ... with `LISTEN_FDS`,
//! `LISTEN_PID` and `LISTEN_FDNAMES`), so wssify can serve port 443 with no
//! privilege and be restarted without a refused connection; and
//! `sd_notify` (datagrams to `$NOTIFY_SOCKET`), so a `Type=notify-reload`
//! unit knows when wssify is ready, reloading, stopping, and alive
//! (watchdog). Both are a few lines of the documented wire format
//! (sd_listen_fds(3), sd_notify(3)); outside systemd each is a no-op.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;
use std::time::Duration;

use log::debug;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;

/// The sockets passed at start, each with its name (`FileDescriptorName=`
/// in the socket unit; `unknown` when systemd gave none), until taken.
static PASSED: Mutex<Option<Vec<(OwnedFd, String)>>> = Mutex::new(None);

/// Takes the sockets systemd passed to this process, once, at start
/// (before any other descriptor is opened, so 3, 4, ... are still
/// systemd's): none outside socket activation, and none when `LISTEN_PID`
/// names another process (the variables were inherited, not meant for us).
/// Each is marked close-on-exec.
pub fn take_passed_at_start() {
    let passed = passed_from_env(
        std::env::var("LISTEN_PID").ok().as_deref(),
        std::env::var("LISTEN_FDS").ok().as_deref(),
        std::env::var("LISTEN_FDNAMES").ok().as_deref(),
    );
    let sockets = passed
        .into_iter()
        .map(|(fd, name)| {
            // SAFETY: systemd passes these descriptors to this process
            // (LISTEN_PID is ours) and nothing else in it owns them: they
            // are taken once, here, at start, before the runtime or any file
            // is opened. An `OwnedFd` then closes each exactly once.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            if let Err(e) = socket2::SockRef::from(&owned).set_cloexec(true) {
                debug!("systemd socket {fd}: cannot set close-on-exec: {e}");
            }
            (owned, name)
        })
        .collect();
    if let Ok(mut slot) = PASSED.lock() {
        *slot = Some(sockets);
    }
}

/// The descriptors and names the environment says were passed to process
/// `pid` (pure: the variables are read by the caller).
fn passed_from_env(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    names: Option<&str>,
) -> Vec<(RawFd, String)> {
    let ours = listen_pid
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let count = listen_fds
        .and_then(|n| n.trim().parse::<i32>().ok())
        .unwrap_or(0);
    if !ours || count <= 0 {
        return Vec::new();
    }
    let mut names = names.unwrap_or("").split(':');
    (0..count.min(1024))
        .map(|i| {
            let name = names
                .next()
                .filter(|n| !n.is_empty())
                .unwrap_or("unknown")
                .to_string();
            (FIRST_FD + i, name)
        })
        .collect()
}

/// Whether systemd passed any socket.
pub fn has_passed() -> bool {
    PASSED
        .lock()
        .map(|slot| slot.as_ref().is_some_and(|s| !s.is_empty()))
        .unwrap_or(false)
}

/// Takes the passed sockets named `name` (`None`: every one left), for one
/// `--listen systemd[:NAME]`. Each is given out once.
pub fn take(name: Option<&str>) -> Vec<(OwnedFd, String)> {
    let Ok(mut slot) = PASSED.lock() else {
        return Vec::new();
    };
    let Some(all) = slot.as_mut() else {
        return Vec::new();
    };
    let (taken, kept) = std::mem::take(all)
        .into_iter()
        .partition(|(_, n)| name.is_none_or(|want| want == n));
    *all = kept;
    taken
}

/// The names of the passed sockets not taken, for an error message.
pub fn names_left() -> Vec<String> {
    PASSED
        .lock()
        .ok()
        .and_then(|slot| {
            slot.as_ref()
                .map(|s| s.iter().map(|(_, n)| n.clone()).collect())
        })
        .unwrap_or_default()
}

/// Sends `state` to systemd's notify socket, if there is one; failures
/// are logged at debug (a manager that does not listen is not an error
/// for the service).
fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path, state) {
        debug!("sd_notify {:?}: {e}", state.lines().next().unwrap_or(""));
    }
}

fn send(path: &std::ffi::OsStr, state: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    match bytes.strip_prefix(b"@") {
        // An abstract socket (`@name`), as systemd uses for services.
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            socket.send_to(state.as_bytes(), std::path::Path::new(path))?;
        }
    }
    Ok(())
}

/// `READY=1`: every listener is bound and serving.
pub fn ready() {
    notify("READY=1\nSTATUS=serving");
}

/// `RELOADING=1` with the monotonic time, as `Type=notify-reload` asks:
/// certificates are being re-read; [`ready`] follows.
pub fn reloading() {
    notify(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading certificates",
        monotonic_usec()
    ));
}

/// `STOPPING=1`: the drain has begun.
pub fn stopping() {
    notify("STOPPING=1\nSTATUS=draining open connections");
}

/// `WATCHDOG=1`: the runtime's loops are running.
pub fn watchdog() {
    notify("WATCHDOG=1");
}

/// How often to ping the watchdog (half its timeout), when the service
/// manager asked for pings (`WatchdogSec=`) from this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares with.
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer to
    // a local; CLOCK_MONOTONIC always exists on Linux.
    let done = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    if done != 0 {
        return 0;
    }
    (now.tv_sec as u64) * 1_000_000 + (now.tv_nsec as u64) / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passed_sockets_are_ours_only_and_named_in_order() {
        let me = std::process::id().to_string();
        assert_eq!(
            passed_from_env(Some(&me), Some("2"), Some("https:admin")),
            vec![(3, "https".to_string()), (4, "admin".to_string())]
        );
        assert_eq!(
            passed_from_env(Some(&me), Some("2"), None),
            vec![(3, "unknown".to_string()), (4, "unknown".to_string())]
        );
        assert!(passed_from_env(Some("1"), Some("2"), None).is_empty());
        assert!(passed_from_env(None, Some("2"), None).is_empty());
        assert!(passed_from_env(Some(&me), Some("0"), None).is_empty());
        assert!(passed_from_env(Some(&me), Some("x"), None).is_empty());
    }

    #[test]
    fn notify_reaches_the_socket_with_the_monotonic_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 128];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert!(monotonic_usec() > 0);
    }
}
