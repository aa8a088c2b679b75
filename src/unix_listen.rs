//! `--listen unix:/path`: a local TLS endpoint on a UNIX stream socket,
//! made the way nginx and HAProxy users expect.
//!
//! - A socket file left behind by a process that ended (SIGKILL, a crash)
//!   is replaced: it must be a socket, and a connect to it must be refused
//!   (nothing accepts on it) before it is removed. A regular file, or a
//!   socket something accepts on, is never touched: the start stops with
//!   one line saying which.
//! - Its mode is set (`--unix-mode`, default 660) between bind and listen,
//!   so no client can connect before it has its final permissions, and the
//!   umask wssify was started with does not matter.
//! - The file is removed when the listener closes (graceful shutdown, or
//!   the end of a `--check`), but only if it is still the socket made here.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use log::{debug, info};
use socket2::{Domain, SockAddr, Socket, Type};
use tokio::net::UnixListener;

/// A bound UNIX listener and the file it made.
pub struct Bound {
    /// The socket, listening (declared first: closed before its file goes).
    pub listener: UnixListener,
    /// Removes the file when dropped.
    pub file: SocketFile,
}

/// The socket file made by a bind: removed when this is dropped, if the
/// path still names that same file (not one another process made since).
pub struct SocketFile {
    path: PathBuf,
    /// Device and inode of the file made, to recognise it.
    id: Option<(u64, u64)>,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let same = std::fs::symlink_metadata(&self.path)
            .ok()
            .is_some_and(|meta| Some((meta.dev(), meta.ino())) == self.id);
        if !same {
            debug!(
                "{}: not removed, it is no longer the socket wssify made",
                self.path.display()
            );
            return;
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => debug!("{}: socket file removed", self.path.display()),
            Err(e) => debug!(
                "{}: cannot remove the socket file: {e}",
                self.path.display()
            ),
        }
    }
}

/// Why a `--listen unix:` socket could not be made: the reason (the caller
/// puts the flag in front), and whether another wssify holds it.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong and what to do.
    pub why: String,
    /// A wssify accepts on the socket: for `--check`, most likely the one
    /// the checked flags are about to replace.
    pub held_by_wssify: bool,
}

impl Failure {
    fn new(why: String) -> Failure {
        Failure {
            why,
            held_by_wssify: false,
        }
    }
}

/// Makes the socket at `path` with `mode` and listens on it, replacing a
/// stale socket file.
pub fn bind(path: &Path, mode: u32, backlog: i32) -> Result<Bound, Failure> {
    clear_stale(path)?;
    let shown = path.display();
    let address = SockAddr::unix(path).map_err(|e| Failure::new(format!("{shown}: {e}")))?;
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)
        .map_err(|e| Failure::new(format!("cannot make a UNIX socket ({e})")))?;
    socket.bind(&address).map_err(|e| bind_failure(path, &e))?;
    // From here the file is ours: every failure below removes it again.
    let file = SocketFile {
        path: path.to_path_buf(),
        id: std::fs::symlink_metadata(path)
            .ok()
            .map(|meta| (meta.dev(), meta.ino())),
    };
    // Before listen(): until then every connect is refused, so no client
    // ever connects under the umask's mode.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
        Failure::new(format!(
            "cannot set the mode {mode:03o} of {shown} (--unix-mode): {e}"
        ))
    })?;
    let listening = socket
        .listen(backlog)
        .and_then(|()| socket.set_nonblocking(true))
        .and_then(|()| {
            UnixListener::from_std(std::os::unix::net::UnixListener::from(OwnedFd::from(
                socket,
            )))
        });
    match listening {
        Ok(listener) => Ok(Bound { listener, file }),
        Err(e) => Err(Failure::new(format!("cannot listen on {shown} ({e})"))),
    }
}

/// Removes a socket file nothing accepts on; refuses anything else that
/// is in the way.
fn clear_stale(path: &Path) -> Result<(), Failure> {
    let shown = path.display();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(bind_failure(path, &e)),
    };
    if !meta.file_type().is_socket() {
        return Err(Failure::new(format!(
            "{shown} exists and is not a socket; wssify replaces only a socket file left behind by a process that has ended: move the file away or choose another path"
        )));
    }
    match probe(path) {
        Probe::Refused => {}
        Probe::Gone => return Ok(()),
        Probe::Accepting(holder) => {
            let held_by_wssify = holder.as_ref().is_some_and(|h| h.name == "wssify");
            let by = match holder {
                Some(h) if h.is_this_process() => {
                    return Err(Failure::new(format!(
                        "{shown} is already taken by another --listen of this wssify; give each socket once"
                    )));
                }
                Some(h) => format!("{} (pid {})", h.name, h.pid),
                None => "another process".to_string(),
            };
            return Err(Failure {
                why: format!(
                    "{shown} is in use: {by} accepts connections on it; stop it or choose another path"
                ),
                held_by_wssify,
            });
        }
        Probe::Unknown(e) => {
            return Err(Failure::new(format!(
                "cannot tell whether the socket {shown} is in use ({e}); remove it if nothing serves on it"
            )));
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => {
            info!(
                "{shown}: removed a stale socket file (nothing accepted on it: left by a process that ended)"
            );
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Failure::new(format!(
            "cannot remove the stale socket {shown} ({e}); remove it by hand"
        ))),
    }
}

/// What a connect to an existing socket file says about it.
enum Probe {
    /// Nothing accepts on it: stale.
    Refused,
    /// The file went away meanwhile.
    Gone,
    /// Something accepts on it (the holder, when it can be seen).
    Accepting(Option<crate::port_holder::Holder>),
    /// The connect failed otherwise (no permission, say).
    Unknown(io::Error),
}

/// Tries to connect, without blocking: a listener whose queue is full
/// answers EAGAIN, which is as alive as an accepted connect.
fn probe(path: &Path) -> Probe {
    let attempt = SockAddr::unix(path).and_then(|address| {
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        socket.connect(&address).map(|()| socket)
    });
    match attempt {
        Ok(socket) => Probe::Accepting(holder(socket)),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Probe::Refused,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Probe::Gone,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Probe::Accepting(None),
        Err(e) => Probe::Unknown(e),
    }
}

/// The process that listens, from the connected probe's peer credentials
/// (the listener's, taken at its listen()). tokio reads them without
/// unsafe code, so the probe is registered with the runtime when there is
/// one (always, for a start or a `--check`).
fn holder(socket: Socket) -> Option<crate::port_holder::Holder> {
    tokio::runtime::Handle::try_current().ok()?;
    let std = std::os::unix::net::UnixStream::from(OwnedFd::from(socket));
    let pid = tokio::net::UnixStream::from_std(std)
        .ok()?
        .peer_cred()
        .ok()?
        .pid()?;
    let pid = u32::try_from(pid).ok()?;
    let name = std::fs::read(format!("/proc/{pid}/comm")).ok()?;
    Some(crate::port_holder::Holder {
        pid,
        name: String::from_utf8_lossy(&name).trim_end().to_string(),
    })
}

/// A bind's failure in words, with what to do.
fn bind_failure(path: &Path, e: &io::Error) -> Failure {
    let shown = path.display();
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.display().to_string(),
        _ => ".".to_string(),
    };
    Failure::new(match e.kind() {
        io::ErrorKind::NotFound => format!(
            "the directory {dir} does not exist: create it first (systemd: RuntimeDirectory=)"
        ),
        io::ErrorKind::PermissionDenied => format!(
            "permission denied making {shown}: wssify's user must be able to write to {dir}"
        ),
        io::ErrorKind::AddrInUse => {
            format!("{shown} appeared while wssify made it: another process is starting on it")
        }
        _ => format!("cannot make the socket {shown} ({e})"),
    })
}
