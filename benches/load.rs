//! The load benchmark: memory per idle connection, bulk throughput, full and
//! resumed handshakes per second, and small-message latency, measured over
//! real sockets against a TLS terminator on one core.
//!
//! `cargo bench` runs it self-contained: an echo backend and the load client
//! here, the release `wssify` beside them, and then the latency figures once
//! more with `--busy-poll`. `scripts/bench-vs-nginx.sh` uses
//! its other modes to put nginx and wssify through the same load:
//!
//! ```text
//! load echo ADDR                      run only the echo backend
//! load gen-cert DIR                   write an ECDSA P-256 cert.pem/key.pem
//! load run --target ADDR --pid PID    measure a terminator that is already running
//! ```
//!
//! Options for the measuring modes: `--idle N[,N...]` (idle connections to
//! hold), `--seconds S` (per rate figure), `--bulk-mib M` (per connection),
//! `--kx x25519` (classical key exchange only, as a client without
//! post-quantum support), `--name NAME` (for the report), `--only
//! latency,latency-paced,throughput,full-handshake,resumed` (some of the
//! rate figures, for A/B runs and profilers), `--memory-only`
//! (hold the idle connections until killed, for a heap profiler).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

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
    /// Measure only this rate figure (its label in the output).
    only: Option<String>,
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
                echo_loop(listener).await;
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
            "--only" => o.only = Some(value()?.clone()),
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
    let exe = env!("CARGO_BIN_EXE_wssify");
    let mut child = Command::new("taskset")
        .args(["-c", "0", exe, "--listen", "127.0.0.1:0", "--to"])
        .arg(backend.to_string())
        .args(["--threads", "1"])
        .args(extra)
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
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            tokio::spawn(echo_loop(listener));
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

    // Memory first, on a fresh process, so caches from the rate tests do not
    // hide growth. Connections are handshaken, echo once, then sit idle.
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
    rates(&o, &target, full.clone()).await?;

    // Latency again with busy polling, on a fresh wssify on the same core.
    if let (Some(backend), None) = (backend, &o.only) {
        drop(target);
        let busy = start_wssify(backend, &["--busy-poll", BUSY_POLL]).await?;
        println!(
            "# {} --busy-poll {BUSY_POLL}: {} (pid {})",
            o.name, busy.addr, busy.pid
        );
        let only = Options {
            only: Some("latency,latency-paced".to_string()),
            ..o
        };
        rates(&only, &busy, full).await?;
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
    let wanted = |label: &str| {
        o.only
            .as_deref()
            .is_none_or(|only| only.split(',').any(|l| l == label))
    };
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
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok(move |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)])
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

/// The echo backend. It shares the load's core, so it must cost little:
/// `tokio::io::copy`'s 8 KiB buffer made it half of that core during the
/// bulk test, and the load core, not the terminator, set the figure. Reads
/// of up to 256 KiB (a buffer grown only by a connection that fills it)
/// take far fewer system calls.
async fn echo_loop(listener: TcpListener) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let n = match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
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
