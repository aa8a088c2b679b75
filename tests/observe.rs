//! `--admin`: `/metrics` counts exactly what happened (and passes
//! `promtool check metrics`), `/readyz` follows the backends and the drain,
//! a real Prometheus scrapes it, and hostile requests get an answer or a
//! close while clients are served as usual.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::ca::{Ca, presented};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Runs `promtool check metrics` on a scrape; panics with its words.
fn promtool_check(body: &str) {
    let promtool = debian_package("prometheus", "promtool");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `/readyz` until its status is `want` (bounded by [`WAIT`]); the
/// last body.
async fn readyz_becomes(admin: SocketAddr, want: u16) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, _, body) = http_get(admin, "/readyz").await;
        if status == want {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz stayed {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `msg` through and reads it back, then closes.
async fn echo_once(w: &Wssify, config: std::sync::Arc<rustls::ClientConfig>, name: &str) {
    let mut tls = tls_connect(w.addr, config, name).await.unwrap();
    tls.write_all(b"hello").await.unwrap();
    let mut back = [0u8; 5];
    tls.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"hello");
    tls.shutdown().await.unwrap();
    let _ = read_to_end(&mut tls).await;
}

#[tokio::test]
async fn metrics_count_a_scripted_mix_exactly_and_pass_promtool() {
    bounded(WAIT * 3, async {
        let server_ca = Ca::new("server CA");
        let client_ca = Ca::new("client CA");
        let stranger_ca = Ca::new("stranger CA");
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = server_ca
            .server(&["localhost", "down.localhost"])
            .write(dir.path(), "server");
        let bundle = dir.path().join("clients.pem");
        std::fs::write(&bundle, client_ca.cert_pem()).unwrap();
        let backend = echo_backend().await;
        let dead = free_port();
        let mut w = Wssify::start_owned(&[
            "--to".into(),
            backend.to_string(),
            "--route".into(),
            format!("down.localhost=127.0.0.1:{dead}"),
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
            "--client-ca".into(),
            bundle.display().to_string(),
            "--client-ca-optional".into(),
            "--strict-sni".into(),
            "--idle-timeout".into(),
            "1s".into(),
            "--admin".into(),
            "127.0.0.1:0".into(),
        ])
        .await;
        let admin = admin_addr(&mut w).await;
        let trusting = trusting_client(&[server_ca.der()]);

        // Two good connections, five bytes each way.
        echo_once(&w, trusting.clone(), "localhost").await;
        echo_once(&w, trusting.clone(), "localhost").await;
        // Plain HTTP on the TLS port.
        let (status, _, _) = http_get(w.addr, "/").await;
        assert_eq!(status, 400);
        // A client certificate from a CA not in --client-ca.
        let stranger = stranger_ca.client("intruder", 9, (2049, 1, 1));
        let refused =
            tls_connect(w.addr, stranger.client_config(&[server_ca.der()]), "localhost").await;
        if let Ok(mut tls) = refused {
            // TLS 1.3: the client finishes before the server judges it.
            let _ = tls.write_all(b"x").await;
            let _ = read_to_end(&mut tls).await;
        }
        // A name the certificate does not cover, under --strict-sni.
        assert!(presented(w.addr, Some("unknown.test")).await.is_err());
        // A route whose backend is down.
        let mut down = tls_connect(w.addr, trusting.clone(), "down.localhost")
            .await
            .unwrap();
        let _ = read_to_end(&mut down).await;
        // An idle connection, closed by --idle-timeout 1s.
        let mut idle = tls_connect(w.addr, trusting.clone(), "localhost")
            .await
            .unwrap();
        let _ = read_to_end(&mut idle).await;

        for needle in [
            "plain HTTP on the TLS port",
            "client certificate refused: unknown CA",
            "no certificate for the requested name 'unknown.test'",
            &format!("127.0.0.1:{dead}"),
            "idle timeout",
        ] {
            w.wait_for_log(needle).await;
        }
        w.wait_for_lines("end=\"client closed", 2).await;

        let (status, head, body) = http_get(admin, "/metrics").await;
        assert_eq!(status, 200, "{body}");
        assert!(
            head.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{head}"
        );
        let m = samples(&body);
        let listener = format!("listener=\"{}\"", w.addr);
        let expect = [
            (format!("wssify_connections_total{{{listener}}}"), 7.0),
            (format!("wssify_connections_open{{{listener}}}"), 0.0),
            ("wssify_handshakes_total{outcome=\"ok\"}".into(), 4.0),
            ("wssify_handshakes_total{outcome=\"failed\"}".into(), 3.0),
            (
                "wssify_handshake_failures_total{reason=\"plain_http\"}".into(),
                1.0,
            ),
            (
                "wssify_handshake_failures_total{reason=\"client_cert_unknown_ca\"}".into(),
                1.0,
            ),
            (
                "wssify_handshake_failures_total{reason=\"strict_sni\"}".into(),
                1.0,
            ),
            (
                "wssify_handshake_failures_total{reason=\"timeout\"}".into(),
                0.0,
            ),
            (
                "wssify_connections_ended_total{reason=\"handshake_failed\"}".into(),
                3.0,
            ),
            (
                "wssify_connections_ended_total{reason=\"client_closed\"}".into(),
                2.0,
            ),
            (
                "wssify_connections_ended_total{reason=\"idle_timeout\"}".into(),
                1.0,
            ),
            (
                "wssify_connections_ended_total{reason=\"backend_failed\"}".into(),
                1.0,
            ),
            ("wssify_bytes_total{direction=\"to_backend\"}".into(), 10.0),
            ("wssify_bytes_total{direction=\"to_client\"}".into(), 10.0),
            ("wssify_handshake_duration_seconds_count".into(), 4.0),
            ("wssify_connection_duration_seconds_count".into(), 3.0),
            (
                format!("wssify_backend_up{{route=\"--to\",backend=\"{backend}\"}}"),
                1.0,
            ),
            (
                format!(
                    "wssify_backend_connect_attempts_total{{route=\"--to\",backend=\"{backend}\"}}"
                ),
                3.0,
            ),
            (
                format!(
                    "wssify_backend_connect_failures_total{{route=\"--to\",backend=\"{backend}\"}}"
                ),
                0.0,
            ),
            (
                format!(
                    "wssify_backend_up{{route=\"down.localhost\",backend=\"127.0.0.1:{dead}\"}}"
                ),
                0.0,
            ),
            (
                format!(
                    "wssify_backend_connect_failures_total{{route=\"down.localhost\",backend=\"127.0.0.1:{dead}\"}}"
                ),
                1.0,
            ),
            ("wssify_ready".into(), 0.0),
        ];
        for (key, want) in &expect {
            assert_eq!(m.get(key), Some(want), "{key}\n{body}");
        }
        // The certificate, by subject and SHA-256, and its expiry (2049-01-01).
        let cert_line = body
            .lines()
            .find(|l| l.starts_with("wssify_certificate_not_after_seconds{"))
            .unwrap_or_else(|| panic!("no certificate sample\n{body}"));
        assert!(cert_line.contains("subject=\"localhost\""), "{cert_line}");
        assert!(cert_line.ends_with(" 2493072000"), "{cert_line}");
        promtool_check(&body);
    })
    .await;
}

/// A backend that can be stopped: an echo server on `addr` until aborted.
async fn echo_on(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    })
}

#[tokio::test]
async fn readyz_waits_for_a_backend_follows_it_down_and_ends_with_the_drain() {
    bounded(WAIT * 3, async {
        let port = free_port();
        let backend: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut w = Wssify::start(&[
            "--to",
            &backend.to_string(),
            "--self-signed",
            "--admin",
            "127.0.0.1:0",
        ])
        .await;
        let admin = admin_addr(&mut w).await;
        let (status, _, body) = http_get(admin, "/healthz").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));

        // No backend yet: not ready, and says why in one line.
        let (status, _, body) = http_get(admin, "/readyz").await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(
            body,
            format!("not ready: no backend up for --to {backend}\n")
        );

        // The backend comes up: ready without any client.
        let server = echo_on(backend).await;
        assert_eq!(readyz_becomes(admin, 200).await, "ready\n");

        // It goes away and a client finds out: not ready.
        server.abort();
        let _ = server.await;
        let fp = w.fingerprint().await;
        let refused = tls_connect(w.addr, pinned_client(&fp), "localhost").await;
        if let Ok(mut tls) = refused {
            let _ = read_to_end(&mut tls).await;
        }
        w.wait_for_log(&format!("backend {backend} down")).await;
        let body = readyz_becomes(admin, 503).await;
        assert!(body.contains("no backend up"), "{body}");

        // Back again, then a drain with a client still open: 503 at once,
        // while /healthz still answers.
        let _server = echo_on(backend).await;
        readyz_becomes(admin, 200).await;
        let mut open = dev_connect(&mut w).await;
        open.write_all(b"hi").await.unwrap();
        let mut back = [0u8; 2];
        open.read_exact(&mut back).await.unwrap();
        w.signal("TERM");
        w.wait_for_log("stopped accepting").await;
        let (status, _, body) = http_get(admin, "/readyz").await;
        assert_eq!(status, 503, "{body}");
        assert!(body.starts_with("not ready: draining"), "{body}");
        assert_eq!(http_get(admin, "/healthz").await.0, 200);
        drop(open);
        assert_eq!(w.wait_exit(WAIT).await, Some(0));
    })
    .await;
}

#[tokio::test]
async fn hostile_admin_requests_get_an_answer_or_a_close_and_clients_are_unaffected() {
    bounded(WAIT * 2, async {
        let (mut w, admin) = with_admin(&["--self-signed"]).await;

        // A slowloris: half a request head, then nothing. Held open while
        // everything else runs, then answered 408 and closed.
        let mut slow = TcpStream::connect(admin).await.unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let started = tokio::time::Instant::now();

        // A 10 MB header: cut at 8 KiB, 431 or a close (the unread rest
        // may turn the answer into a reset).
        let mut big = TcpStream::connect(admin).await.unwrap();
        let writer = tokio::spawn(async move {
            let mut head = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
            head.resize(10 * 1024 * 1024, b'a');
            let _ = big.write_all(&head).await;
            let mut answer = Vec::new();
            let _ = big.read_to_end(&mut answer).await;
            answer
        });
        let answer = writer.await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431 "),
            "{answer}"
        );

        // Methods other than GET and HEAD, on a known path.
        for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
            let (status, head, _) = http_request(
                admin,
                &format!("{method} /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            )
            .await;
            assert_eq!(status, 405, "{method}");
            assert!(head.contains("\r\nAllow: GET, HEAD"), "{head}");
        }
        // Paths that are not exactly one of the three.
        for path in [
            "/../../etc/passwd",
            "/metrics/../healthz",
            "/%2e%2e/metrics",
            "//metrics",
            "/metrics/",
            "/",
        ] {
            assert_eq!(http_get(admin, path).await.0, 404, "{path}");
        }
        // Not HTTP at all.
        let (status, _, _) = http_request(admin, "\x16\x03\x01\x00\x05hello\r\n\r\n").await;
        assert_eq!(status, 400);
        // HEAD: the headers of a GET, no body.
        let (status, head, body) = http_request(admin, "HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!((status, body.as_str()), (200, ""));
        assert!(head.contains("Content-Length: "), "{head}");

        // The data path is unaffected meanwhile.
        let mut tls = dev_connect(&mut w).await;
        tls.write_all(b"still here").await.unwrap();
        let mut back = [0u8; 10];
        tls.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"still here");

        let mut answer = Vec::new();
        let _ = slow.read_to_end(&mut answer).await;
        let waited = started.elapsed();
        assert!(
            String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 408 "),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        assert!(
            waited >= Duration::from_secs(4) && waited < Duration::from_secs(8),
            "{waited:?}"
        );
        // And the admin port still answers.
        assert_eq!(http_get(admin, "/healthz").await.0, 200);
    })
    .await;
}

/// Prometheus, killed when dropped.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_admin_port() {
    bounded(WAIT * 3, async {
        let prometheus = debian_package("prometheus", "prometheus");
        let (mut w, admin) = with_admin(&["--self-signed"]).await;
        // One connection, so that a counter has moved.
        let mut tls = dev_connect(&mut w).await;
        tls.write_all(b"x").await.unwrap();
        let mut back = [0u8; 1];
        tls.read_exact(&mut back).await.unwrap();
        drop(tls);

        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: wssify\n    static_configs:\n      - targets: ['{admin}']\n"
            ),
        )
        .unwrap();
        let web = free_port();
        let _prometheus = Prometheus(
            Command::new(prometheus)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{web}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("prometheus starts"),
        );
        let api: SocketAddr = format!("127.0.0.1:{web}").parse().unwrap();
        let query = |q: &str| {
            let q: String = q
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    b => format!("%{b:02X}"),
                })
                .collect();
            format!("/api/v1/query?query={q}")
        };
        // Waits for the first scrape to land (Prometheus' API answers once
        // it is up; the series appear after its first scrape).
        let deadline = tokio::time::Instant::now() + WAIT * 2;
        let (up, build) = loop {
            let answer = match TcpStream::connect(api).await {
                Ok(_) => {
                    let (_, _, up) = http_get(api, &query("up{job=\"wssify\"}")).await;
                    let (_, _, build) = http_get(api, &query("wssify_build_info")).await;
                    Some((up, build))
                }
                Err(_) => None,
            };
            if let Some((up, build)) = answer {
                let up: serde_json::Value = serde_json::from_str(&up).unwrap_or_default();
                let build: serde_json::Value = serde_json::from_str(&build).unwrap_or_default();
                if up["data"]["result"][0]["value"][1].is_string()
                    && build["data"]["result"][0].is_object()
                {
                    break (up, build);
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Prometheus never scraped wssify"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");
        let labels = &build["data"]["result"][0]["metric"];
        assert_eq!(labels["provider"], "aws-lc-rs", "{build}");
        assert_eq!(labels["instance"], admin.to_string(), "{build}");

        // Every query of the Grafana dashboard is one this Prometheus
        // takes, and the ones about what just happened find series.
        let dashboard: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/grafana/wssify.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let mut checked = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$instance", ".*")
                    .replace("$__rate_interval", "1m");
                let (status, _, body) = http_get(api, &query(&expr)).await;
                let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                assert_eq!(
                    (status, &answer["status"]),
                    (200, &serde_json::Value::from("success")),
                    "{expr}: {body}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 15, "{checked} queries");
        let (_, _, days) = http_get(
            api,
            &query("(wssify_certificate_not_after_seconds - time()) / 86400"),
        )
        .await;
        let days: serde_json::Value = serde_json::from_str(&days).unwrap();
        assert!(days["data"]["result"][0]["value"][1].is_string(), "{days}");
    })
    .await;
}

/// The `key=value` fields of a text connection line, keys only, in order.
fn text_keys(line: &str) -> Vec<String> {
    let msg = &line[line.find("conn=").expect("a connection line")..];
    let mut keys = Vec::new();
    let mut in_quotes = false;
    let mut escaped = false;
    let mut word = String::new();
    for c in msg.chars().chain([' ']) {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            ' ' if !in_quotes => {
                if let Some((key, _)) = word.split_once('=') {
                    keys.push(key.to_string());
                }
                word.clear();
                continue;
            }
            _ => {}
        }
        word.push(c);
    }
    keys
}

#[tokio::test]
async fn json_log_lines_parse_and_carry_the_text_lines_facts() {
    bounded(WAIT * 2, async {
        let backend = echo_backend().await;
        let mut lines = Vec::new();
        for format in ["text", "json"] {
            let mut w = Wssify::start(&[
                "--to",
                &backend.to_string(),
                "--self-signed",
                "--alpn",
                "http/1.1",
                "--log-format",
                format,
            ])
            .await;
            // Any certificate: the JSON startup line's fingerprint is not
            // where the text helper looks for it.
            let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(any_cert_verifier())
            .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            echo_once(&w, std::sync::Arc::new(config), "localhost").await;
            let line = w.wait_for_log("client closed").await;
            lines.push((w.log(), line));
        }
        let (_, text) = &lines[0];
        let (json_log, json) = &lines[1];

        // Every line is one JSON object, startup and warnings included.
        for line in json_log.lines() {
            let value: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            for key in ["ts", "level", "target", "msg"] {
                assert!(value[key].is_string(), "{key} in {line}");
            }
        }
        assert!(json_log.contains("listening on "), "{json_log}");

        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        // The same fields as the text line, in the same order.
        let keys: Vec<String> = value
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| !["ts", "level", "target", "msg"].contains(&k.as_str()))
            .cloned()
            .collect();
        let mut want = text_keys(text);
        want.sort();
        let mut got = keys.clone();
        got.sort();
        assert_eq!(got, want, "text: {text}\njson: {json}");
        // Typed: numbers of bytes and seconds, strings otherwise.
        assert_eq!(value["to_backend"], 5, "{json}");
        assert_eq!(value["to_client"], 5, "{json}");
        assert!(
            value["duration"].as_f64().is_some_and(|d| d >= 0.0),
            "{json}"
        );
        assert_eq!(value["sni"], "localhost", "{json}");
        assert_eq!(value["alpn"], "http/1.1", "{json}");
        assert_eq!(value["tls"], "TLSv1.3", "{json}");
        assert_eq!(value["backend"], backend.to_string(), "{json}");
        assert!(
            value["end"].as_str().unwrap().starts_with("client closed"),
            "{json}"
        );
        assert!(
            value["cipher"].is_string() && value["kx"].is_string(),
            "{json}"
        );
        assert!(
            text.contains(&format!("backend={backend} to_backend=5B to_client=5B")),
            "{text}"
        );
    })
    .await;
}
