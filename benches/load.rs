//! The load benchmark: memory per idle connection, bulk throughput, full and
//! resumed handshakes per second, and small-message latency, measured over
//! real sockets against a TLS terminator on one core; and three hostile
//! loads: connections that hold part of a record header, clients that stop
//! reading under a memory budget, and a flood of stalled and full
//! handshakes next to an established connection.
//!
//! `cargo bench` runs it self-contained: an echo backend (on its own thread)
//! and the load client here, the release `wssify` beside them, and then the
//! latency figures once more with `--busy-poll`; the partial-record and
//! memory-budget phases each start a fresh `wssify`, so that heap freed by
//! earlier phases does not hide growth. `scripts/bench-vs-nginx.sh` uses
//! its other modes to put nginx and wssify through the same load:
//!
//! ```text
//! load echo ADDR                      run only the echo backend
//! load gen-cert DIR                   write an ECDSA P-256 cert.pem/key.pem
//! load run --target ADDR --pid PID    measure a terminator that is already running
//! ```
//!
//! The echo backend echoes, except that a connection whose first byte is
//! [`PUSH`] followed by a little-endian u64 N gets N bytes of a checkable
//! pattern pushed to it instead (then a half-close).
//!
//! Options for the measuring modes: `--idle N[,N...]` (idle connections to
//! hold), `--seconds S` (per rate figure), `--bulk-mib M` (per connection),
//! `--kx x25519` (classical key exchange only, as a client without
//! post-quantum support), `--name NAME` (for the report), `--only
//! memory,latency,latency-paced,throughput,full-handshake,settled-handshake,resumed,handshake-flood,partial-record,memory-budget`
//! (only these phases, for A/B runs and profilers; `memory` is the idle
//! figures and idle-then-busy; without `--only`, all of them), `--memory-only`
//! (hold the idle connections until killed, for a heap profiler).
//!
//! The hostile phases and their options:
//!
//! - `partial-record`: `--partial-conns N` (2,000) connections each hold
//!   3 bytes of a record header; RSS per connection against the same ones
//!   idle. Self-contained, it runs twice, the second time with glibc's
//!   `MALLOC_PERTURB_` in the terminator's environment, so RSS counts what
//!   was allocated rather than only the pages touched (a buffer reserved
//!   and never filled costs a fresh heap one page, a heap that has run a
//!   while all of it); the line says which (`malloc_perturb=`, read from
//!   the target's environment, or given with `--malloc-perturb V` for a
//!   process that writes over it, as nginx does).
//! - `memory-budget`: `--budget-conns N` (2,000) clients with small
//!   receive buffers stop reading while their backends push `--push-mib M`
//!   (2: twice what the path holds per connection on this VM, about
//!   0.25 MiB in the terminator's send queue to the client and 0.5 MiB in
//!   its receive queue from the backend; 8 MiB took minutes to drain), 20
//!   bulk transfers of `--budget-bulk-mib M` (16) echo beside them, and a
//!   new client echoes once; RSS is sampled for `--budget-seconds S` (10),
//!   then every client reads and checks its bytes. Self-contained, it runs
//!   with `--max-memory 64MiB` and with the default budget; with `--target`
//!   the budget is read from the target's command line (give it
//!   `--max-conns 10000 --stall-timeout 0` too). The kernel's share
//!   (`kernel_tcp_growth_mib`, machine-wide) is in no budget: expect the
//!   VM's TCP memory to pass its pressure threshold while this runs.
//! - `handshake-flood`: 64-byte echo latency on one connection, quiet and
//!   then while `--flood-stalled N` (5,000) clients hold partial
//!   ClientHellos and 32 at a time complete `--flood-handshakes N` (5,000,
//!   and for 5 s at least) full handshakes, from a thread in the kernel's
//!   idle class so that they do not delay the probe on the load's core
//!   (see `flood_clients`).
//!
//! `settled-handshake` is `full-handshake` beside one connection opened
//! 2.5 s before that echoes every 50 ms: wssify's default runs handshakes
//! on low-priority threads only while such a connection carries messages,
//! and this is their rate then.
//!
//! With `--target`, partial-record and memory-budget should get a fresh
//! process each (the script starts them).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Clone)]
struct Options {
    idle: Vec<usize>,
    seconds: f64,
    bulk_mib: usize,
    target: Option<SocketAddr>,
    pid: Option<u32>,
    name: String,
    kx: Kx,
    /// Measure memory only, then hold the connections until killed.
    memory_only: bool,
    /// Run only these phases (their labels in the output, comma-separated).
    only: Option<String>,
    /// partial-record: connections that each hold 3 bytes of a header.
    partial_conns: usize,
    /// memory-budget: clients that stop reading while their backends push.
    budget_conns: usize,
    /// memory-budget: MiB pushed to each of them.
    push_mib: usize,
    /// memory-budget: MiB echoed by each of the bulk transfers beside them.
    budget_bulk_mib: usize,
    /// memory-budget: how long RSS is sampled while nobody reads.
    budget_seconds: f64,
    /// handshake-flood: clients that open a handshake and stall.
    flood_stalled: usize,
    /// partial-record: the target's MALLOC_PERTURB_, when its environment
    /// cannot tell (nginx writes its process title over it).
    malloc_perturb: Option<String>,
    /// handshake-flood: full handshakes completed in a loop meanwhile (at
    /// least; the loop runs for 5 s at least).
    flood_handshakes: usize,
}

/// Every phase `--only` can name, in the order they run.
const PHASES: &[&str] = &[
    "memory",
    "latency",
    "latency-paced",
    "throughput",
    "full-handshake",
    "settled-handshake",
    "resumed",
    "handshake-flood",
    "partial-record",
    "memory-budget",
];

impl Options {
    /// Whether `--only` (if given) names this phase.
    fn wants(&self, label: &str) -> bool {
        self.only
            .as_deref()
            .is_none_or(|only| only.split(',').any(|l| l == label))
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kx {
    /// The client's defaults: X25519MLKEM768 first (what browsers offer now).
    Default,
    /// Classical X25519 only, as a client without post-quantum support.
    X25519,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mode = args.first().map(String::as_str).unwrap_or("");
    match mode {
        "echo" => {
            let addr: SocketAddr = args.get(1).ok_or("echo needs ADDR")?.parse()?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let listener = TcpListener::bind(addr).await?;
                println!("echo listening on {}", listener.local_addr()?);
                // `--proxy-protocol`: each connection starts with a PROXY
                // header (wssify --proxy-protocol), read and dropped.
                let proxied = args.iter().any(|a| a == "--proxy-protocol");
                echo_loop(listener, proxied).await;
                Ok(())
            })
        }
        "gen-cert" => {
            let dir = std::path::PathBuf::from(args.get(1).ok_or("gen-cert needs DIR")?);
            std::fs::create_dir_all(&dir)?;
            let cert = rcgen::generate_simple_self_signed(vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
            ])?;
            std::fs::write(dir.join("cert.pem"), cert.cert.pem())?;
            std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem())?;
            println!("wrote {}/cert.pem and key.pem (ECDSA P-256)", dir.display());
            Ok(())
        }
        _ => {
            let options = parse_options(&args)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(measure_all(options))
        }
    }
}

fn parse_options(args: &[String]) -> Result<Options> {
    let mut o = Options {
        idle: vec![1000, 5000],
        seconds: 5.0,
        bulk_mib: 256,
        target: None,
        pid: None,
        name: "wssify".to_string(),
        kx: Kx::Default,
        memory_only: false,
        only: None,
        partial_conns: 2000,
        budget_conns: 2000,
        push_mib: 2,
        budget_bulk_mib: 16,
        budget_seconds: 10.0,
        flood_stalled: 5000,
        flood_handshakes: 5000,
        malloc_perturb: None,
    };
    let mut it = args.iter().skip_while(|a| *a == "run");
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--idle" => {
                o.idle = value()?
                    .split(',')
                    .map(|n| n.parse())
                    .collect::<std::result::Result<_, _>>()?
            }
            "--seconds" => o.seconds = value()?.parse()?,
            "--bulk-mib" => o.bulk_mib = value()?.parse()?,
            "--target" => o.target = Some(value()?.parse()?),
            "--pid" => o.pid = Some(value()?.parse()?),
            "--name" => o.name = value()?.clone(),
            "--memory-only" => o.memory_only = true,
            "--only" => {
                let only = value()?.clone();
                if let Some(unknown) = only.split(',').find(|l| !PHASES.contains(l)) {
                    return Err(format!(
                        "--only: no phase {unknown:?}; the phases are {}",
                        PHASES.join(",")
                    )
                    .into());
                }
                o.only = Some(only)
            }
            "--partial-conns" => o.partial_conns = value()?.parse()?,
            "--budget-conns" => o.budget_conns = value()?.parse()?,
            "--push-mib" => o.push_mib = value()?.parse()?,
            "--budget-bulk-mib" => o.budget_bulk_mib = value()?.parse()?,
            "--budget-seconds" => o.budget_seconds = value()?.parse()?,
            "--flood-stalled" => o.flood_stalled = value()?.parse()?,
            "--flood-handshakes" => o.flood_handshakes = value()?.parse()?,
            "--malloc-perturb" => o.malloc_perturb = Some(value()?.clone()),
            "--kx" => {
                o.kx = match value()?.as_str() {
                    "x25519" => Kx::X25519,
                    _ => Kx::Default,
                }
            }
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    Ok(o)
}

/// The terminator under test: started here (self-contained) or given.
struct Target {
    addr: SocketAddr,
    pid: u32,
    _child: Option<ChildGuard>,
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pins this process's threads to `cpu` so load and terminator do not share.
fn pin_self(cpu: usize) {
    let _ = Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &cpu.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The `--busy-poll` window of the self-contained run's second wssify.
const BUSY_POLL: &str = "100us";

async fn start_wssify(backend: SocketAddr, extra: &[&str]) -> Result<Target> {
    start_wssify_with(backend, extra, &[]).await
}

/// [`start_wssify`] with more environment variables.
async fn start_wssify_with(
    backend: SocketAddr,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<Target> {
    let exe = env!("CARGO_BIN_EXE_wssify");
    let mut child = Command::new("taskset")
        .args(["-c", "0", exe, "--listen", "127.0.0.1:0", "--to"])
        .arg(backend.to_string())
        .args(["--threads", "1"])
        // The in-memory certificate, as in every earlier run: one
        // certificate per handshake, and nothing written to the home.
        .arg("--self-signed")
        .args(extra)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn,wssify=info,wssify::connection=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let pid = child.id();
    let guard = ChildGuard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads its log for the address, then keeps draining it so it never
    // blocks on a full pipe.
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(|l| l.ok())
        {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30))?.parse()?;
    Ok(Target {
        addr,
        pid,
        _child: Some(guard),
    })
}

async fn measure_all(o: Options) -> Result<()> {
    pin_self(LOAD_CPU);
    raise_fd_limit();
    // The echo backend of a self-contained run.
    let mut backend = None;
    let target = match (o.target, o.pid) {
        (Some(addr), Some(pid)) => Target {
            addr,
            pid,
            _child: None,
        },
        (None, None) => {
            let addr = spawn_backend()?;
            backend = Some(addr);
            start_wssify(addr, &[]).await?
        }
        _ => return Err("give both --target and --pid, or neither".into()),
    };
    println!(
        "# {}: {} (pid {}), load on cpu 1, terminator on cpu 0, kx {}",
        o.name,
        target.addr,
        target.pid,
        if o.kx == Kx::X25519 {
            "X25519"
        } else {
            "client default (X25519MLKEM768 first)"
        }
    );
    let full = client_config(false, o.kx);

    if o.wants("memory") {
        idle_memory(&o, &target, full.clone()).await?;
    }
    rates(&o, &target, full.clone()).await?;
    if o.wants("handshake-flood") {
        handshake_flood(&o, &target, full.clone()).await?;
    }

    let Some(backend) = backend else {
        // The operator's terminator: the memory phases measure it as it is
        // (give each a fresh process for figures comparable to `cargo bench`).
        if o.wants("partial-record") {
            partial_record(&o, &target, full.clone()).await?;
        }
        if o.wants("memory-budget") {
            memory_budget(&o, &target, full).await?;
        }
        return Ok(());
    };
    drop(target);
    // Latency again with busy polling, on a fresh wssify on the same core.
    if o.only.is_none() {
        let busy = start_wssify(backend, &["--busy-poll", BUSY_POLL]).await?;
        println!(
            "# {} --busy-poll {BUSY_POLL}: {} (pid {})",
            o.name, busy.addr, busy.pid
        );
        let only = Options {
            only: Some("latency,latency-paced".to_string()),
            ..o.clone()
        };
        rates(&only, &busy, full.clone()).await?;
    }
    // The memory phases each on a fresh process, whose heap holds nothing
    // freed by earlier phases that new connections could reuse unseen.
    // Twice: RSS counts only the pages a process touched, and a buffer
    // reserved but never filled costs a fresh heap one page; a heap whose
    // pages were touched before (any process that has run a while) pays
    // all of it. glibc's MALLOC_PERTURB_ fills every allocation, so RSS
    // then counts what was allocated.
    if o.wants("partial-record") {
        for env in [&[][..], &[("MALLOC_PERTURB_", MALLOC_PERTURB)]] {
            let fresh = start_wssify_with(backend, &[], env).await?;
            println!(
                "# {} fresh{}: {} (pid {})",
                o.name,
                if env.is_empty() {
                    String::new()
                } else {
                    format!(", MALLOC_PERTURB_={MALLOC_PERTURB}")
                },
                fresh.addr,
                fresh.pid
            );
            partial_record(&o, &fresh, full.clone()).await?;
        }
    }
    if o.wants("memory-budget") {
        let common = ["--max-conns", "10000", "--stall-timeout", "0"];
        for budget in [Some("64MiB"), None] {
            let mut flags = common.to_vec();
            if let Some(size) = budget {
                flags.extend(["--max-memory", size]);
            }
            let fresh = start_wssify(backend, &flags).await?;
            println!(
                "# {} {}: {} (pid {})",
                o.name,
                flags.join(" "),
                fresh.addr,
                fresh.pid
            );
            memory_budget(&o, &fresh, full.clone()).await?;
        }
    }
    Ok(())
}

/// Memory per idle connection at each `--idle` count, then idle-then-busy.
/// First, on a fresh process, so caches from the rate tests do not hide
/// growth. Connections are handshaken, echo once, then sit idle.
async fn idle_memory(o: &Options, target: &Target, full: Arc<rustls::ClientConfig>) -> Result<()> {
    let mut held = Vec::new();
    let base = rss_kib(target.pid)?;
    // The previous count and its RSS: growth between two counts is the
    // marginal cost of a connection, without the one-off growth (runtime
    // tables, the heap's high-water mark from a burst of handshakes) that
    // the first count also carries. Flat means this stays put.
    let mut previous: Option<(usize, u64)> = None;
    // `--idle 0` skips the memory figures (for repeated rate rounds).
    for &n in o.idle.iter().filter(|&&n| n > 0) {
        let started = Instant::now();
        while held.len() < n {
            let batch = (n - held.len()).min(200);
            let opened = futures_join(batch, |_| open_idle(target.addr, full.clone())).await?;
            held.extend(opened);
        }
        settle().await;
        let rss = rss_kib(target.pid)?;
        let per = (rss.saturating_sub(base)) as f64 / n as f64;
        let marginal = match previous {
            Some((m, before)) if n > m => format!(
                " marginal_kib={:.2} (from {m})",
                rss.saturating_sub(before) as f64 / (n - m) as f64
            ),
            _ => String::new(),
        };
        println!(
            "{:<14} idle_conns={n} rss_kib={rss} base_kib={base} per_conn_kib={per:.2}{marginal} (opened in {:.1}s)",
            "memory",
            started.elapsed().as_secs_f64()
        );
        previous = Some((n, rss));
    }
    if o.memory_only {
        println!("holding {} connections; stop with Ctrl-C", held.len());
        std::future::pending::<()>().await;
    }
    // Idle then busy: every held connection moves data again.
    if !held.is_empty() {
        idle_then_busy(target.pid, held).await?;
    }
    Ok(())
}

/// Every held connection echoes once more, and memory is read again.
async fn idle_then_busy(pid: u32, mut held: Vec<Tls>) -> Result<()> {
    let busy_start = Instant::now();
    let count = held.len();
    let mut busy = Vec::new();
    for mut tls in held.drain(..) {
        busy.push(async move {
            let mut buf = [0u8; 64];
            tls.write_all(&[9u8; 64]).await?;
            tls.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(())
        });
    }
    let mut failed = 0;
    for result in run_all(busy).await {
        if result.is_err() {
            failed += 1;
        }
    }
    println!(
        "{:<14} conns={count} failed={failed} all_echoed_in={:.2}s",
        "idle-then-busy",
        busy_start.elapsed().as_secs_f64()
    );
    settle().await;
    println!("{:<14} rss_kib_after_busy={}", "memory", rss_kib(pid)?);
    Ok(())
}

/// Latency, throughput, and full and resumed handshakes per second, each
/// with the CPU both cores spent on it.
async fn rates(o: &Options, target: &Target, full: Arc<rustls::ClientConfig>) -> Result<()> {
    let addr = target.addr;
    let wanted = |label: &str| o.wants(label);
    // Back to back, then as a WebSocket's messages come: apart, so that the
    // terminator's core goes idle between them and its CPU share over the
    // phase is what each message costs it (busy polling shows its price).
    let paced = Duration::from_secs(1) / PACED_PER_S;
    for (label, rounds, pace, how) in [
        ("latency", 20_000, None, "back to back".to_string()),
        (
            "latency-paced",
            3 * PACED_PER_S as usize,
            Some(paced),
            format!("{PACED_PER_S} a second"),
        ),
    ] {
        if !wanted(label) {
            continue;
        }
        let cpu = CpuMeter::start(target.pid)?;
        let at = latency(addr, full.clone(), rounds, pace).await?;
        println!(
            "{label:<14} p50_us={:.1} p99_us={:.1} p90_us={:.1} p999_us={:.1} (64-byte echo, 1 connection, {rounds} round trips {how}) {}",
            at(0.50),
            at(0.99),
            at(0.90),
            at(0.999),
            cpu.report()?
        );
    }

    // Bounded: once on this VM (kernel 6.18, loopback) one bulk connection
    // stalled in TCP retransmission back-off, the terminator's send queue
    // full and the client's receive queue empty, every process waiting in
    // epoll; a stalled round must not hang the run, and leaves its figure
    // out of the medians.
    if wanted("throughput") {
        let cpu = CpuMeter::start(target.pid)?;
        let limit = Duration::from_secs(60 + (4 * o.bulk_mib / 10) as u64);
        let bulk = throughput(addr, full.clone(), 4, o.bulk_mib);
        tokio::pin!(bulk);
        tokio::select! {
            mbps = &mut bulk => println!(
                "{:<14} mb_per_s={:.0} (4 connections x {} MiB, echoed, payload MB/s each way) {}",
                "throughput",
                mbps?,
                o.bulk_mib,
                cpu.report()?
            ),
            _ = tokio::time::sleep(limit) => {
                println!(
                    "{:<14} stalled: not done within {}s; left out of the figures; the sockets:",
                    "throughput",
                    limit.as_secs()
                );
                // The TCP state of the stalled connections (still open
                // here), for whoever looks into the next stall.
                let port = format!("( sport = :{0} or dport = :{0} )", addr.port());
                let _ = Command::new("ss").args(["-tmi", &port]).status();
            }
        }
    }

    let secs = Duration::from_secs_f64(o.seconds);
    if wanted("full-handshake") {
        let cpu = CpuMeter::start(target.pid)?;
        let (rate, _) = handshakes(addr, || full.clone(), 32, secs).await?;
        println!(
            "{:<14} per_s={rate:.0} (32 concurrent, no resumption, each echoes 1 byte) {}",
            "full-handshake",
            cpu.report()?
        );
    }

    // The same beside one connection opened 2.5 s before that echoes 64
    // bytes every 50 ms meanwhile (a WebSocket carrying messages): what a
    // handshake costs where there are messages it could delay (wssify's
    // default then runs handshakes on its low-priority threads; see its
    // README).
    if wanted("settled-handshake") {
        let mut settled = connect(addr, full.clone()).await?;
        settled.write_all(b"s").await?;
        let mut one = [0u8; 1];
        settled.read_exact(&mut one).await?;
        tokio::time::sleep(SETTLE).await;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let talking = tokio::spawn(async move {
            let mut back = [0u8; 64];
            while !stopped.load(Ordering::Relaxed) {
                settled.write_all(&[0x42u8; 64]).await?;
                settled.read_exact(&mut back).await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok::<_, std::io::Error>(())
        });
        let cpu = CpuMeter::start(target.pid)?;
        let (rate, _) = handshakes(addr, || full.clone(), 32, secs).await?;
        println!(
            "{:<14} per_s={rate:.0} (as full-handshake, beside one connection open for {}s echoing every 50 ms) {}",
            "settled-handshake",
            SETTLE.as_secs_f64(),
            cpu.report()?
        );
        stop.store(true, Ordering::Relaxed);
        talking.await??;
    }

    // Each resuming client keeps its own ticket store, as each browser does:
    // one shared store (rustls keeps 8 tickets per server) runs dry under
    // 32 concurrent clients, which measures the load client, not the server.
    if wanted("resumed") {
        let cpu = CpuMeter::start(target.pid)?;
        let (rate, share) = handshakes(addr, || client_config(true, o.kx), 32, secs).await?;
        println!(
            "{:<14} per_s={rate:.0} resumed_share={:.0}% (32 concurrent, TLS 1.3 tickets) {}",
            "resumed",
            share * 100.0,
            cpu.report()?
        );
    }
    Ok(())
}

/// How long the settled-handshake phase's connection is open before its
/// handshakes start: past the second after which wssify counts a
/// connection as settled (checked once a second, so 2 s at most).
const SETTLE: Duration = Duration::from_millis(2500);

/// The first 3 bytes of a TLS application-data record header: type 23,
/// version 3.3. The length that would follow never comes.
const PARTIAL_HEADER: [u8; 3] = [0x17, 0x03, 0x03];

/// The byte glibc fills allocations with in the partial-record run that
/// counts allocated rather than touched memory.
const MALLOC_PERTURB: &str = "165";

/// Whether a process runs with glibc's MALLOC_PERTURB_ (its RSS then
/// counts every allocated byte), and with which value.
fn malloc_perturb_of(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/environ"))
        .ok()
        .and_then(|environ| {
            environ.split(|&b| b == 0).find_map(|var| {
                let var = String::from_utf8_lossy(var);
                var.strip_prefix("MALLOC_PERTURB_=")
                    .filter(|v| !v.is_empty() && *v != "0")
                    .map(str::to_string)
            })
        })
        .unwrap_or_else(|| "off".to_string())
}

/// Partial-record target: holding part of a header costs under this much
/// over an idle connection.
const PARTIAL_TARGET_KIB: f64 = 1.0;

/// Connections that each hold 3 bytes of a record header: their memory
/// per connection against the same connections idle. Each is handshaken
/// and echoes once (as the idle figure's are), then the 3 bytes go onto
/// the TCP socket under the TLS session, where the terminator must hold
/// them until the rest of the header arrives, which it never does.
async fn partial_record(
    o: &Options,
    target: &Target,
    config: Arc<rustls::ClientConfig>,
) -> Result<()> {
    let n = o.partial_conns.max(1);
    let started = Instant::now();
    let base = rss_kib(target.pid)?;
    let mut conns = Vec::with_capacity(n);
    while conns.len() < n {
        let batch = (n - conns.len()).min(200);
        conns.extend(futures_join(batch, |_| open_idle(target.addr, config.clone())).await?);
    }
    settle().await;
    let idle = rss_kib(target.pid)?;
    for tls in conns.iter_mut() {
        tls.get_mut().0.write_all(&PARTIAL_HEADER).await?;
    }
    // Twice the usual settle: every connection has a read to finish.
    settle().await;
    settle().await;
    let partial = rss_kib(target.pid)?;
    // A terminator may close such connections (it should not: a header
    // can arrive in pieces); count those it did, which leave the figure.
    let closed = conns
        .iter()
        .filter(|tls| !still_open(tls.get_ref().0))
        .count();
    let per = |rss: u64| rss.saturating_sub(base) as f64 / n as f64;
    let extra = partial as f64 - idle as f64;
    let extra_per = extra / n as f64;
    println!(
        "{:<14} conns={n} idle_per_conn_kib={:.2} partial_per_conn_kib={:.2} extra_per_conn_kib={extra_per:.2} malloc_perturb={} closed={closed} base_kib={base} idle_rss_kib={idle} partial_rss_kib={partial} ({:.1}s) target: extra < {PARTIAL_TARGET_KIB} KiB: {}",
        "partial-record",
        per(idle),
        per(partial),
        o.malloc_perturb
            .clone()
            .unwrap_or_else(|| malloc_perturb_of(target.pid)),
        started.elapsed().as_secs_f64(),
        if extra_per < PARTIAL_TARGET_KIB {
            "met"
        } else {
            "MISSED"
        }
    );
    Ok(())
}

/// Whether the peer has neither closed the connection nor sent anything
/// (an alert, say) since the last read.
fn still_open(tcp: &TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    // The socket is non-blocking: nothing to read is WouldBlock.
    matches!(
        socket2::SockRef::from(tcp).peek(&mut byte),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    )
}

/// Clients in memory-budget that stop reading, and bulk transfers beside them.
const BUDGET_BULK_CONNS: usize = 20;
/// The receive buffer of a client that stops reading: small, so the bytes
/// pushed to it wait in the terminator, not in this client's kernel buffer.
const STALLED_RCVBUF: u32 = 4096;
/// A new client must be served within this while the others are stalled.
const NEWCOMER_LIMIT: Duration = Duration::from_secs(30);

/// Clients that stop reading while their backends push, under the
/// terminator's memory budget: the peak RSS over the base with those
/// clients connected (and idle), whether a new client is still served,
/// and whether every pushed byte arrives once they read again.
async fn memory_budget(
    o: &Options,
    target: &Target,
    config: Arc<rustls::ClientConfig>,
) -> Result<()> {
    let (addr, pid) = (target.addr, target.pid);
    let n = o.budget_conns;
    let push_len = (o.push_mib as u64) << 20;
    let budget = budget_of(pid);
    let fresh_base = rss_kib(pid)?;

    let opening = Instant::now();
    let mut stalled = Vec::with_capacity(n);
    while stalled.len() < n {
        let batch = (n - stalled.len()).min(200);
        stalled.extend(futures_join(batch, |_| open_small_window(addr, config.clone())).await?);
    }
    settle().await;
    let base = rss_kib(pid)?;
    let opened_in = opening.elapsed();

    // Nobody reads from here on: every backend pushes, 20 bulk transfers
    // echo beside them, and a new client arrives a little later.
    let kernel_before = kernel_tcp_pages();
    let sampler = RssSampler::start(pid);
    let request = push_request(push_len);
    for tls in stalled.iter_mut() {
        tls.write_all(&request).await?;
        tls.flush().await?;
    }
    let bulk = {
        let config = config.clone();
        let mib = o.budget_bulk_mib;
        tokio::spawn(async move {
            let started = Instant::now();
            let run = throughput(addr, config, BUDGET_BULK_CONNS, mib);
            let result = tokio::time::timeout(Duration::from_secs(180), run).await;
            (result, started.elapsed())
        })
    };
    let newcomer = {
        let config = config.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let started = Instant::now();
            let served = async {
                let mut tls = connect(addr, config).await?;
                let echo = Instant::now();
                let mut buf = [0u8; 64];
                tls.write_all(&[0x42u8; 64]).await?;
                tls.read_exact(&mut buf).await?;
                Ok::<_, std::io::Error>((echo.elapsed(), started.elapsed()))
            };
            tokio::time::timeout(NEWCOMER_LIMIT, served).await
        })
    };
    tokio::time::sleep(Duration::from_secs_f64(o.budget_seconds)).await;
    let stall_peak = sampler.take_peak();
    // Bytes parked in kernel buffers (machine-wide, so other processes'
    // sockets move it too): no budget in the terminator can count them.
    let kernel_mib = match (kernel_before, kernel_tcp_pages()) {
        (Some(before), Some(after)) => format!(
            "{:.0}",
            (after as f64 - before as f64) * page_size() as f64 / (1 << 20) as f64
        ),
        _ => "?".to_string(),
    };
    // Waited for only past the window if it is slower than the window.
    let newcomer = match newcomer.await? {
        Ok(Ok((echo, total))) => Ok((ms(echo), ms(total))),
        Ok(Err(e)) => Err(format!("FAILED: the new client's echo failed: {e}")),
        Err(_) => Err(format!(
            "FAILED: a new client was not served within {}s while {n} clients were stalled",
            NEWCOMER_LIMIT.as_secs()
        )),
    };

    // Everyone reads again; each checks it got all its bytes, in order.
    let draining = Instant::now();
    let drain_cpu = CpuMeter::start(pid)?;
    let readers: Vec<_> = stalled
        .into_iter()
        .map(|tls| read_push(tls, push_len))
        .collect();
    let results = tokio::time::timeout(Duration::from_secs(300), run_all(readers)).await;
    let drain_secs = draining.elapsed().as_secs_f64();
    let drain_cpu = drain_cpu.report()?.replace("cpu_", "drain_cpu_");
    let drain_peak = sampler.take_peak();
    drop(sampler);
    let (verified, corrupt, extra, errors) = match &results {
        Ok(results) => results.iter().fold((0, 0, 0, 0), |acc, r| {
            (
                acc.0 + r.verified,
                acc.1 + u64::from(r.corrupt),
                acc.2 + r.extra,
                acc.3 + u64::from(r.error.is_some()),
            )
        }),
        Err(_) => (0, 0, 0, n as u64),
    };
    let lost = (n as u64 * push_len).saturating_sub(verified);
    let (bulk, bulk_took) = bulk.await?;
    let bulk = match bulk {
        Ok(Ok(mbps)) => format!("bulk_mb_per_s={mbps:.0}"),
        Ok(Err(e)) => format!("bulk_failed=\"{e}\""),
        Err(_) => "bulk_failed=\"not done within 180s\"".to_string(),
    };

    let over = |peak: u64| peak.saturating_sub(base) as f64 / 1024.0;
    let peak_over = over(stall_peak.max(drain_peak));
    let (echo_ms, total_ms) = match &newcomer {
        Ok((echo, total)) => (format!("{echo:.1}"), format!("{total:.1}")),
        Err(_) => ("timeout".to_string(), "timeout".to_string()),
    };
    let verdict = match budget.mib() {
        Some(limit) if peak_over < limit => "under the budget",
        Some(_) => "OVER THE BUDGET",
        None => "no budget given",
    };
    println!(
        "{:<14} peak_over_base_mib={peak_over:.1} budget_mib={} bytes_lost={lost} new_client_echo_ms={echo_ms} new_client_total_ms={total_ms} stall_peak_over_base_mib={:.1} drain_peak_over_base_mib={:.1} base_kib={base} fresh_base_kib={fresh_base} kernel_tcp_growth_mib={kernel_mib} bytes_verified={verified} drain_s={drain_secs:.1} {drain_cpu} {bulk} bulk_s={:.1} ({n} stalled clients x {} MiB pushed, opened in {:.1}s; {BUDGET_BULK_CONNS} bulk x {} MiB; {verdict})",
        "memory-budget",
        budget.label(),
        over(stall_peak),
        over(drain_peak),
        bulk_took.as_secs_f64(),
        o.push_mib,
        opened_in.as_secs_f64(),
        o.budget_bulk_mib,
    );
    if let Err(why) = &newcomer {
        println!("{:<14} {why}", "memory-budget");
    }
    if lost > 0 || corrupt > 0 || extra > 0 || errors > 0 {
        println!(
            "{:<14} FAILED: {lost} bytes lost, {corrupt} clients saw bytes out of pattern, {extra} bytes too many, {errors} clients ended in an error{}",
            "memory-budget",
            match &results {
                Ok(results) => results
                    .iter()
                    .find_map(|r| r.error.as_ref())
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default(),
                Err(_) => " (not all read within 300s)".to_string(),
            }
        );
    }
    Ok(())
}

/// The machine's TCP buffer memory in pages, from /proc/net/sockstat.
fn kernel_tcp_pages() -> Option<u64> {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "mem")?;
    words.next()?.parse().ok()
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A TLS client with a small receive buffer (set before connecting, so the
/// window it offers stays small).
async fn open_small_window(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<Tls> {
    let open = async {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_recv_buffer_size(STALLED_RCVBUF)?;
        let tcp = socket.connect(addr).await?;
        tcp.set_nodelay(true)?;
        tls_over(tcp, config).await
    };
    tokio::time::timeout(Duration::from_secs(30), open)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no handshake within 30s"))?
}

/// What one stalled client got once it read again.
struct Pushed {
    /// Bytes in order and as pushed.
    verified: u64,
    /// Whether a read broke the pattern (nothing after it is counted).
    corrupt: bool,
    /// Bytes past the pushed length.
    extra: u64,
    error: Option<std::io::Error>,
}

/// Reads a push to its end, checking the pattern as it goes.
async fn read_push(mut tls: Tls, len: u64) -> Pushed {
    // A larger window from here on, so the drain takes seconds, not
    // minutes; the figures were taken with the small one.
    let _ = socket2::SockRef::from(tls.get_ref().0).set_recv_buffer_size(256 * 1024);
    let mut out = Pushed {
        verified: 0,
        corrupt: false,
        extra: 0,
        error: None,
    };
    let mut buf = vec![0u8; PUSH_CHUNK];
    let mut got = 0u64;
    while got < len {
        let n = match tls.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                out.error = Some(e);
                break;
            }
        };
        let wanted = (n as u64).min(len - got) as usize;
        if !out.corrupt {
            if matches_pattern(got, &buf[..wanted]) {
                out.verified += wanted as u64;
            } else {
                out.corrupt = true;
            }
        }
        out.extra += (n - wanted) as u64;
        got += n as u64;
    }
    out
}

/// The memory budget a terminator was started with, from its command line.
enum BudgetFlag {
    Mib(f64),
    /// wssify without `--max-memory`: its default budget.
    Default,
    /// Not wssify (nginx): nothing to compare with.
    None,
}

impl BudgetFlag {
    fn mib(&self) -> Option<f64> {
        match self {
            BudgetFlag::Mib(mib) => Some(*mib),
            _ => None,
        }
    }

    fn label(&self) -> String {
        match self {
            BudgetFlag::Mib(mib) => format!("{mib}"),
            BudgetFlag::Default => "default".to_string(),
            BudgetFlag::None => "none".to_string(),
        }
    }
}

fn budget_of(pid: u32) -> BudgetFlag {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return BudgetFlag::None;
    };
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let value = args.iter().enumerate().find_map(|(i, a)| {
        if a == "--max-memory" {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix("--max-memory=").map(str::to_string)
        }
    });
    match value {
        Some(text) => parse_mib(&text).map_or(BudgetFlag::Default, BudgetFlag::Mib),
        None if args.first().is_some_and(|a| a.contains("wssify")) => BudgetFlag::Default,
        None => BudgetFlag::None,
    }
}

/// `64MiB`, `1GiB`, `512k`, `1048576`... in MiB.
fn parse_mib(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let number: f64 = text[..split].parse().ok()?;
    let unit = match text[split..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0 / (1 << 20) as f64,
        "k" | "kb" | "kib" => 1.0 / 1024.0,
        "m" | "mb" | "mib" => 1.0,
        "g" | "gb" | "gib" => 1024.0,
        _ => return None,
    };
    Some(number * unit)
}

/// Reads a process's RSS every 100 ms on its own thread, keeping the peak.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(rss) = rss_kib(pid) {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        RssSampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// The peak since the start or the last call, in KiB.
    fn take_peak(&self) -> u64 {
        self.peak.swap(0, Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A partial ClientHello: the record header announces 512 bytes, the
/// handshake header 508, and only the version and 10 bytes of the random
/// follow. A terminator waits for the rest until its handshake timeout.
const PARTIAL_CLIENT_HELLO: [u8; 21] = [
    0x16, 0x03, 0x01, 0x02, 0x00, // handshake record, 512 bytes
    0x01, 0x00, 0x01, 0xfc, // ClientHello, 508 bytes
    0x03, 0x03, // TLS 1.2 legacy version
    0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, // random, in part
];

/// Handshake-flood target: the flood's p99 within this factor of the quiet one.
const FLOOD_TARGET_RATIO: f64 = 2.0;
/// Full handshakes at once in the flood, as in the full-handshake phase.
const FLOOD_CONCURRENCY: usize = 32;
/// The shortest flood window: 5,000 handshakes can take under 2 s, too
/// few round trips of 2 ms for a p99; the loop goes on until both are done.
const FLOOD_WINDOW_MIN: Duration = Duration::from_secs(5);
/// The longest the flood window lasts if its full handshakes are slow.
const FLOOD_WINDOW_MAX: Duration = Duration::from_secs(30);
/// How long the quiet latency is measured for.
const FLOOD_QUIET: Duration = Duration::from_secs(3);

/// 64-byte echo latency on one established connection, quiet and then
/// while clients open handshakes and stall and others complete full
/// handshakes in a loop.
async fn handshake_flood(
    o: &Options,
    target: &Target,
    config: Arc<rustls::ClientConfig>,
) -> Result<()> {
    let addr = target.addr;
    let probe = Probe::start(addr, config.clone()).await?;
    let quiet = probe.measure_for(FLOOD_QUIET).await?;
    let quiet_rounds = quiet.len();
    let quiet = quantiles(quiet);

    // The stalled handshakes first; each one the terminator closes (its
    // handshake timeout) opens again, so the count holds.
    let stop = Arc::new(AtomicBool::new(false));
    let held = Arc::new(AtomicUsize::new(0));
    let cut = Arc::new(AtomicU64::new(0));
    let opening = Instant::now();
    let stallers: Vec<_> = (0..o.flood_stalled)
        .map(|_| {
            tokio::spawn(stall_handshake(
                addr,
                stop.clone(),
                held.clone(),
                cut.clone(),
            ))
        })
        .collect();
    while held.load(Ordering::Relaxed) < o.flood_stalled
        && opening.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held_at_start = held.load(Ordering::Relaxed);
    let stalled_in = opening.elapsed();

    // Then full handshakes in a loop, and the probe until they are done.
    let cpu = CpuMeter::start(target.pid)?;
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let total = o.flood_handshakes as u64;
    let window = Instant::now();
    let workers = flood_clients(
        addr,
        config.clone(),
        stop.clone(),
        done.clone(),
        failed.clone(),
    );
    let probe_stop = Arc::new(AtomicBool::new(false));
    let watch = async {
        while (done.load(Ordering::Relaxed) < total || window.elapsed() < FLOOD_WINDOW_MIN)
            && window.elapsed() < FLOOD_WINDOW_MAX
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        probe_stop.store(true, Ordering::Relaxed);
    };
    let (flood, ()) = tokio::join!(probe.measure(probe_stop.clone()), watch);
    let flood = flood?;
    stop.store(true, Ordering::Relaxed);
    let secs = window.elapsed().as_secs_f64();
    let cpu = cpu.report()?;
    let held_at_end = held.load(Ordering::Relaxed);
    // They stop at their next connection (each is bounded by 15 s).
    let _ = tokio::task::spawn_blocking(move || workers.join()).await;
    for staller in &stallers {
        staller.abort();
    }
    drop(probe);

    let flood_rounds = flood.len();
    let flood = quantiles(flood);
    let ratio = flood(0.99) / quiet(0.99).max(f64::MIN_POSITIVE);
    let done = done.load(Ordering::Relaxed);
    println!(
        "{:<14} quiet_p50_us={:.1} quiet_p99_us={:.1} flood_p50_us={:.1} flood_p99_us={:.1} flood_p999_us={:.1} p99_ratio={ratio:.2} full_handshakes={done} failed={} per_s={:.0} window_s={secs:.1} stalled_held={held_at_start}..{held_at_end} (of {}, in {:.1}s) stalled_cut={} rounds={quiet_rounds}/{flood_rounds} {cpu} target: p99 within {FLOOD_TARGET_RATIO}x: {}",
        "handshake-flood",
        quiet(0.50),
        quiet(0.99),
        flood(0.50),
        flood(0.99),
        flood(0.999),
        failed.load(Ordering::Relaxed),
        done as f64 / secs,
        o.flood_stalled,
        stalled_in.as_secs_f64(),
        cut.load(Ordering::Relaxed),
        if ratio <= FLOOD_TARGET_RATIO {
            "met"
        } else {
            "MISSED"
        }
    );
    Ok(())
}

/// The flood's full handshakes, [`FLOOD_CONCURRENCY`] at once in a loop
/// until `stop`, on a thread of their own in the kernel's idle class
/// (`SCHED_IDLE`). They share the load's core with the latency probe and
/// the echo backend; at normal priority their client-side handshakes (a
/// signature check and a key exchange each) held that core when the
/// probe's or the backend's reply arrived, and the figure measured the load
/// generator's own queue, whoever the terminator was. In the idle class
/// they take only what the probe and the backend leave, which on this
/// core is still far more than the terminator can serve.
fn flood_clients(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        if std::env::var_os("FLOOD_NORMAL").is_none() {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: sched_setscheduler(2) reads the one `sched_param` it is
            // given for the length of the call; pid 0 is this thread, and
            // moving it to SCHED_IDLE needs no privilege.
            if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
                eprintln!(
                    "note: the flood's clients keep normal priority: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("the flood's clients cannot start: {e}");
                return;
            }
        };
        rt.block_on(async move {
            let workers: Vec<_> = (0..FLOOD_CONCURRENCY)
                .map(|_| {
                    let (config, stop) = (config.clone(), stop.clone());
                    let (done, failed) = (done.clone(), failed.clone());
                    tokio::spawn(async move {
                        while !stop.load(Ordering::Relaxed) {
                            let one = async {
                                let mut tls = connect(addr, config.clone()).await?;
                                tls.write_all(b"h").await?;
                                let mut one = [0u8; 1];
                                tls.read_exact(&mut one).await?;
                                Ok::<_, std::io::Error>(())
                            };
                            match tokio::time::timeout(Duration::from_secs(15), one).await {
                                Ok(Ok(())) => done.fetch_add(1, Ordering::Relaxed),
                                _ => failed.fetch_add(1, Ordering::Relaxed),
                            };
                        }
                    })
                })
                .collect();
            for worker in workers {
                let _ = tokio::time::timeout(Duration::from_secs(20), worker).await;
            }
        });
    })
}

/// One client of the flood that opens handshakes and stalls: it sends a
/// partial ClientHello and holds until the terminator closes, then again.
async fn stall_handshake(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
    cut: Arc<AtomicU64>,
) {
    while !stop.load(Ordering::Relaxed) {
        let mut tcp = match tokio::time::timeout(Duration::from_secs(10), connect_tcp(addr)).await {
            Ok(Ok(tcp)) => tcp,
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if tcp.write_all(&PARTIAL_CLIENT_HELLO).await.is_err() {
            continue;
        }
        held.fetch_add(1, Ordering::Relaxed);
        let mut sink = [0u8; 512];
        while let Ok(n) = tcp.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
        held.fetch_sub(1, Ordering::Relaxed);
        cut.fetch_add(1, Ordering::Relaxed);
    }
}

/// One established connection timing 64-byte echoes on a thread and
/// runtime of its own (on the load's core, like all the load), so that
/// its round trips do not queue behind the crowd on the load's runtime.
/// Running it SCHED_FIFO left the flood's p50 and p99 where they were
/// (2.9 ms and 15 to 18 ms, against 0.1 ms quiet): the wait is the
/// terminator's, not this core's.
struct Probe {
    commands: std::sync::mpsc::Sender<ProbeCommand>,
}

/// Echo until the flag is set, then send the samples (µs) back.
type ProbeCommand = (
    Arc<AtomicBool>,
    tokio::sync::oneshot::Sender<std::io::Result<Vec<f64>>>,
);

impl Probe {
    async fn start(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Result<Probe> {
        let (commands, inbox) = std::sync::mpsc::channel::<ProbeCommand>();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let msg = [0x42u8; 64];
                let mut buf = [0u8; 64];
                let warm = async {
                    let mut tls = connect(addr, config).await?;
                    for _ in 0..1000 {
                        tls.write_all(&msg).await?;
                        tls.read_exact(&mut buf).await?;
                    }
                    Ok(tls)
                };
                let mut tls = match warm.await {
                    Ok(tls) => {
                        let _ = ready_tx.send(Ok(()));
                        tls
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                // Blocks this thread between measurements: nothing else
                // runs on its runtime.
                while let Ok((stop, reply)) = inbox.recv() {
                    let mut samples = Vec::new();
                    let mut result = Ok(());
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        result = async {
                            tls.write_all(&msg).await?;
                            tls.read_exact(&mut buf).await?;
                            Ok(())
                        }
                        .await;
                        if result.is_err() {
                            break;
                        }
                        samples.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                    let _ = reply.send(result.map(|()| samples));
                }
            });
        });
        ready.await??;
        Ok(Probe { commands })
    }

    /// Echoes back to back until `stop` is set; the round trips in µs.
    async fn measure(&self, stop: Arc<AtomicBool>) -> Result<Vec<f64>> {
        let (reply, samples) = tokio::sync::oneshot::channel();
        self.commands
            .send((stop, reply))
            .map_err(|_| "the latency probe has stopped")?;
        Ok(samples.await??)
    }

    async fn measure_for(&self, duration: Duration) -> Result<Vec<f64>> {
        let stop = Arc::new(AtomicBool::new(false));
        let timer = async {
            tokio::time::sleep(duration).await;
            stop.store(true, Ordering::Relaxed);
        };
        let (samples, ()) = tokio::join!(self.measure(stop.clone()), timer);
        samples
    }
}

/// Which side set a figure: the terminator's CPU time over the phase (one
/// core is 100%) and how busy the load's core (cpu 1) was. A rate is the
/// terminator's only while its core is near 100% and the load's is not.
struct CpuMeter {
    pid: u32,
    started: Instant,
    terminator_ticks: u64,
    load_core: (u64, u64),
}

impl CpuMeter {
    fn start(pid: u32) -> Result<CpuMeter> {
        Ok(CpuMeter {
            pid,
            started: Instant::now(),
            terminator_ticks: process_ticks(pid)?,
            load_core: core_ticks(LOAD_CPU)?,
        })
    }

    fn report(&self) -> Result<String> {
        let ticks_per_s = 100.0; // USER_HZ, 100 on every Linux ABI in use
        let secs = self.started.elapsed().as_secs_f64();
        let terminator = (process_ticks(self.pid)? - self.terminator_ticks) as f64;
        let (busy, total) = core_ticks(LOAD_CPU)?;
        let load = (busy - self.load_core.0) as f64 / (total - self.load_core.1).max(1) as f64;
        Ok(format!(
            "cpu_terminator={:.0}% cpu_load_core={:.0}%",
            terminator / ticks_per_s / secs * 100.0,
            load * 100.0
        ))
    }
}

/// The core the load client and the echo backend are pinned to.
const LOAD_CPU: usize = 1;

/// User plus system time of every thread of `pid`, in clock ticks.
fn process_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may itself hold spaces.
    let rest = stat.rsplit_once(')').ok_or("bad /proc/PID/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Result<u64> { Ok(fields.get(i).ok_or("short stat")?.parse()?) };
    // utime and stime are fields 14 and 15 of the whole line.
    Ok(field(11)? + field(12)?)
}

/// (busy, total) clock ticks of one core since boot.
fn core_ticks(cpu: usize) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .ok_or("no such cpu in /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().unwrap_or(0))
        .collect();
    let total: u64 = ticks.iter().take(8).sum();
    // idle and iowait
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

fn raise_fd_limit() {
    // As root the hard limit may rise too; otherwise soft up to hard.
    let want = 1 << 20;
    if rlimit::setrlimit(rlimit::Resource::NOFILE, want, want).is_err() {
        let _ = rlimit::increase_nofile_limit(u64::MAX);
    }
}

/// Lets the terminator finish work in flight before RSS is read.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).ok_or("bad VmRSS")?.parse()?)
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    tls_over(connect_tcp(addr).await?, config).await
}

async fn connect_tcp(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// The client handshake over any byte stream (a plain or a buffered socket).
async fn tls_over<IO>(
    io: IO,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<IO>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    TlsConnector::from(config).connect(name, io).await
}

async fn open_idle(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    // Bounded, so a terminator that stops accepting (out of descriptors,
    // say) fails the run instead of hanging it.
    let open = async {
        let mut tls = connect(addr, config).await?;
        let mut buf = [0u8; 64];
        tls.write_all(&[1u8; 64]).await?;
        tls.read_exact(&mut buf).await?;
        Ok(tls)
    };
    tokio::time::timeout(Duration::from_secs(30), open)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no echo within 30s"))?
}

async fn run_all<F, T>(futures: Vec<F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("load task panicked"));
    }
    out
}

async fn futures_join<F, Fut, T>(n: usize, make: F) -> std::io::Result<Vec<T>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    run_all((0..n).map(make).collect())
        .await
        .into_iter()
        .collect()
}

/// Round trips a second in the paced latency phase.
const PACED_PER_S: u32 = 1000;

/// Times `rounds` 64-byte round trips, back to back or one every `pace`;
/// returns the quantile function of the samples, in µs.
async fn latency(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    rounds: usize,
    pace: Option<Duration>,
) -> Result<impl Fn(f64) -> f64> {
    let mut tls = connect(addr, config).await?;
    let msg = [0x42u8; 64];
    let mut buf = [0u8; 64];
    for _ in 0..1000 {
        tls.write_all(&msg).await?;
        tls.read_exact(&mut buf).await?;
    }
    let mut ticks = pace.map(|p| {
        let mut ticks = tokio::time::interval(p);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    });
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        if let Some(ticks) = ticks.as_mut() {
            ticks.tick().await;
        }
        let t = Instant::now();
        tls.write_all(&msg).await?;
        tls.read_exact(&mut buf).await?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(quantiles(samples))
}

/// The quantile function of some samples (0.0 if there are none).
fn quantiles(mut samples: Vec<f64>) -> impl Fn(f64) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    move |q: f64| {
        if samples.is_empty() {
            return 0.0;
        }
        samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)]
    }
}

async fn throughput(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    conns: usize,
    mib: usize,
) -> Result<f64> {
    let total = mib * 1024 * 1024;
    let started = Instant::now();
    let results = futures_join(conns, |_| {
        let config = config.clone();
        async move {
            // rustls' buffered client reads the socket 4 KiB at a time; a
            // 256 KiB read buffer under it saves the load core most of
            // those system calls, so the terminator sets the figure.
            let tcp = tokio::io::BufReader::with_capacity(256 * 1024, connect_tcp(addr).await?);
            let tls = tls_over(tcp, config).await?;
            let (mut rd, mut wr) = tokio::io::split(tls);
            // No half-close at the end: nginx's stream module closes both
            // ways on the first FIN (proxy_half_close is off by default) and
            // would cut the echo short. Read back exactly what was sent.
            let writer = async move {
                let chunk = vec![0x5au8; 64 * 1024];
                let mut sent = 0;
                while sent < total {
                    wr.write_all(&chunk).await?;
                    sent += chunk.len();
                }
                wr.flush().await?;
                Ok::<_, std::io::Error>(wr)
            };
            let reader = async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = 0usize;
                while got < total {
                    let n = rd.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                Ok::<_, std::io::Error>(got)
            };
            let (w, r) = tokio::join!(writer, reader);
            drop(w?);
            r
        }
    })
    .await?;
    let secs = started.elapsed().as_secs_f64();
    let bytes: usize = results.iter().sum();
    if bytes < conns * total {
        return Err(format!("only {bytes} of {} bytes came back", conns * total).into());
    }
    Ok(bytes as f64 / secs / 1e6)
}

async fn handshakes(
    addr: SocketAddr,
    config: impl Fn() -> Arc<rustls::ClientConfig>,
    concurrency: usize,
    duration: Duration,
) -> Result<(f64, f64)> {
    // One config per client; each primes itself (and, for resumption,
    // fetches its first tickets) before the clock starts.
    let mut configs = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let config = config();
        let mut primer = connect(addr, config.clone()).await?;
        primer.write_all(b"p").await?;
        let mut one = [0u8; 1];
        primer.read_exact(&mut one).await?;
        configs.push(config);
    }

    let done = Arc::new(AtomicU64::new(0));
    let resumed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers = configs.into_iter().map(|config| {
        let (done, stop) = (done.clone(), stop.clone());
        let resumed = resumed.clone();
        async move {
            while !stop.load(Ordering::Relaxed) {
                let mut tls = connect(addr, config.clone()).await?;
                tls.write_all(b"h").await?;
                let mut one = [0u8; 1];
                tls.read_exact(&mut one).await?;
                done.fetch_add(1, Ordering::Relaxed);
                if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                    resumed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<_, std::io::Error>(())
        }
    });
    let timer = {
        let stop = stop.clone();
        async move {
            tokio::time::sleep(duration).await;
            stop.store(true, Ordering::Relaxed);
        }
    };
    let (results, ()) = tokio::join!(run_all(workers.collect()), timer);
    let secs = started.elapsed().as_secs_f64();
    for r in results {
        r?;
    }
    let done = done.load(Ordering::Relaxed);
    Ok((
        done as f64 / secs,
        resumed.load(Ordering::Relaxed) as f64 / done.max(1) as f64,
    ))
}

/// The echo backend of a self-contained run, on its own thread (as
/// `load echo` is its own process beside the script's load): the load's
/// runtime may be busy with a crowd of clients, and a latency probe's echo
/// must not queue behind them on the backend's side.
fn spawn_backend() -> Result<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        rt.block_on(async move {
            match TcpListener::bind("127.0.0.1:0").await {
                Ok(listener) => {
                    let _ = tx.send(listener.local_addr());
                    echo_loop(listener, false).await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
    });
    Ok(rx.recv()??)
}

/// The echo backend. It shares the load's core, so it must cost little:
/// `tokio::io::copy`'s 8 KiB buffer made it half of that core during the
/// bulk test, and the load core, not the terminator, set the figure. Reads
/// of up to 256 KiB (a buffer grown only by a connection that fills it)
/// take far fewer system calls. A first byte of [`PUSH`] asks for a push
/// instead (see [`push`]).
async fn echo_loop(listener: TcpListener, proxied: bool) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            if proxied && skip_proxy_header(&mut stream).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; 4096];
            let mut first = true;
            loop {
                let n = match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if first && buf[0] == PUSH {
                    let mut header = [0u8; 9];
                    let have = n.min(header.len());
                    header[..have].copy_from_slice(&buf[..have]);
                    if stream.read_exact(&mut header[have..]).await.is_err() {
                        return;
                    }
                    let len = u64::from_le_bytes(header[1..].try_into().expect("8 bytes"));
                    push(stream, len).await;
                    return;
                }
                first = false;
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                if n == buf.len() && buf.len() < ECHO_BUFFER_MAX {
                    buf.resize(buf.len() * 4, 0);
                }
            }
            let _ = stream.shutdown().await;
        });
    }
}

/// Reads a PROXY protocol header (v1 line or v2 block) off the stream.
async fn skip_proxy_header(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut first = [0u8; 16];
    stream.read_exact(&mut first[..5]).await?;
    if &first[..5] == b"PROXY" {
        // v1: up to "\r\n".
        let mut byte = [0u8; 1];
        while byte[0] != b'\n' {
            stream.read_exact(&mut byte).await?;
        }
        return Ok(());
    }
    // v2: 12-byte signature, version, family, then the length.
    stream.read_exact(&mut first[5..]).await?;
    let len = u16::from_be_bytes([first[14], first[15]]);
    let mut rest = vec![0u8; usize::from(len)];
    stream.read_exact(&mut rest).await.map(|_| ())
}

/// The first byte that asks the echo backend to push instead; no echo
/// client here starts with it.
const PUSH: u8 = 0xfe;

/// The push request: [`PUSH`], then how many bytes, little-endian.
fn push_request(len: u64) -> [u8; 9] {
    let mut request = [PUSH; 9];
    request[1..].copy_from_slice(&len.to_le_bytes());
    request
}

/// Writes `len` bytes of [`pattern`] from its start, half-closes, and
/// holds the connection until the client closes it.
async fn push(mut stream: TcpStream, len: u64) {
    // A small send buffer: what waits for a client that stopped reading
    // waits here, not pinned in the kernel. 2,000 pushes into autotuned
    // buffers took this VM's TCP memory past its pressure threshold, which
    // slows every socket on the machine.
    let _ = socket2::SockRef::from(&stream).set_send_buffer_size(PUSH_SNDBUF);
    let pattern = pattern();
    let mut sent = 0u64;
    while sent < len {
        let at = (sent % PATTERN_PERIOD as u64) as usize;
        let n = (len - sent).min(PUSH_CHUNK as u64) as usize;
        if stream.write_all(&pattern[at..at + n]).await.is_err() {
            return;
        }
        sent += n as u64;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 1024];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

/// The push connection's send buffer (Linux doubles it).
const PUSH_SNDBUF: usize = 16 * 1024;

/// The pattern repeats with a prime period, so a lost or doubled run of
/// bytes shifts it (unless a whole multiple of the period, which the byte
/// count catches), and reads of any size compare with one `memcmp`.
const PATTERN_PERIOD: usize = 65_521;
/// The most the push writes, or the reader compares, at once.
const PUSH_CHUNK: usize = 64 * 1024;

/// The pushed bytes: pseudo-random, one period followed by the start of
/// the next, so `pattern()[at..at + PUSH_CHUNK]` is always the stream from
/// offset `at`.
fn pattern() -> &'static [u8] {
    static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut x: u32 = 0x9e37_79b9;
        let mut p: Vec<u8> = (0..PATTERN_PERIOD)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect();
        // The chunk is longer than the period: it wraps once more.
        let next: Vec<u8> = (0..PUSH_CHUNK).map(|i| p[i % PATTERN_PERIOD]).collect();
        p.extend(next);
        p
    })
}

/// Whether `data` is the pushed stream from offset `pos` on.
fn matches_pattern(mut pos: u64, mut data: &[u8]) -> bool {
    let pattern = pattern();
    while !data.is_empty() {
        let at = (pos % PATTERN_PERIOD as u64) as usize;
        let n = data.len().min(PUSH_CHUNK);
        if data[..n] != pattern[at..at + n] {
            return false;
        }
        pos += n as u64;
        data = &data[n..];
    }
    true
}

/// The echo backend's largest read.
const ECHO_BUFFER_MAX: usize = 256 * 1024;

/// A client that trusts any server certificate without checking signatures:
/// the load generator must cost as little as possible, and it only ever
/// talks to the terminator under test on loopback.
fn client_config(resume: bool, kx: Kx) -> Arc<rustls::ClientConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if kx == Kx::X25519 {
        provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    }
    let provider = Arc::new(provider);
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(config)
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
