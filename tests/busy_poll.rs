//! `--busy-poll`: workers that spin before they sleep still move every byte,
//! still hear signals, and stop spinning when there is nothing to do.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// wssify in front of an echo backend, once it says busy polling is on.
async fn busy_polling(threads: &str, window: &str) -> Wssify {
    let backend = echo_backend().await;
    let mut w = Wssify::start(&[
        "--to",
        &backend.to_string(),
        "--threads",
        threads,
        "--busy-poll",
        window,
    ])
    .await;
    w.wait_for_log(&format!(
        "busy polling: a worker checks for I/O for up to {window} before it sleeps"
    ))
    .await;
    w
}

/// Small messages and a large one echo through a busy-polling wssify, and
/// SIGTERM (which reaches a spinning worker through the event queue it
/// watches) drains and exits 0.
async fn echoes_then_drains(threads: &str) {
    bounded(WAIT, async {
        let mut w = busy_polling(threads, "200us").await;
        let mut tls = dev_connect(&mut w).await;
        let mut back = [0u8; 64];
        for i in 0..500u32 {
            let msg = [(i % 251) as u8; 64];
            tls.write_all(&msg).await.unwrap();
            tls.read_exact(&mut back).await.unwrap();
            assert_eq!(back, msg, "message {i}");
        }
        let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        let (mut reader, mut writer) = tokio::io::split(tls);
        let sent = big.clone();
        let writing = tokio::spawn(async move {
            writer.write_all(&sent).await.unwrap();
            writer.shutdown().await.unwrap();
        });
        let echoed = read_to_end(&mut reader).await.unwrap();
        writing.await.unwrap();
        assert!(echoed == big, "the 1 MB echo came back different");

        w.signal("TERM");
        assert_eq!(w.wait_exit(WAIT).await, Some(0), "log:\n{}", w.log());
    })
    .await;
}

#[tokio::test]
async fn one_thread_echoes_and_drains() {
    echoes_then_drains("1").await;
}

#[tokio::test]
async fn two_threads_echo_and_drain() {
    echoes_then_drains("2").await;
}

/// The spin is bounded by its window: after traffic stops, a process with
/// the largest window uses next to no CPU. A worker that kept spinning
/// would use a whole core (100 ticks a second) or more.
#[tokio::test]
async fn an_idle_process_stops_spinning() {
    bounded(WAIT, async {
        let mut w = busy_polling("2", "10ms").await;
        let mut tls = dev_connect(&mut w).await;
        tls.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        tls.read_exact(&mut back).await.unwrap();

        // Idleness can only be watched over time: this wait is what is
        // measured, not a stand-in for readiness.
        let before = cpu_ticks(w.pid());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let used = cpu_ticks(w.pid()) - before;
        assert!(
            used < 50,
            "an idle busy-polling wssify used {used} clock ticks of CPU in 2 s"
        );
        // And it still answers at once.
        tls.write_all(b"pong").await.unwrap();
        tls.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"pong");
    })
    .await;
}

/// User plus system time of every thread of `pid`, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which may itself hold spaces; utime and
    // stime are fields 14 and 15 of the whole line.
    let rest = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse().unwrap())
        .collect();
    fields.iter().sum()
}

/// More spinning workers than cores make workers wait on each other: said at
/// start, with the count to use instead.
#[tokio::test]
async fn more_threads_than_cores_is_warned_about() {
    bounded(WAIT, async {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = (cores + 1).to_string();
        let mut w = busy_polling(&threads, "50us").await;
        let line = w.wait_for_log("--busy-poll with --threads").await;
        assert!(line.contains(&format!("(--threads {cores})")), "{line}");
    })
    .await;
}
