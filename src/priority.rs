//! Which threads a handshake runs on (`--handshake-priority`).
//!
//! A handshake's key exchange and signature take a few hundred microseconds
//! of CPU in one step nothing can interrupt, and tokio has no task
//! priorities: on the connections' own threads, a flood of handshakes
//! queues every open connection's next message behind them (64-byte echo
//! p99 35 to 49x its quiet figure in the benchmark). On threads of their
//! own in the kernel's idle class (`SCHED_IDLE`, see
//! `runtime::handshakes_builder`), handshakes run only on CPU nothing else
//! wants and give way the moment a connection's thread wakes (p99 0.9 to
//! 1.5x quiet).
//!
//! That lane has two costs, and `auto` (the default) pays each only where
//! it buys something:
//! - Handing a connection to the lane and back costs a quarter to a third of
//!   the handshake rate when both share a core, and the heap holds about
//!   0.2 KiB more per connection whose handshake ran there. A handshake
//!   goes to the lane only while the process is **active**: some
//!   **settled** connection (open for a second or more, as a WebSocket
//!   is) moved bytes in the last half second. Otherwise there is no
//!   message a handshake could delay, and a burst of new clients (a
//!   restart's reconnect storm, or clients joining thousands of quiet
//!   WebSockets) gets the full rate.
//! - The idle class is the whole machine's: a busy program beside wssify
//!   takes the lane's CPU too (full handshakes fell to 9 a second beside
//!   one). A watch reads the CPU time the lane's threads get: while they
//!   have work and get almost none, handshakes run on the connections'
//!   threads, as without a lane, and those handed over but not started
//!   yet are taken back. The lane is tried again after a hold that grows
//!   while it keeps starving.
//!
//! The settled count is kept on process-wide statics, like the metrics: a
//! connection adds itself when its bytes start to flow and takes itself
//! out when it ends (two relaxed atomic operations), and once a second a
//! tick promotes the connections of two seconds ago, so no connection
//! needs a timer of its own. Activity is the quarter-second tick in which
//! a settled connection last moved bytes: two relaxed loads each time
//! bytes move, a store once a tick.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, Runtime};
use tokio::sync::Notify;

/// `--handshake-priority`: where handshakes run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HandshakePriority {
    /// On the low-priority threads while the process is active (a settled
    /// connection moved bytes lately) and those threads get CPU; otherwise
    /// on the connections' own.
    #[default]
    Auto,
    /// Always on the low-priority threads, even when a busy program beside
    /// wssify leaves them no CPU (for cores wssify has to itself).
    Low,
    /// Always on the connections' own threads (no handshake threads at all).
    Normal,
}

impl HandshakePriority {
    /// The flag's value, as `--help` and the startup line write it.
    pub fn name(self) -> &'static str {
        match self {
            HandshakePriority::Auto => "auto",
            HandshakePriority::Low => "low",
            HandshakePriority::Normal => "normal",
        }
    }
}

/// Where one handshake was placed: the label `priority` of
/// `wssify_handshake_priority_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Placement {
    /// On the low-priority threads.
    Low,
    /// On the connections' own threads: no settled connection moved bytes
    /// lately, or `--handshake-priority normal`.
    Normal,
    /// On the connections' own threads because the low-priority threads
    /// were getting no CPU (a busy program beside wssify, or its own
    /// connections keeping every core busy).
    Starved,
}

impl Placement {
    /// Every placement, in the order of the metric's lines.
    pub const ALL: [Placement; 3] = [Placement::Low, Placement::Normal, Placement::Starved];

    /// The metric label's value.
    pub fn label(self) -> &'static str {
        match self {
            Placement::Low => "low",
            Placement::Normal => "normal",
            Placement::Starved => "starved",
        }
    }
}

/// How often the watch looks at the lane while the lane has work.
const WATCH_EVERY: Duration = Duration::from_millis(10);
/// How long it sleeps while the lane has none, unless a handshake handed
/// to the lane wakes it (so a process without handshakes stays asleep).
const WATCH_EVERY_IDLE: Duration = Duration::from_millis(250);
/// A lane with handshakes waiting is starved while its threads get less
/// CPU than this (a tenth of a core): in a flood on an otherwise quiet
/// core they get most of it; beside one busy ordinary process, the idle
/// class gets about 0.3%.
const FED_SHARE: f64 = 0.1;
/// The lane is starved by someone else only while the whole process uses
/// less than this share of the cores it may run on: beside one busy
/// process on its one core, wssify's connection threads get about half.
const BUSY_SHARE: f64 = 0.75;
/// The shortest and longest a starved lane is left alone before it gets
/// handshakes again.
const HOLD_MIN: Duration = Duration::from_secs(1);
const HOLD_MAX: Duration = Duration::from_secs(64);
/// Looks in a row that must agree before the verdict changes, so that one
/// busy moment of the connections' own threads does not send handshakes
/// back to them, nor one lucky slice send them to a starved lane.
const AGREE: u32 = 2;

/// The low-priority threads' runtime, and whether they get CPU.
pub struct Lane {
    handle: Handle,
    priority: HandshakePriority,
    watch: Arc<Watch>,
}

/// What the lane's threads and the watch share.
struct Watch {
    /// Handshakes handed to the lane that have not started there yet.
    waiting: AtomicUsize,
    /// The lane's threads that are not parked: they have tasks to run (a
    /// handshake waiting for its client's bytes parks its thread).
    active: AtomicUsize,
    /// The lane's threads got CPU when they last had work.
    fed: AtomicBool,
    /// The CPU-time clocks of the lane's threads.
    clocks: Mutex<Vec<libc::clockid_t>>,
    /// Told when the lane is found starved.
    starved: Notify,
    /// The watch's thread, woken when the lane gets work after a quiet
    /// spell.
    thread: std::sync::OnceLock<std::thread::Thread>,
}

impl Lane {
    /// Builds the lane's runtime (`threads` threads in the idle class, see
    /// `runtime::handshakes_builder`) and, for `Auto`, the thread that
    /// watches whether they get CPU. `priority` is `Auto` or `Low`.
    pub fn build(threads: usize, priority: HandshakePriority) -> io::Result<(Runtime, Lane)> {
        let watch = Arc::new(Watch::new());
        let (started, parks, unparks) = (watch.clone(), watch.clone(), watch.clone());
        let runtime = crate::runtime::handshakes_builder(threads)
            .on_thread_start(move || {
                crate::runtime::lower_priority();
                // Running from its start until it first parks.
                started.active.fetch_add(1, Relaxed);
                if let Some(clock) = own_cpu_clock() {
                    started
                        .clocks
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(clock);
                }
            })
            .on_thread_park(move || {
                parks.active.fetch_sub(1, Relaxed);
            })
            .on_thread_unpark(move || {
                unparks.active.fetch_add(1, Relaxed);
            })
            .build()?;
        if priority == HandshakePriority::Auto {
            let watched = watch.clone();
            let thread = std::thread::Builder::new()
                .name("wssify-lanewatch".to_string())
                .spawn(move || watch_lane(&watched))?;
            let _ = watch.thread.set(thread.thread().clone());
        }
        let lane = Lane {
            handle: runtime.handle().clone(),
            priority,
            watch,
        };
        Ok((runtime, lane))
    }

    /// Where the next handshake runs.
    pub fn place(&self) -> Placement {
        match self.priority {
            HandshakePriority::Low => Placement::Low,
            HandshakePriority::Normal => Placement::Normal,
            HandshakePriority::Auto if !any_active() => Placement::Normal,
            HandshakePriority::Auto if self.watch.fed.load(Relaxed) => Placement::Low,
            HandshakePriority::Auto => Placement::Starved,
        }
    }

    /// Runs `work(input)` on the lane. If the lane is found starved
    /// before it has started the work, the caller gets `input` back to run
    /// it on its own threads: a handshake handed over in the moments before
    /// the starvation was seen does not wait for the lane to get CPU.
    pub async fn run<T, R, F, Fut>(&self, input: T, work: F) -> Ran<R, T>
    where
        T: Send + 'static,
        R: Send + 'static,
        F: FnOnce(T) -> Fut + Send + 'static,
        Fut: Future<Output = R> + Send + 'static,
    {
        let cell = Arc::new(Mutex::new(Some(input)));
        let theirs = cell.clone();
        if self.watch.waiting.fetch_add(1, Relaxed) == 0
            && let Some(watch) = self.watch.thread.get()
        {
            watch.unpark();
        }
        let ticket = Waiting(self.watch.clone());
        let mut task = self.handle.spawn(async move {
            drop(ticket);
            let input = theirs.lock().unwrap_or_else(PoisonError::into_inner).take();
            match input {
                Some(input) => Some(work(input).await),
                None => None,
            }
        });
        // Only `auto` watches; `low` waits for the lane whatever it gets.
        let mut may_take_back = self.priority == HandshakePriority::Auto;
        let starved = self.watch.starved.notified();
        let mut starved = std::pin::pin!(starved);
        starved.as_mut().enable();
        loop {
            if may_take_back && !self.watch.fed.load(Relaxed) {
                let input = cell.lock().unwrap_or_else(PoisonError::into_inner).take();
                if let Some(input) = input {
                    return Ran::TakenBack(input);
                }
                // Started there: its result comes from there.
                may_take_back = false;
            }
            tokio::select! {
                joined = &mut task => return match joined {
                    Ok(Some(result)) => Ran::Lane(result),
                    Ok(None) => Ran::Failed("taken back twice".to_string()),
                    Err(e) => Ran::Failed(e.to_string()),
                },
                () = &mut starved, if may_take_back => {}
            }
        }
    }
}

/// How [`Lane::run`] went.
pub enum Ran<R, T> {
    /// The lane ran the work: its result.
    Lane(R),
    /// The lane starved before it started: the input, to run elsewhere.
    TakenBack(T),
    /// The lane's task ended without a result (it panicked, or the
    /// runtime is shutting down).
    Failed(String),
}

impl Watch {
    /// Nothing waiting, no thread known yet, and starved until the watch
    /// says otherwise.
    fn new() -> Watch {
        Watch {
            waiting: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            fed: AtomicBool::new(false),
            clocks: Mutex::new(Vec::new()),
            starved: Notify::new(),
            thread: std::sync::OnceLock::new(),
        }
    }
}

/// A handshake handed to the lane and not started yet (also dropped if the
/// lane's runtime ends without running it).
struct Waiting(Arc<Watch>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Relaxed);
    }
}

/// The watch: every [`WATCH_EVERY`], the CPU the lane's threads and the
/// whole process got since the last look. While the lane has work
/// (handshakes waiting to start, or a thread not parked), its threads got
/// under [`FED_SHARE`] of a core and the process under [`BUSY_SHARE`] of
/// its cores, it is starved; otherwise it is fed (with no work, once the
/// hold after its last starvation is over). The lane's own CPU is what counts, not a
/// test of the idle class: a thread that has slept is given a slice at
/// once even beside a busy process, so only threads that keep asking see
/// the starvation.
fn watch_lane(watch: &Watch) {
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let mut last_look = Instant::now();
    let mut last_lane = lane_cpu(watch);
    let mut last_process = clock_time(libc::CLOCK_PROCESS_CPUTIME_ID).unwrap_or_default();
    let mut agreeing = 0;
    // After a starvation, the lane has no work to show it is fed again
    // (every handshake goes elsewhere), so it is tried again only after a
    // hold, doubled each time it starves again soon after: each try sends
    // it the handshakes of a few looks, which wait until it gets CPU.
    let mut hold = HOLD_MIN;
    let mut held_until = last_look;
    let mut fed_since = last_look;
    loop {
        if wanting(watch) || agreeing > 0 {
            std::thread::sleep(WATCH_EVERY);
        } else {
            // Quiet: asleep until a handshake is handed to the lane (or the
            // hold may have ended), then a fresh measure from that moment.
            std::thread::park_timeout(WATCH_EVERY_IDLE);
            last_look = Instant::now();
            last_lane = lane_cpu(watch);
            last_process = clock_time(libc::CLOCK_PROCESS_CPUTIME_ID).unwrap_or_default();
            std::thread::sleep(WATCH_EVERY);
        }
        let now = Instant::now();
        let lane = lane_cpu(watch);
        let process = clock_time(libc::CLOCK_PROCESS_CPUTIME_ID).unwrap_or_default();
        let wall = now
            .saturating_duration_since(last_look)
            .as_secs_f64()
            .max(f64::MIN_POSITIVE);
        let share = |now: Duration, then: Duration| now.saturating_sub(then).as_secs_f64() / wall;
        let (lane_share, process_share) = (share(lane, last_lane), share(process, last_process));
        (last_look, last_lane, last_process) = (now, lane, process);
        let wanting = wanting(watch);
        // Starved by someone else: the lane wants CPU and gets next to
        // none, and the process as a whole is not using the cores either.
        // A lane starved by wssify's own connections (an accept burst,
        // bulk transfers) is what the priority is for: it keeps its work.
        let starved = wanting && lane_share < FED_SHARE && process_share < BUSY_SHARE * cores;
        let fed = if wanting { !starved } else { now >= held_until };
        if fed == watch.fed.load(Relaxed) {
            agreeing = 0;
            continue;
        }
        agreeing += 1;
        if agreeing < AGREE {
            continue;
        }
        agreeing = 0;
        watch.fed.store(fed, Relaxed);
        if !fed {
            watch.starved.notify_waiters();
        }
        if fed {
            fed_since = now;
        } else {
            hold = if now.saturating_duration_since(fed_since) < hold * 4 {
                (hold * 2).min(HOLD_MAX)
            } else {
                HOLD_MIN
            };
            held_until = now + hold;
        }
        log::debug!(
            "handshake threads {} (their CPU share {lane_share:.3}, the process's {process_share:.2} of {cores} cores; next try in {} at the earliest)",
            if fed { "fed again" } else { "starved" },
            crate::settings::format_duration(hold)
        );
    }
}

/// Whether the lane has work: handshakes waiting to start, or a thread not
/// parked.
fn wanting(watch: &Watch) -> bool {
    watch.waiting.load(Relaxed) > 0 || watch.active.load(Relaxed) > 0
}

/// The CPU time the lane's threads have used, together.
fn lane_cpu(watch: &Watch) -> Duration {
    let clocks = watch.clocks.lock().unwrap_or_else(PoisonError::into_inner);
    clocks.iter().filter_map(|&clock| clock_time(clock)).sum()
}

/// The CPU-time clock of the calling thread, which another thread can read.
fn own_cpu_clock() -> Option<libc::clockid_t> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: pthread_getcpuclockid(3) writes the one clock id it is given
    // a pointer to, which lives on this stack frame for the whole call, and
    // `pthread_self()` is the calling thread, alive for the call. std and
    // tokio expose no thread's CPU time.
    let result = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
    (result == 0).then_some(clock)
}

/// A clock's time, `None` if it cannot be read (its thread has ended).
fn clock_time(clock: libc::clockid_t) -> Option<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes the one `timespec` it is given, which
    // lives on this stack frame for the whole call; an invalid clock id is
    // an error return (EINVAL), not undefined behaviour.
    let result = unsafe { libc::clock_gettime(clock, &mut now) };
    if result != 0 {
        return None;
    }
    let secs = u64::try_from(now.tv_sec).ok()?;
    let nanos = u32::try_from(now.tv_nsec).ok()?;
    Some(Duration::new(secs, nanos))
}

/// The tick count: the generation a connection opening now belongs to.
static GENERATION: AtomicU32 = AtomicU32::new(0);
/// Open connections of the last two generations, by generation's parity.
static YOUNG: [AtomicI64; 2] = [AtomicI64::new(0), AtomicI64::new(0)];
/// Open connections older than that: settled.
static SETTLED: AtomicI64 = AtomicI64::new(0);

/// How often [`tick`] should run: the grain of "active" (see
/// [`any_active`]).
pub const TICK: Duration = Duration::from_millis(250);
/// Ticks to a generation: a connection is settled one to two generations
/// (seconds) after it opened.
const TICKS_PER_GENERATION: u32 = 4;
/// The tick count, for [`ACTIVE`].
static BEAT: AtomicU32 = AtomicU32::new(0);

/// Counts a tick, and every [`TICKS_PER_GENERATION`] promotes the
/// connections opened two generations ago to settled. Run every [`TICK`]
/// by one task.
pub fn tick() {
    let beat = BEAT.load(Relaxed).wrapping_add(1);
    BEAT.store(beat, Relaxed);
    if beat.is_multiple_of(TICKS_PER_GENERATION) {
        promote();
    }
}

/// Starts a generation: the connections of the one before the last are
/// settled now.
fn promote() {
    let next = GENERATION.load(Relaxed).wrapping_add(1);
    // The slot `next` reuses holds the generation before the current one.
    let promoted = YOUNG[(next & 1) as usize].swap(0, Relaxed);
    SETTLED.fetch_add(promoted, Relaxed);
    GENERATION.store(next, Relaxed);
}

/// Whether any open connection is settled.
pub fn any_settled() -> bool {
    SETTLED.load(Relaxed) > 0
}

/// The tick in which a settled connection last moved bytes ([`NEVER`]
/// until one has).
static ACTIVE: AtomicU32 = AtomicU32::new(NEVER);
/// [`ACTIVE`] before any settled connection has moved a byte.
const NEVER: u32 = u32::MAX;

/// Whether a settled connection moved bytes in this tick or the one
/// before (the last quarter to half second): there are messages a flood of
/// handshakes could delay. Short, so that handshakes soon after the last
/// message of a busy spell (a bulk transfer, say) run at the full rate.
pub fn any_active() -> bool {
    let active = ACTIVE.load(Relaxed);
    active != NEVER && BEAT.load(Relaxed).wrapping_sub(active) <= 1
}

/// Open connections that are settled (for `/metrics`). A connection that
/// ends while the tick promotes its generation may be counted for up to
/// two more ticks (the counts are corrected at the next promotion).
pub fn settled() -> u64 {
    u64::try_from(SETTLED.load(Relaxed)).unwrap_or(0)
}

/// One open connection, counted from the moment its bytes flow until it is
/// dropped.
#[derive(Debug)]
pub struct Open {
    generation: u32,
}

impl Open {
    /// Counts a connection whose bytes start to flow now.
    pub fn count() -> Open {
        let generation = GENERATION.load(Relaxed);
        YOUNG[(generation & 1) as usize].fetch_add(1, Relaxed);
        Open { generation }
    }

    /// Bytes moved on this connection. Once it is settled, that makes the
    /// process active for this tick and the next: two relaxed loads per
    /// call, and a store once a tick, so the cache line stays shared.
    pub fn moved(&self) {
        let beat = BEAT.load(Relaxed);
        if ACTIVE.load(Relaxed) != beat
            && GENERATION.load(Relaxed).wrapping_sub(self.generation) >= 2
        {
            ACTIVE.store(beat, Relaxed);
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        // Promoted once the tick has moved two generations on. A tick
        // between this load and the subtraction leaves its slot one below
        // and SETTLED one above; the next promotion of that slot evens them.
        if GENERATION.load(Relaxed).wrapping_sub(self.generation) <= 1 {
            YOUNG[(self.generation & 1) as usize].fetch_sub(1, Relaxed);
        } else {
            SETTLED.fetch_sub(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The statics are the process's: the tests that tick them run one at
    /// a time.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn a_connection_settles_after_two_ticks_and_leaves_no_count_behind() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let before = SETTLED.load(Relaxed);
        let young = Open::count();
        promote();
        assert_eq!(SETTLED.load(Relaxed), before, "one tick: still young");
        promote();
        assert_eq!(SETTLED.load(Relaxed), before + 1, "two ticks: settled");
        let fresh = Open::count();
        drop(young);
        assert_eq!(SETTLED.load(Relaxed), before);
        drop(fresh);
        promote();
        promote();
        assert_eq!(
            SETTLED.load(Relaxed),
            before,
            "an ended young one is never promoted"
        );
    }

    #[test]
    fn auto_places_by_settled_connections_and_the_watch_low_always_low() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let Ok(runtime) = runtime else {
            panic!("a test runtime");
        };
        // No watch: starved until told otherwise.
        let lane = |priority| Lane {
            handle: runtime.handle().clone(),
            priority,
            watch: Arc::new(Watch::new()),
        };
        let (auto, low, normal) = (
            lane(HandshakePriority::Auto),
            lane(HandshakePriority::Low),
            lane(HandshakePriority::Normal),
        );
        let settled = Open::count();
        promote();
        promote();
        assert!(any_settled());
        // Settled but quiet: nothing to protect.
        if !any_active() {
            assert_eq!(auto.place(), Placement::Normal);
        }
        settled.moved();
        assert!(any_active());
        assert_eq!(auto.place(), Placement::Starved);
        assert_eq!(low.place(), Placement::Low);
        assert_eq!(normal.place(), Placement::Normal);
        // Fed, the lane takes them (tests/priority.rs shows the watch on
        // the real binary).
        auto.watch.fed.store(true, Relaxed);
        assert_eq!(auto.place(), Placement::Low);
        // Two ticks without a byte moved: quiet again.
        tick();
        tick();
        assert!(!any_active());
        assert_eq!(auto.place(), Placement::Normal);
        drop(settled);
    }

    #[test]
    fn this_threads_cpu_clock_counts_its_work() {
        let Some(clock) = own_cpu_clock() else {
            panic!("no CPU clock for this thread");
        };
        let before = clock_time(clock).unwrap_or_default();
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(20) {
            std::hint::spin_loop();
        }
        let after = clock_time(clock).unwrap_or_default();
        assert!(after > before, "{before:?} -> {after:?}");
    }
}
