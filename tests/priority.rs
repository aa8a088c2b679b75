//! `--handshake-priority auto` (the default) on the real binary: handshakes
//! move to the idle-class threads once a connection has settled, and come
//! back to the connections' threads while a busy process beside wssify
//! leaves the idle class no CPU. (`low` is in tests/limits.rs; the flood
//! figure itself is in the benchmark, since tests assert no timings.)

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// The tests here look at process-wide counters and one of them keeps a
/// core busy: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn scrape(admin: SocketAddr) -> HashMap<String, f64> {
    let (status, _, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    samples(&body)
}

/// Handshakes placed this way so far (`low`, `normal` or `starved`).
fn placed(samples: &HashMap<String, f64>, priority: &str) -> f64 {
    let key = format!("wssify_handshake_priority_total{{priority=\"{priority}\"}}");
    samples.get(&key).copied().unwrap_or(0.0)
}

/// A connection that echoes every 50 ms until told to stop: a WebSocket
/// carrying messages. Its task returns the echoes done, or the first error.
struct Talking {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<std::io::Result<usize>>,
}

impl Talking {
    async fn start(w: &Wssify, config: &Arc<rustls::ClientConfig>) -> Talking {
        let mut tls = session(w, config.clone()).await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut echoes = 0;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                tls.write_all(b"ping").await?;
                let mut back = [0u8; 4];
                tls.read_exact(&mut back).await?;
                echoes += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(echoes)
        });
        Talking { stop, task }
    }

    /// Stops it; every echo it tried came back.
    async fn stop(self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task
            .await
            .unwrap()
            .expect("the talking connection kept echoing")
    }
}

/// Waits (bounded by the caller) until wssify counts a settled connection.
async fn until_settled(admin: SocketAddr) {
    while scrape(admin)
        .await
        .get("wssify_connections_settled")
        .copied()
        < Some(1.0)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens sessions, eight at a time (each checked with an echo), until
/// `priority` has counted `at_least` handshakes; how many it opened.
async fn handshakes_until(
    w: &Wssify,
    admin: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    priority: &str,
    at_least: f64,
) -> usize {
    let mut opened = 0;
    while placed(&scrape(admin).await, priority) < at_least {
        let mut round = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (addr, config) = (w.addr, config.clone());
            round.spawn(async move {
                let mut tls = tls_connect(addr, config, "localhost").await?;
                echo(&mut tls).await;
                Ok::<_, std::io::Error>(())
            });
        }
        while let Some(done) = round.join_next().await {
            done.unwrap()
                .unwrap_or_else(|e| panic!("a handshake failed: {e}; log:\n{}", w.log()));
            opened += 1;
        }
    }
    opened
}

/// The handshake threads of `pid` and the CPU time they have used (ns,
/// from each thread's schedstat).
fn handshake_threads_cpu(pid: u32) -> (usize, u64) {
    let mut threads = 0;
    let mut cpu = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != "wssify-handshak" {
            continue;
        }
        threads += 1;
        let schedstat = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
        cpu += schedstat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .unwrap_or(0);
    }
    (threads, cpu)
}

#[tokio::test]
async fn handshakes_move_to_the_idle_class_once_a_connection_has_settled() {
    let _serial = SERIAL.lock().await;
    bounded(WAIT * 3, async {
        let (mut w, admin) = with_admin(&[]).await;
        let config = pinned_client(&w.fingerprint().await);

        // Nothing settled yet: the first handshake runs on the connections'
        // own threads, at full speed.
        let talking = Talking::start(&w, &config).await;
        let first = scrape(admin).await;
        assert_eq!(placed(&first, "normal"), 1.0);
        assert_eq!(placed(&first, "low"), 0.0);

        // Once that one has been open a second and carries messages,
        // handshakes run on the idle-class threads, whose CPU time shows
        // they did the work.
        until_settled(admin).await;
        let (threads, before) = handshake_threads_cpu(w.pid());
        assert!(threads >= 1, "no handshake threads by default");
        handshakes_until(&w, admin, &config, "low", 5.0).await;
        let (_, after) = handshake_threads_cpu(w.pid());
        assert!(
            after > before,
            "the handshake threads did no work: {before} -> {after} ns"
        );
        assert!(talking.stop().await > 0);

        // Settled but quiet (a WebSocket with nothing to say): handshakes
        // go back to the connections' threads, at full speed.
        let _quiet = session(&w, config.clone()).await;
        let normal = placed(&scrape(admin).await, "normal");
        handshakes_until(&w, admin, &config, "normal", normal + 8.0).await;
    })
    .await;
}

/// A process spinning on one CPU, killed when dropped.
struct Hog(Child);

impl Hog {
    fn on(cpu: &str) -> Hog {
        let child = Command::new("taskset")
            .args(["-c", cpu, "sh", "-c", "while :; do :; done"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("taskset (util-linux) runs a busy loop");
        Hog(child)
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first CPU a process may run on (from `Cpus_allowed_list`, e.g.
/// `0-1` or `2,5`).
fn first_cpu(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or("0");
    list.trim()
        .split([',', '-'])
        .next()
        .unwrap_or("0")
        .to_string()
}

#[tokio::test]
async fn beside_a_busy_process_handshakes_come_back_to_the_connections_threads() {
    let _serial = SERIAL.lock().await;
    bounded(WAIT * 4, async {
        let (mut w, admin) = with_admin(&["--threads", "1"]).await;
        let config = pinned_client(&w.fingerprint().await);
        // Every thread of wssify on one CPU, as a container with one core.
        let cpu = first_cpu(w.pid());
        let pinned = Command::new("taskset")
            .args(["-a", "-p", "-c", &cpu, &w.pid().to_string()])
            .stdout(Stdio::null())
            .status()
            .expect("taskset (util-linux) pins wssify");
        assert!(pinned.success());

        let talking = Talking::start(&w, &config).await;
        until_settled(admin).await;
        // With that CPU to itself, the idle class takes the handshakes.
        handshakes_until(&w, admin, &config, "low", 3.0).await;

        // An ordinary busy process on the same CPU: the idle class gets
        // almost nothing of it (at --handshake-priority low, full
        // handshakes fall to a handful a second). Handshakes must keep
        // completing on the connections' threads, counted as starved.
        let hog = Hog::on(&cpu);
        let opened = handshakes_until(&w, admin, &config, "starved", 20.0).await;
        assert!(opened >= 20);
        drop(hog);
        assert!(talking.stop().await > 0);

        // The watch says so at debug level only (the metric is the
        // operator's view): nothing at info or above.
        let said = w.lines_with("handshake threads starved");
        assert!(!said.is_empty(), "{}", w.log());
        assert!(said.iter().all(|l| l.contains(" DEBUG ")), "{said:?}");
    })
    .await;
}
