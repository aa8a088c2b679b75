//! The data path end to end: bulk transfer, half-closes, timeouts, a backend
//! that is down, non-TLS clients and the connection limit.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// A deterministic byte stream (xorshift), so reordering or loss shows.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_64_mib_each_way_at_once_intact() {
    bounded(Duration::from_secs(240), async {
        const SIZE: usize = 64 * 1024 * 1024;
        let backend = echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string()]).await;
        let tls = dev_connect(&mut w).await;
        let (mut rd, mut wr) = tokio::io::split(tls);
        let sent = pattern(7, SIZE);
        let expected = sha256(&sent);
        let writer = tokio::spawn(async move {
            for chunk in sent.chunks(256 * 1024) {
                wr.write_all(chunk).await.unwrap();
            }
            wr.shutdown().await.unwrap();
        });
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut received = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = rd.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
            received += n;
        }
        writer.await.unwrap();
        assert_eq!(received, SIZE, "every byte came back");
        assert_eq!(
            ctx.finish().as_ref(),
            expected.as_slice(),
            "checksum matches"
        );
        let line = w.wait_for_log("end=\"client closed\"").await;
        assert!(line.contains(&format!("to_backend={SIZE}B")), "{line}");
        assert!(line.contains(&format!("to_client={SIZE}B")), "{line}");
    })
    .await;
}

#[tokio::test]
async fn client_half_close_still_gets_the_whole_answer() {
    bounded(WAIT, async {
        // The backend reads the request to EOF, then answers 1 MiB and closes.
        let answer = pattern(3, 1024 * 1024);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = listener.local_addr().unwrap();
        let reply = answer.clone();
        tokio::spawn(async move {
            let mut s = accept_past_check(&listener).await;
            let request = read_to_end(&mut s).await.unwrap();
            assert_eq!(request, b"the whole request");
            s.write_all(&reply).await.unwrap();
            s.shutdown().await.unwrap();
        });
        let mut w = Wssify::start(&["--to", &backend.to_string()]).await;
        let mut tls = dev_connect(&mut w).await;
        tls.write_all(b"the whole request").await.unwrap();
        tls.shutdown().await.unwrap(); // close_notify + FIN: our write side is done
        let got = read_to_end(&mut tls).await.unwrap();
        assert_eq!(got.len(), answer.len());
        assert!(got == answer, "answer intact after the client's half-close");
        w.wait_for_log("end=\"client closed\"").await;
    })
    .await;
}

#[tokio::test]
async fn backend_half_close_still_gets_the_whole_request() {
    bounded(WAIT, async {
        // The backend greets, closes its write side at once, and then reads
        // everything the client still sends.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let mut s = accept_past_check(&listener).await;
            s.write_all(b"hello, then bye").await.unwrap();
            s.shutdown().await.unwrap();
            let request = read_to_end(&mut s).await.unwrap();
            let _ = tx.send(request);
        });
        let mut w = Wssify::start(&["--to", &backend.to_string()]).await;
        let mut tls = dev_connect(&mut w).await;
        let greeting = read_to_end(&mut tls).await.unwrap();
        assert_eq!(
            greeting, b"hello, then bye",
            "backend FIN became close_notify"
        );
        let upload = pattern(5, 512 * 1024);
        tls.write_all(&upload).await.unwrap();
        tls.shutdown().await.unwrap();
        let received = rx.await.unwrap();
        assert!(
            received == upload,
            "all bytes after the backend's half-close arrived"
        );
        w.wait_for_log("end=\"backend closed\"").await;
    })
    .await;
}

/// Reads until EOF or error and returns when, bounded by [`WAIT`].
async fn closed_at<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Instant {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(WAIT, r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Instant::now(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("connection was not closed within {WAIT:?}"),
        }
    }
}

#[tokio::test]
async fn idle_connection_is_closed_near_the_idle_timeout() {
    bounded(WAIT, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string(), "--idle-timeout", "1s"]).await;
        let mut tls = dev_connect(&mut w).await;
        tls.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        tls.read_exact(&mut one).await.unwrap();
        let last_byte = Instant::now();
        let closed = closed_at(&mut tls).await;
        let idle = closed - last_byte;
        assert!(
            idle >= Duration::from_millis(900),
            "closed too early: {idle:?}"
        );
        assert!(idle < Duration::from_secs(5), "closed too late: {idle:?}");
        w.wait_for_log("end=\"idle timeout (1s with no bytes)\"")
            .await;
    })
    .await;
}

#[tokio::test]
async fn trickling_connection_outlives_the_idle_timeout() {
    bounded(WAIT, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string(), "--idle-timeout", "1s"]).await;
        let mut tls = dev_connect(&mut w).await;
        let start = Instant::now();
        // One byte every 300 ms for 3 s: three times the idle timeout.
        let mut ticks = tokio::time::interval(Duration::from_millis(300));
        while start.elapsed() < Duration::from_secs(3) {
            ticks.tick().await;
            tls.write_all(b".").await.unwrap();
            let mut one = [0u8; 1];
            tls.read_exact(&mut one)
                .await
                .expect("still open while bytes trickle");
        }
        assert!(w.lines_with("end=\"idle timeout").is_empty(), "{}", w.log());
        // Then silence: now the timeout applies.
        closed_at(&mut tls).await;
        w.wait_for_log("end=\"idle timeout").await;
    })
    .await;
}

#[tokio::test]
async fn silent_client_is_dropped_at_the_handshake_timeout_while_others_are_served() {
    bounded(WAIT, async {
        let backend = echo_backend().await;
        let mut w =
            Wssify::start(&["--to", &backend.to_string(), "--handshake-timeout", "1s"]).await;
        let connected = Instant::now();
        let mut silent = TcpStream::connect(w.addr).await.unwrap();
        // A normal client is served while the silent one waits.
        let mut tls = dev_connect(&mut w).await;
        tls.write_all(b"served").await.unwrap();
        let mut buf = [0u8; 6];
        tls.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"served");
        let closed = closed_at(&mut silent).await;
        let waited = closed - connected;
        assert!(
            waited >= Duration::from_millis(900),
            "dropped too early: {waited:?}"
        );
        assert!(
            waited < Duration::from_secs(5),
            "dropped too late: {waited:?}"
        );
        w.wait_for_log("handshake failed: no bytes within 1s").await;
    })
    .await;
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn backend_down_closes_promptly_and_later_clients_are_served() {
    bounded(WAIT, async {
        let backend = free_port();
        let mut w = Wssify::start(&["--to", &backend.to_string()]).await;
        let mut tls = dev_connect(&mut w).await;
        // The handshake succeeded; the refused backend ends it with a close.
        let got = read_to_end(&mut tls).await.unwrap_or_default();
        assert!(got.is_empty());
        let line = w.wait_for_log("unreachable").await;
        assert!(
            line.contains(&format!("backend {backend} unreachable")),
            "{line}"
        );

        // The backend comes up on that port: the next client is served.
        let listener = TcpListener::bind(backend).await.unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let (mut r, mut wr) = s.split();
            let _ = tokio::io::copy(&mut r, &mut wr).await;
        });
        let mut tls = dev_connect(&mut w).await;
        tls.write_all(b"up now").await.unwrap();
        let mut buf = [0u8; 6];
        tls.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"up now");
    })
    .await;
}

#[tokio::test]
async fn backend_that_never_answers_hits_the_connect_timeout() {
    bounded(WAIT, async {
        let (hole, _fillers) = black_hole();
        let backend = hole.local_addr().unwrap().as_socket().unwrap();
        let mut w = Wssify::start(&["--to", &backend.to_string(), "--connect-timeout", "1s"]).await;
        let mut tls = dev_connect(&mut w).await;
        let handshaken = Instant::now();
        let got = read_to_end(&mut tls).await.unwrap_or_default();
        assert!(got.is_empty());
        let waited = handshaken.elapsed();
        assert!(
            waited >= Duration::from_millis(900),
            "closed before the timeout: {waited:?}"
        );
        assert!(
            waited < Duration::from_secs(5),
            "closed long after the timeout: {waited:?}"
        );
        w.wait_for_log(&format!(
            "backend {backend} unreachable: no answer within 1s"
        ))
        .await;
    })
    .await;
}

#[tokio::test]
async fn backend_name_that_does_not_resolve_is_logged() {
    bounded(WAIT, async {
        let mut w = Wssify::start(&["--to", "no-such-host.invalid:9200"]).await;
        let mut tls = dev_connect(&mut w).await;
        let got = read_to_end(&mut tls).await.unwrap_or_default();
        assert!(got.is_empty());
        w.wait_for_log("backend no-such-host.invalid:9200 unreachable")
            .await;
    })
    .await;
}

#[tokio::test]
async fn plain_http_gets_a_400_that_says_use_wss() {
    bounded(WAIT, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string()]).await;
        let mut tcp = TcpStream::connect(w.addr).await.unwrap();
        tcp.write_all(b"GET /chat HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\r\n")
            .await
            .unwrap();
        let answer = String::from_utf8(read_to_end(&mut tcp).await.unwrap()).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(answer.contains("wss://"), "{answer}");
        let line = w.wait_for_log("plain HTTP on the TLS port").await;
        assert!(line.contains("peer=127.0.0.1:"), "{line}");
    })
    .await;
}

#[tokio::test]
async fn garbage_and_truncated_hellos_are_closed_and_service_goes_on() {
    bounded(WAIT, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string()]).await;

        let mut garbage = TcpStream::connect(w.addr).await.unwrap();
        garbage.write_all(&pattern(9, 4096)).await.unwrap();
        closed_at(&mut garbage).await;
        w.wait_for_log("not TLS").await;

        // Half a ClientHello, then our FIN.
        let hello = client_hello();
        let mut truncated = TcpStream::connect(w.addr).await.unwrap();
        truncated
            .write_all(&hello[..hello.len() / 2])
            .await
            .unwrap();
        truncated.shutdown().await.unwrap();
        closed_at(&mut truncated).await;
        w.wait_for_log("handshake failed: client closed the connection during the handshake")
            .await;

        // A TLS record header followed by nonsense.
        let mut bogus = TcpStream::connect(w.addr).await.unwrap();
        bogus
            .write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
            .await
            .unwrap();
        closed_at(&mut bogus).await;

        let mut tls = dev_connect(&mut w).await;
        tls.write_all(b"still here").await.unwrap();
        let mut buf = [0u8; 10];
        tls.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"still here");
    })
    .await;
}

#[tokio::test]
async fn third_client_waits_for_a_slot_at_max_conns_2() {
    bounded(WAIT, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string(), "--max-conns", "2"]).await;
        let fp = w.fingerprint().await;
        let mut first = dev_connect(&mut w).await;
        let mut second = dev_connect(&mut w).await;
        for c in [&mut first, &mut second] {
            c.write_all(b"ok").await.unwrap();
            let mut buf = [0u8; 2];
            c.read_exact(&mut buf).await.unwrap();
        }
        w.wait_for_log("connection limit reached").await;
        let addr = w.addr;
        let mut third = tokio::spawn(async move {
            let mut tls = tls_connect(addr, pinned_client(&fp), "localhost")
                .await
                .unwrap();
            tls.write_all(b"third").await.unwrap();
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).await.unwrap();
            buf
        });
        // Not served while both slots are taken.
        let early = tokio::time::timeout(Duration::from_millis(700), &mut third).await;
        assert!(early.is_err(), "the third client was served over the limit");
        drop(first);
        let buf = tokio::time::timeout(WAIT, third).await.unwrap().unwrap();
        assert_eq!(&buf, b"third");
    })
    .await;
}

#[tokio::test]
async fn post_quantum_hybrid_is_negotiated_and_logged() {
    bounded(WAIT, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string()]).await;
        let mut tls = dev_connect(&mut w).await;
        let group = tls
            .get_ref()
            .1
            .negotiated_key_exchange_group()
            .unwrap()
            .name();
        assert_eq!(group, rustls::NamedGroup::X25519MLKEM768);
        tls.write_all(b"pq").await.unwrap();
        tls.shutdown().await.unwrap();
        read_to_end(&mut tls).await.unwrap();
        let line = w.wait_for_log("end=\"client closed\"").await;
        for field in [
            "peer=127.0.0.1:",
            "sni=localhost",
            "tls=TLSv1.3",
            "cipher=TLS13_",
            "kx=X25519MLKEM768",
            "alpn=-",
            "to_backend=2B",
            "to_client=2B",
            "duration=",
        ] {
            assert!(line.contains(field), "{field} missing from: {line}");
        }
    })
    .await;
}

#[tokio::test]
async fn alpn_and_tls_min_flags_take_effect() {
    bounded(WAIT, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&[
            "--to",
            &backend.to_string(),
            "--alpn",
            "http/1.1",
            "--tls-min",
            "1.3",
        ])
        .await;
        let fp = w.fingerprint().await;
        let mut config = (*pinned_client(&fp)).clone();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tls = tls_connect(w.addr, Arc::new(config), "localhost")
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

        // A TLS 1.2-only client is refused.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut old = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(pinned_verifier(&fp))
            .with_no_client_auth();
        old.alpn_protocols.clear();
        assert!(
            tls_connect(w.addr, Arc::new(old), "localhost")
                .await
                .is_err()
        );
        w.wait_for_log("handshake failed: the client cannot speak our TLS")
            .await;
    })
    .await;
}

#[tokio::test]
async fn a_reconnect_resumes_with_a_session_ticket() {
    bounded(WAIT, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string()]).await;
        // One client config keeps its session store across connections.
        let config = pinned_client(&w.fingerprint().await);
        let mut kinds = Vec::new();
        for _ in 0..3 {
            let mut tls = tls_connect(w.addr, config.clone(), "localhost")
                .await
                .unwrap();
            // Reading the echo also reads the tickets sent after the handshake.
            tls.write_all(b"t").await.unwrap();
            let mut one = [0u8; 1];
            tls.read_exact(&mut one).await.unwrap();
            kinds.push(tls.get_ref().1.handshake_kind());
        }
        use rustls::HandshakeKind::{Full, Resumed};
        assert_eq!(kinds, [Some(Full), Some(Resumed), Some(Resumed)]);
    })
    .await;
}

#[tokio::test]
async fn a_tls_1_2_client_is_served_by_default() {
    bounded(WAIT, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string()]).await;
        let fp = w.fingerprint().await;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let old = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(pinned_verifier(&fp))
            .with_no_client_auth();
        let mut tls = tls_connect(w.addr, Arc::new(old), "localhost")
            .await
            .unwrap();
        let payload = pattern(11, 100 * 1024);
        tls.write_all(&payload).await.unwrap();
        tls.shutdown().await.unwrap();
        let back = read_to_end(&mut tls).await.unwrap();
        assert!(back == payload, "TLS 1.2 echo intact");
        let line = w.wait_for_log("end=\"client closed\"").await;
        assert!(line.contains("tls=TLSv1.2"), "{line}");
    })
    .await;
}

#[tokio::test]
async fn a_client_key_update_mid_stream_keeps_bytes_flowing() {
    bounded(WAIT, async {
        let backend = echo_backend().await;
        let mut w = Wssify::start(&["--to", &backend.to_string()]).await;
        let mut tls = dev_connect(&mut w).await;
        let mut back = vec![0u8; 32 * 1024];
        for round in 0..3u64 {
            let data = pattern(20 + round, back.len());
            tls.write_all(&data).await.unwrap();
            tls.read_exact(&mut back).await.unwrap();
            assert!(back == data, "round {round} intact");
            // TLS 1.3 KeyUpdate (asking the server to update too): wssify
            // must answer it and go on with the new keys both ways.
            tls.get_mut().1.refresh_traffic_keys().unwrap();
        }
        tls.shutdown().await.unwrap();
        assert!(read_to_end(&mut tls).await.unwrap().is_empty());
        let line = w.wait_for_log("end=\"client closed\"").await;
        assert!(
            line.contains(&format!("to_backend={}B", 3 * 32 * 1024)),
            "{line}"
        );
    })
    .await;
}
