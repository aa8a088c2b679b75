//! Who holds a TCP port, so that "port in use" can name the program
//! instead of sending the user off to find it.
//!
//! Read from `/proc` (Linux): the listening sockets on the port from
//! `/proc/net/tcp` and `/proc/net/tcp6`, then the process whose open files
//! include one of them. Best effort and only on the error path: another
//! user's processes are visible to root only, and a socket in another
//! network namespace (another container) not at all; then `None`, and the
//! message says how to look.

use std::collections::HashSet;

/// A process holding a listening socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its process id.
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`: at most 15 bytes of the
    /// executable's name).
    pub name: String,
}

impl Holder {
    /// Whether the holder is this very process: two of its own `--listen`
    /// values took the same port.
    pub fn is_this_process(&self) -> bool {
        self.pid == std::process::id()
    }
}

/// The process listening on TCP `port` (any address, IPv4 or IPv6), when
/// it can be seen. This process is looked at first.
pub fn listening_on(port: u16) -> Option<Holder> {
    let mut sockets = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            for inode in listening_inodes(&text, port) {
                sockets.insert(format!("socket:[{inode}]"));
            }
        }
    }
    if sockets.is_empty() {
        return None;
    }
    let own = std::process::id();
    let others = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own);
    for pid in std::iter::once(own).chain(others) {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .ok()
                .and_then(|target| target.to_str().map(|t| sockets.contains(t)))
                .unwrap_or(false)
        });
        if holds {
            // Any process can name itself anything: escaped, so a name
            // cannot forge a line on the user's terminal.
            let name = std::fs::read(format!("/proc/{pid}/comm"))
                .map(|n| crate::logsafe::bare(n.trim_ascii()).to_string())
                .unwrap_or_default();
            let name = if name.is_empty() {
                "an unnamed process".to_string()
            } else {
                name
            };
            return Some(Holder { pid, name });
        }
    }
    None
}

/// The inodes of the sockets listening on `port` in a `/proc/net/tcp`
/// or `tcp6` table: local address `HEXADDR:HEXPORT` in the second column,
/// state `0A` (LISTEN) in the fourth, the inode in the tenth.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit_once(':')?.1;
            let listening = *fields.get(3)? == "0A";
            let inode = fields.get(9)?.parse::<u64>().ok()?;
            (listening && u16::from_str_radix(local_port, 16).ok()? == port && inode != 0)
                .then_some(inode)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_listening_sockets_of_a_port_from_the_kernel_table() {
        let table = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2454 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:2454 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1
   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(listening_inodes(table, 9300), vec![4242]);
        assert_eq!(listening_inodes(table, 80), vec![77]);
        assert_eq!(listening_inodes(table, 443), Vec::<u64>::new());
        assert_eq!(
            listening_inodes("garbage\nmore garbage", 80),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn finds_this_process_holding_a_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let holder = listening_on(port).expect("this process is visible to itself");
        assert!(holder.is_this_process(), "{holder:?}");
        drop(listener);
        assert_eq!(listening_on(port), None);
    }
}
