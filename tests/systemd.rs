//! systemd: socket activation under the real `systemd-socket-activate`
//! (Debian's systemd package), sd_notify read from a notify socket the
//! test binds, and the units in deploy/systemd checked by
//! `systemd-analyze verify`.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// `systemd-socket-activate` listening on a free port for wssify with
/// `args`; the socket is named `name`. Returns the port.
fn activation(name: &str, args: &[&str]) -> (std::path::PathBuf, Vec<String>, u16) {
    let activate = debian_package("systemd", "systemd-socket-activate");
    let port = free_port();
    let mut all = vec![
        "-l".to_string(),
        format!("127.0.0.1:{port}"),
        format!("--fdname={name}"),
    ];
    for var in ["RUST_LOG", "HOME", "XDG_DATA_HOME"] {
        all.push("-E".to_string());
        all.push(var.to_string());
    }
    all.push(env!("CARGO_BIN_EXE_wssify").to_string());
    all.extend(args.iter().map(|a| a.to_string()));
    (activate, all, port)
}

/// Connects to `port` as soon as something listens there.
async fn first_client(port: u16) -> TcpStream {
    loop {
        if let Ok(tcp) = TcpStream::connect(("127.0.0.1", port)).await {
            return tcp;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn socket_activation_serves_the_socket_systemd_passed() {
    bounded(WAIT * 2, async {
        let backend = echo_backend().await;
        let to = backend.to_string();
        let (activate, args, port) =
            activation("https", &["--listen", "systemd:https", "--to", &to]);
        let launch = tokio::spawn(async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Wssify::launch(
                activate.to_str().unwrap(),
                &args,
                "debug,rustls=info",
                Stdio::null(),
            )
            .await
        });
        // systemd holds the socket: the first client waits in its queue
        // and starts wssify.
        let tcp = first_client(port).await;
        let mut w = launch.await.unwrap();
        assert_eq!(w.addr.port(), port);
        let line = w.wait_for_log("listening on").await;
        assert!(line.contains("(from systemd)"), "{line}");
        let fp = w.fingerprint().await;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = TlsConnector::from(pinned_client(&fp))
            .connect(name, tcp)
            .await
            .unwrap();
        tls.write_all(b"through systemd's socket").await.unwrap();
        let mut back = [0u8; 24];
        tls.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"through systemd's socket");
        // No socket of its own was bound: the one in use is systemd's.
        assert!(w.lines_with("listening on").len() == 1, "{}", w.log());
        drop(tls);
        w.signal("TERM");
        assert_eq!(w.wait_exit(WAIT).await, Some(0), "log:\n{}", w.log());
    })
    .await;
}

#[tokio::test]
async fn a_socket_name_systemd_did_not_pass_is_named_in_one_line() {
    bounded(WAIT, async {
        let (activate, args, port) = activation(
            "admin",
            &["--listen", "systemd:https", "--to", "127.0.0.1:9"],
        );
        let child = tokio::task::spawn_blocking(move || {
            Command::new(activate)
                .args(&args)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .unwrap()
        });
        let _tcp = first_client(port).await;
        let out = child.await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(
                "--listen systemd:https: systemd passed no socket named https (FileDescriptorName=); the sockets left are named admin"
            ),
            "{stderr}"
        );
    })
    .await;
}

#[test]
fn listen_systemd_outside_socket_activation_says_what_to_do() {
    let (code, out) = run_to_exit(&["--listen", "systemd", "--to", "127.0.0.1:9"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("--listen systemd: systemd passed no socket to this process"),
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.starts_with("wssify:")).count(),
        1,
        "{out}"
    );
}

/// The datagrams wssify sends to the notify socket, watchdog pings aside
/// (counted), until one starts with `want`.
fn notified(socket: &UnixDatagram, want: &str, pings: &mut usize) -> String {
    let mut buf = [0u8; 512];
    loop {
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no {want:?} from wssify: {e}"));
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        if message == "WATCHDOG=1" {
            *pings += 1;
            continue;
        }
        assert!(
            message.starts_with(want),
            "expected {want:?}, got {message:?}"
        );
        return message;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_says_ready_reloading_stopping_and_pings_the_watchdog() {
    bounded(WAIT * 2, async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(WAIT)).unwrap();
        let backend = echo_backend().await;
        let notify = path.to_str().unwrap().to_string();
        let mut w = Wssify::start_raw_env(
            &["--listen", "127.0.0.1:0", "--to", &backend.to_string()],
            &[
                ("NOTIFY_SOCKET", Some(&notify)),
                ("WATCHDOG_USEC", Some("100000")),
            ],
        )
        .await;
        let mut pings = 0;
        let ready = tokio::task::block_in_place(|| notified(&socket, "READY=1", &mut pings));
        assert!(ready.contains("STATUS=serving"), "{ready}");
        // systemctl reload: SIGHUP, then RELOADING=1 with the monotonic
        // time, then READY=1 once the certificates are re-read.
        w.signal("HUP");
        let reloading =
            tokio::task::block_in_place(|| notified(&socket, "RELOADING=1", &mut pings));
        let usec: u64 = reloading
            .lines()
            .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"));
        assert!(usec > 0);
        tokio::task::block_in_place(|| notified(&socket, "READY=1", &mut pings));
        // The watchdog is pinged every half of WATCHDOG_USEC.
        while pings < 2 {
            tokio::task::block_in_place(|| {
                let mut buf = [0u8; 64];
                let n = socket.recv(&mut buf).expect("watchdog pings");
                if &buf[..n] == b"WATCHDOG=1" {
                    pings += 1;
                }
            });
        }
        w.signal("TERM");
        tokio::task::block_in_place(|| notified(&socket, "STOPPING=1", &mut pings));
        assert_eq!(w.wait_exit(WAIT).await, Some(0), "log:\n{}", w.log());
    })
    .await;
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    let analyze = debian_package("systemd", "systemd-analyze");
    let dir = tempfile::tempdir().unwrap();
    let units = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd");
    for unit in ["wssify.socket", "wssify.service"] {
        let text = std::fs::read_to_string(units.join(unit)).unwrap();
        // verify checks that ExecStart's binary exists: point it at this one.
        let text = text.replace("/usr/local/bin/wssify", env!("CARGO_BIN_EXE_wssify"));
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    let out = Command::new(analyze)
        .arg("verify")
        .arg(dir.path().join("wssify.socket"))
        .arg(dir.path().join("wssify.service"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify warned:\n{said}"
    );
}
