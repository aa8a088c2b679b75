//! One port for several names: routing terminated clients by SNI, and TLS
//! passed through untouched to a real nginx https server (Debian's
//! `nginx-light`, installed by the tests' setup when missing). The real
//! binary, real sockets, real TLS and WebSocket clients.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use common::ca::Ca;
use common::*;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A backend that says who it is (`tag`) to every connection, then echoes.
async fn tagged_backend(tag: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if stream.write_all(tag).await.is_err() {
                    return;
                }
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// A backend that keeps every byte each connection sends, until it closes.
async fn recording_backend() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let _ = stream.read_to_end(&mut got).await;
                if !got.is_empty() {
                    let _ = tx.send(got);
                }
            });
        }
    });
    (addr, rx)
}

/// nginx serving https with its own certificate on `port`, and on
/// `pp_port` the same behind `proxy_protocol`; each answer says what
/// nginx saw of the TLS session and the client.
struct Nginx {
    child: Child,
    _dir: tempfile::TempDir,
    port: u16,
    pp_port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn nginx(cert: &common::ca::Leaf) -> Nginx {
    let program = debian_package("nginx-light", "nginx");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let (crt, key) = cert.write(dir.path(), "site");
    let (port, pp_port) = (free_port(), free_port());
    let conf = format!(
        "pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nworker_processes 1;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  default_type text/plain;\n\
           client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;\n\
           uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
           ssl_session_cache shared:SSL:1m;\n\
           ssl_certificate {crt}; ssl_certificate_key {key};\n\
           server {{ listen 127.0.0.1:{port} ssl;\n\
             location / {{ return 200 \"nginx sni=$ssl_server_name reused=$ssl_session_reused\\n\"; }} }}\n\
           server {{ listen 127.0.0.1:{pp_port} ssl proxy_protocol;\n\
             location / {{ return 200 \"nginx client=$proxy_protocol_addr:$proxy_protocol_port\\n\"; }} }}\n\
         }}\n",
        crt = crt.display(),
        key = key.display(),
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new(program)
        .arg("-c")
        .arg(&path)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("nginx starts");
    let nginx = Nginx {
        child,
        _dir: dir,
        port,
        pp_port,
    };
    for p in [port, pp_port] {
        while TcpStream::connect(("127.0.0.1", p)).await.is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    nginx
}

/// A client config trusting `ca` only, with its own session cache.
fn trusting(ca: &Ca) -> Arc<rustls::ClientConfig> {
    trusting_client(&[ca.der()])
}

/// `GET /` over TLS to `name` through `addr`; the reply's body and the
/// leaf certificate the server presented.
async fn get(addr: SocketAddr, config: Arc<rustls::ClientConfig>, name: &str) -> (String, Vec<u8>) {
    let mut tls = tls_connect(addr, config, name)
        .await
        .unwrap_or_else(|e| panic!("TLS to {name}: {e}"));
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    tls.write_all(
        format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let reply = String::from_utf8_lossy(&read_to_end(&mut tls).await.unwrap()).into_owned();
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (body, leaf)
}

/// wssify's certificate for the names it terminates, from its own CA.
fn wssify_cert(dir: &Path) -> (Ca, Vec<u8>, Vec<String>) {
    let ca = Ca::new("wssify routes test CA");
    let leaf = ca.server(&["ws.localhost", "api.localhost"]);
    let (cert, key) = leaf.write(dir, "ws");
    let args = vec![
        "--cert".to_string(),
        cert.display().to_string(),
        "--key".to_string(),
        key.display().to_string(),
    ];
    (ca, leaf.der.to_vec(), args)
}

#[tokio::test]
async fn one_port_three_names_each_reach_their_place_with_the_right_certificate() {
    bounded(WAIT * 2, async {
        let site_ca = Ca::new("site CA");
        let site = site_ca.server(&["site.localhost", "www.localhost"]);
        let nginx = nginx(&site).await;
        let dir = tempfile::tempdir().unwrap();
        let (ws_ca, ws_leaf, mut args) = wssify_cert(dir.path());
        let ws = ws_echo_backend().await;
        let api = tagged_backend(b"api\n").await;
        args.extend([
            "--route".to_string(),
            format!("ws.localhost={ws}"),
            "--route".to_string(),
            format!("api.localhost={api}"),
            "--passthrough".to_string(),
            format!("*=127.0.0.1:{}", nginx.port),
        ]);
        let mut w = Wssify::start_owned(&args).await;

        // ws.localhost: terminated by wssify, a real WebSocket round trip.
        let tls = tls_connect(w.addr, trusting(&ws_ca), "ws.localhost")
            .await
            .unwrap();
        assert_eq!(
            tls.get_ref().1.peer_certificates().unwrap()[0].to_vec(),
            ws_leaf
        );
        let url = format!("wss://ws.localhost:{}/chat", w.addr.port());
        let (mut socket, response) = tokio_tungstenite::client_async(url, tls).await.unwrap();
        assert_eq!(response.status(), 101);
        socket
            .send(Message::text("through the route"))
            .await
            .unwrap();
        assert_eq!(
            socket.next().await.unwrap().unwrap(),
            Message::text("through the route")
        );
        socket.close(None).await.unwrap();

        // api.localhost: terminated by wssify, to the other backend.
        let mut tls = tls_connect(w.addr, trusting(&ws_ca), "api.localhost")
            .await
            .unwrap();
        assert_eq!(
            tls.get_ref().1.peer_certificates().unwrap()[0].to_vec(),
            ws_leaf
        );
        let mut tag = [0u8; 4];
        tls.read_exact(&mut tag).await.unwrap();
        assert_eq!(&tag, b"api\n");

        // Every other name: passed through to nginx, whose certificate the
        // client sees and whose TLS session it has: the second connection
        // resumes nginx's session with nginx's ticket.
        let site_client = trusting(&site_ca);
        for (round, reused) in [(1, "."), (2, "r")] {
            let (body, leaf) = get(w.addr, site_client.clone(), "site.localhost").await;
            assert_eq!(
                leaf,
                site.der.to_vec(),
                "round {round}: nginx's certificate"
            );
            assert_eq!(
                body,
                format!("nginx sni=site.localhost reused={reused}\n"),
                "round {round}"
            );
        }
        // A client trusting only wssify's CA cannot take nginx's certificate.
        assert!(
            tls_connect(w.addr, trusting(&ws_ca), "www.localhost")
                .await
                .is_err()
        );
        let line = w.wait_for_log("mode=passthrough sni=site.localhost").await;
        assert!(
            line.contains(&format!("backend=127.0.0.1:{}", nginx.port)),
            "{line}"
        );
        assert!(line.contains("to_backend="), "{line}");
        assert!(line.contains("end=\""), "{line}");
    })
    .await;
}

#[tokio::test]
async fn proxy_protocol_in_front_of_a_passed_through_nginx_gives_it_the_clients_address() {
    bounded(WAIT * 2, async {
        let site_ca = Ca::new("site CA");
        let site = site_ca.server(&["site.localhost"]);
        let nginx = nginx(&site).await;
        let w = Wssify::start(&[
            "--passthrough",
            &format!("*=127.0.0.1:{}", nginx.pp_port),
            "--proxy-protocol",
            "v2",
        ])
        .await;
        let mut tls = tls_connect(w.addr, trusting(&site_ca), "site.localhost")
            .await
            .unwrap();
        let me = tls.get_ref().0.local_addr().unwrap();
        tls.write_all(b"GET / HTTP/1.1\r\nHost: site.localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let reply = String::from_utf8_lossy(&read_to_end(&mut tls).await.unwrap()).into_owned();
        assert!(
            reply.ends_with(&format!("nginx client={}:{}\n", me.ip(), me.port())),
            "{reply}"
        );
    })
    .await;
}

/// The bytes a rustls client sends first for `name`: its ClientHello
/// (with the default provider's post-quantum key share, about 1.3 KiB).
fn client_hello(name: &str) -> Vec<u8> {
    let config = trusting_client(&[]);
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

/// The same handshake message carried in records of at most `size` bytes.
fn reframed(hello: &[u8], size: usize) -> Vec<u8> {
    let body = &hello[5..];
    let mut out = Vec::new();
    for piece in body.chunks(size) {
        out.extend_from_slice(&[0x16, 0x03, 0x01]);
        out.extend_from_slice(&(piece.len() as u16).to_be_bytes());
        out.extend_from_slice(piece);
    }
    out
}

#[tokio::test]
async fn a_client_hello_in_pieces_is_passed_through_byte_for_byte() {
    bounded(WAIT * 3, async {
        let (backend, mut got) = recording_backend().await;
        let w = Wssify::start(&["--passthrough", &format!("*={backend}")]).await;
        let hello = client_hello("site.localhost");
        assert!(
            hello.len() > 1200,
            "a post-quantum hello: {} bytes",
            hello.len()
        );
        let two_records = reframed(&hello, hello.len() / 2);
        let many_records = reframed(&hello, 100);
        for (what, bytes, step) in [
            ("one record, byte by byte", &hello, 1),
            ("two records", &two_records, 7),
            ("many records", &many_records, 333),
        ] {
            let mut tcp = TcpStream::connect(w.addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            for piece in bytes.chunks(step) {
                tcp.write_all(piece).await.unwrap();
                tcp.flush().await.unwrap();
            }
            tcp.write_all(b" and then some").await.unwrap();
            tcp.shutdown().await.unwrap();
            let mut want = bytes.clone();
            want.extend_from_slice(b" and then some");
            assert_eq!(got.recv().await.unwrap(), want, "{what}");
        }
    })
    .await;
}

#[tokio::test]
async fn oversized_stalled_malformed_and_garbage_hellos_get_the_right_end() {
    bounded(WAIT * 3, async {
        let (backend, mut got) = recording_backend().await;
        let mut w = Wssify::start(&[
            "--passthrough",
            &format!("*={backend}"),
            "--handshake-timeout",
            "1s",
        ])
        .await;
        // Oversized: a handshake message that says 20 KiB, sent in full.
        let mut big = vec![0x01, 0x00, 0x50, 0x00];
        big.extend(std::iter::repeat_n(0u8, 20 * 1024));
        let big = reframed(&[&[0u8; 5][..], &big].concat(), 16 * 1024);
        let mut tcp = TcpStream::connect(w.addr).await.unwrap();
        tcp.write_all(&big).await.unwrap();
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        assert_eq!(answer, [0x15, 3, 3, 0, 2, 2, 22], "record_overflow alert");
        w.wait_for_log("a ClientHello over 16 KiB").await;

        // Malformed: a whole record whose hello is cut inside.
        let hello = client_hello("site.localhost");
        let mut cut = hello[..60].to_vec();
        cut[3..5].copy_from_slice(&55u16.to_be_bytes());
        cut[6..9].copy_from_slice(&[0, 0, 51]);
        let mut tcp = TcpStream::connect(w.addr).await.unwrap();
        tcp.write_all(&cut).await.unwrap();
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        assert_eq!(answer, [0x15, 3, 3, 0, 2, 2, 50], "decode_error alert");
        w.wait_for_log("malformed ClientHello").await;

        // Stalled: half a hello, then nothing, until the handshake timeout.
        let mut tcp = TcpStream::connect(w.addr).await.unwrap();
        tcp.write_all(&hello[..hello.len() / 2]).await.unwrap();
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        assert!(answer.is_empty(), "{answer:?}");
        w.wait_for_log("not finished within 1s").await;

        // Garbage: a handshake record that holds no ClientHello, and bytes
        // that are no TLS at all: rustls answers each with a fatal alert.
        for garbage in [
            &[0x16, 0x03, 0x01, 0x00, 0x05, 0x02, 0x00, 0x00, 0x01, 0x00][..],
            &[0x47, 0x45, 0x54, 0x58, 0xff, 0x00, 0x13, 0x37, 0x42, 0x42][..],
        ] {
            let mut tcp = TcpStream::connect(w.addr).await.unwrap();
            tcp.write_all(garbage).await.unwrap();
            let mut answer = Vec::new();
            let _ = tcp.read_to_end(&mut answer).await;
            assert_eq!(
                answer.first(),
                Some(&0x15),
                "an alert for {garbage:?}: {answer:?}"
            );
        }
        // Nothing of it is left behind: a real client still goes through.
        let mut tcp = TcpStream::connect(w.addr).await.unwrap();
        tcp.write_all(&hello).await.unwrap();
        tcp.shutdown().await.unwrap();
        assert_eq!(got.recv().await.unwrap(), hello);
    })
    .await;
}

#[tokio::test]
async fn a_name_nothing_routes_is_refused_with_unrecognized_name() {
    bounded(WAIT, async {
        let dir = tempfile::tempdir().unwrap();
        let (ws_ca, _, mut args) = wssify_cert(dir.path());
        let ws = ws_echo_backend().await;
        args.extend(["--route".to_string(), format!("ws.localhost={ws}")]);
        let mut w = Wssify::start_owned(&args).await;
        let refused = tls_connect(w.addr, trusting(&ws_ca), "other.localhost")
            .await
            .unwrap_err();
        assert!(
            refused.to_string().contains("UnrecognisedName"),
            "{refused}"
        );
        w.wait_for_log("no route for SNI other.localhost").await;
        // The routed name still works.
        assert!(
            tls_connect(w.addr, trusting(&ws_ca), "ws.localhost")
                .await
                .is_ok()
        );
    })
    .await;
}

#[tokio::test]
async fn passthrough_connections_drain_on_sigterm() {
    bounded(WAIT * 2, async {
        let backend = tagged_backend(b"hi\n").await;
        let mut w = Wssify::start(&[
            "--passthrough",
            &format!("*={backend}"),
            "--drain-timeout",
            "30s",
        ])
        .await;
        let mut tcp = TcpStream::connect(w.addr).await.unwrap();
        let hello = client_hello("site.localhost");
        tcp.write_all(&hello).await.unwrap();
        // The backend's tag, then the hello echoed.
        let mut first = vec![0u8; 3 + hello.len()];
        tcp.read_exact(&mut first).await.unwrap();
        assert_eq!(&first[3..], &hello[..]);
        w.signal("TERM");
        w.wait_for_log("stopped accepting").await;
        // Still carried both ways while the drain waits for it.
        tcp.write_all(b"still here").await.unwrap();
        let mut back = [0u8; 10];
        tcp.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"still here");
        tcp.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tcp.read_to_end(&mut rest).await.unwrap();
        assert_eq!(w.wait_exit(WAIT).await, Some(0), "log:\n{}", w.log());
        let line = w.lines_with("mode=passthrough").join("\n");
        assert!(line.contains("end=\"client closed\""), "{line}");
    })
    .await;
}

#[test]
fn route_mistakes_are_named() {
    for (args, says) in [
        (
            vec!["--route", "*=127.0.0.1:9"],
            "every other name goes to --to",
        ),
        (
            vec!["--to", "127.0.0.1:9", "--passthrough", "*=127.0.0.1:8443"],
            "both claim every name no route serves",
        ),
        (
            vec![
                "--route",
                "a.localhost=127.0.0.1:9",
                "--passthrough",
                "a.localhost=127.0.0.1:8443",
            ],
            "given to both --route and --passthrough",
        ),
        (vec!["--route", "127.0.0.1=127.0.0.1:9"], "is an IP address"),
        (vec!["--route", "ws.localhost"], "expected NAME=HOST:PORT"),
    ] {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend(&args);
        let (code, out) = run_to_exit(&all);
        assert_eq!(code, 2, "{args:?}: {out}");
        assert!(out.contains(says), "{args:?}: {out}");
        assert_eq!(out.trim().lines().count(), 1, "{args:?}: one line: {out}");
    }
}

#[tokio::test]
async fn passing_everything_through_serves_and_makes_no_certificate() {
    bounded(WAIT, async {
        let (backend, _got) = recording_backend().await;
        let w = Wssify::start(&["--passthrough", &format!("*={backend}")]).await;
        let line = w.lines_with("listening on").join("\n");
        assert!(
            line.contains("certificate: none needed (every client is passed through)"),
            "{line}"
        );
        assert!(
            line.contains("backend none (names not routed are passed through: --passthrough '*')"),
            "{line}"
        );
        assert!(w.lines_with("route: SNI * -> ").len() == 1, "{}", w.log());
        assert!(!w.dev_ca_dir().exists(), "no development CA is made");
        assert!(w.lines_with("development").is_empty(), "{}", w.log());
    })
    .await;
}

#[tokio::test]
async fn a_route_no_certificate_covers_is_warned_of_at_start_and_by_check() {
    bounded(WAIT, async {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, mut args) = wssify_cert(dir.path());
        let ws = ws_echo_backend().await;
        args.extend([
            "--route".to_string(),
            format!("chat.example.com={ws}"),
            "--route".to_string(),
            format!("ws.localhost={ws}"),
        ]);
        let mut w = Wssify::start_owned(&args).await;
        let warned = w
            .wait_for_log("--route chat.example.com: no certificate served covers this name")
            .await;
        assert!(warned.contains("WARN"), "{warned}");
        assert!(
            w.lines_with("--route ws.localhost:").is_empty(),
            "{}",
            w.log()
        );

        let mut check = vec!["--check", "--listen", "127.0.0.1:0"];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        check.extend(&args);
        check.extend(["--passthrough", "*.down.localhost=127.0.0.1:9"]);
        let (code, out) = run_to_exit(&check);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("--route chat.example.com: no certificate covers this name"),
            "{out}"
        );
        assert!(
            out.contains("backend 127.0.0.1:9 (--passthrough *.down.localhost) is unreachable"),
            "{out}"
        );
    })
    .await;
}

#[tokio::test]
async fn routed_localhost_names_are_in_the_development_certificate() {
    bounded(WAIT, async {
        let ws = ws_echo_backend().await;
        let api = tagged_backend(b"api\n").await;
        let mut w = Wssify::start(&[
            "--route",
            &format!("ws.localhost={ws}"),
            "--route",
            &format!("*.api.localhost={api}"),
            "--route",
            &format!("chat.example.com={ws}"),
        ])
        .await;
        let ca_pem = std::fs::read(w.dev_ca_dir().join("ca.pem")).unwrap();
        let ca = rustls::pki_types::CertificateDer::from_pem_slice(&ca_pem).unwrap();
        let client = trusting_client(&[ca]);
        // Verified against the development CA, for each routed name.
        let tls = tls_connect(w.addr, client.clone(), "ws.localhost")
            .await
            .unwrap();
        let url = format!("wss://ws.localhost:{}/", w.addr.port());
        let (mut socket, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
        socket.send(Message::text("dev")).await.unwrap();
        assert_eq!(socket.next().await.unwrap().unwrap(), Message::text("dev"));
        let mut tls = tls_connect(w.addr, client, "v1.api.localhost")
            .await
            .unwrap();
        let mut tag = [0u8; 4];
        tls.read_exact(&mut tag).await.unwrap();
        assert_eq!(&tag, b"api\n");
        // A name the development CA may not sign is not added, and said so.
        w.wait_for_log("--route chat.example.com: no certificate served covers this name")
            .await;
        assert!(
            w.lines_with("--route ws.localhost:").is_empty(),
            "{}",
            w.log()
        );
    })
    .await;
}
