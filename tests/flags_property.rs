//! Property tests over everything an operator types: the duration, size,
//! listen and backend parsers, and the whole `Args::into_settings` for each
//! flag. For any input they must not panic, and every value they accept
//! must lie within the bounds the flag promises and read back the same
//! after being written out, since start-up lines and errors show values
//! that an operator may paste back.
//!
//! The bounds are written out here rather than imported, so that this file
//! states the contract independently of the code it checks.

use std::time::Duration;

use argh::FromArgs;
use proptest::prelude::*;
use wssify::cli::{Args, CommandLine, prepare};
use wssify::settings::{
    Backend, format_duration, format_size, parse_backend, parse_duration, parse_listen, parse_size,
};

/// The longest duration any flag takes.
const YEAR: Duration = Duration::from_secs(365 * 86_400);
/// The most connections, handshakes or connections per IP.
const MAX_CONNS: usize = 10_000_000;
/// The most worker threads.
const MAX_THREADS: usize = 1024;
/// The smallest and largest `--max-memory`.
const MIN_MEMORY: usize = 1 << 20;
const MAX_MEMORY: usize = 64 << 40;
/// The longest `--busy-poll` window.
const MAX_BUSY_POLL: Duration = Duration::from_millis(10);

/// Every duration unit with its length in nanoseconds.
const DURATION_UNITS: [(&str, u128); 12] = [
    ("", 1_000_000_000),
    ("s", 1_000_000_000),
    ("sec", 1_000_000_000),
    ("secs", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("µs", 1_000),
    ("m", 60_000_000_000),
    ("min", 60_000_000_000),
    ("mins", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("d", 86_400_000_000_000),
];

/// The units a duration of several parts (`1h30m`) may use, largest first,
/// each with its names; a part needs a unit, so plain seconds are not here.
const COMPOUND_UNITS: [(&[&str], u128); 6] = [
    (&["d"], 86_400_000_000_000),
    (&["h"], 3_600_000_000_000),
    (&["m", "min", "mins"], 60_000_000_000),
    (&["s", "sec", "secs"], 1_000_000_000),
    (&["ms"], 1_000_000),
    (&["us", "µs"], 1_000),
];

/// Every size unit with its length in bytes.
const SIZE_UNITS: [(&str, u128); 16] = [
    ("", 1),
    ("b", 1),
    ("B", 1),
    ("k", 1 << 10),
    ("KB", 1 << 10),
    ("KiB", 1 << 10),
    ("m", 1 << 20),
    ("MB", 1 << 20),
    ("MiB", 1 << 20),
    ("g", 1 << 30),
    ("GB", 1 << 30),
    ("GiB", 1 << 30),
    ("t", 1 << 40),
    ("TB", 1 << 40),
    ("TiB", 1 << 40),
    ("tib", 1 << 40),
];

/// Every flag that takes a value, besides the file paths.
const VALUE_FLAGS: [&str; 18] = [
    "--listen",
    "--to",
    "--reload-interval",
    "--idle-timeout",
    "--handshake-timeout",
    "--connect-timeout",
    "--drain-timeout",
    "--max-conns",
    "--max-memory",
    "--stall-timeout",
    "--max-handshakes",
    "--max-conns-per-ip",
    "--tls-min",
    "--alpn",
    "--threads",
    "--busy-poll",
    "--cert-dir",
    "--proxy-protocol",
];

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        // Failures are shown with their input; no files are left behind.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Text an operator might type: mostly number-like, sometimes anything.
fn typed() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ +\\-]?[0-9]{0,25}(\\.[0-9]{0,25})?[ ]?(|s|ms|us|µs|m|h|d|min|secs|k|KiB|M|MiB|G|GiB|T|TiB|y|e5|inf|NaN)",
        "[0-9a-fA-F:.\\[\\]%a-z_-]{0,45}",
        "([0-9]{1,12}(\\.[0-9]{0,3})?[ ]?(d|h|m|min|s|ms|us|µs|)[ ]?){1,5}",
        any::<u128>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| n.to_string()),
    ]
}

/// An address written the ways `--listen` and `--to` take one, with any
/// IP, port and host name, and sometimes with a part left off.
fn address() -> impl Strategy<Value = String> {
    let port = prop_oneof![any::<u16>().prop_map(|p| p.to_string()), "[0-9]{0,7}"];
    prop_oneof![
        port.clone(),
        port.clone().prop_map(|p| format!(":{p}")),
        (any::<std::net::Ipv4Addr>(), port.clone()).prop_map(|(ip, p)| format!("{ip}:{p}")),
        (any::<std::net::Ipv6Addr>(), port.clone()).prop_map(|(ip, p)| format!("[{ip}]:{p}")),
        any::<std::net::Ipv6Addr>().prop_map(|ip| ip.to_string()),
        ("[a-z0-9._-]{0,20}", port).prop_map(|(host, p)| format!("{host}:{p}")),
    ]
}

/// A number written the ways an operator might: whole, with a fraction,
/// with leading zeros, huge.
fn number() -> impl Strategy<Value = (u128, String)> {
    prop_oneof![
        (0u128..100_000).prop_map(|n| (n, n.to_string())),
        any::<u64>().prop_map(|n| (u128::from(n), n.to_string())),
        any::<u128>().prop_map(|n| (n, n.to_string())),
        (0u128..1000, "0{1,30}").prop_map(|(n, zeros)| (n, format!("{zeros}{n}"))),
    ]
}

/// The exact value of `whole.fraction` times `scale`, rounded up (as
/// durations are) or down (as sizes are), if it fits in a `u128`.
fn exact(whole: u128, fraction: &str, scale: u128, up: bool) -> Option<u128> {
    let mut num: u128 = 0;
    let mut den: u128 = 1;
    for digit in fraction.bytes().take(20) {
        num = num * 10 + u128::from(digit - b'0');
        den *= 10;
    }
    let rest = fraction.bytes().skip(20).any(|b| b != b'0');
    let product = num.checked_mul(scale)?;
    let mut part = product / den;
    if up && (product % den != 0 || rest) {
        part += 1;
    }
    whole.checked_mul(scale)?.checked_add(part)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_duration_is_refused_or_within_a_year_and_prints_back(text in typed()) {
        if let Ok(d) = parse_duration(&text) {
            prop_assert!(d <= YEAR, "{text:?} gave {d:?}");
            let printed = format_duration(d);
            let back = parse_duration(&printed).map_err(|e| e.to_string());
            prop_assert_eq!(back, Ok(d), "{:?} printed as {:?}", text, printed);
        }
    }

    #[test]
    fn every_number_with_every_duration_unit_is_exact_or_refused(
        (whole, digits) in number(),
        fraction in prop::option::of("[0-9]{0,25}"),
        unit in 0..DURATION_UNITS.len(),
        space in any::<bool>(),
    ) {
        let (unit, scale) = DURATION_UNITS[unit];
        let text = match &fraction {
            Some(f) => format!("{digits}.{f}{}{unit}", if space { " " } else { "" }),
            None => format!("{digits}{}{unit}", if space { " " } else { "" }),
        };
        let expected = exact(whole, fraction.as_deref().unwrap_or(""), scale, true)
            .filter(|nanos| *nanos <= YEAR.as_nanos());
        match parse_duration(&text) {
            Ok(d) => {
                prop_assert_eq!(Some(d.as_nanos()), expected, "{}", text);
                prop_assert_eq!(parse_duration(&format_duration(d)).map_err(|e| e.to_string()), Ok(d));
            }
            Err(why) => {
                prop_assert_eq!(expected, None, "{} refused: {}", text, why);
                prop_assert!(why.to_string().contains("365d"), "{}: {}", text, why);
            }
        }
    }

    #[test]
    fn a_compound_duration_is_the_exact_sum_of_its_parts_or_refused(
        parts in prop::collection::vec(
            (0..COMPOUND_UNITS.len(), 0usize..3, number(), prop::option::of("[0-9]{0,12}")),
            1..=COMPOUND_UNITS.len(),
        ),
        space in any::<bool>(),
    ) {
        // Each unit once, largest first: sort by rank, keep one per rank.
        let mut parts = parts;
        parts.sort_by_key(|(rank, ..)| *rank);
        parts.dedup_by_key(|(rank, ..)| *rank);
        let mut text = String::new();
        let mut expected = Some(0u128);
        for (rank, name, (whole, digits), fraction) in &parts {
            let (names, scale) = COMPOUND_UNITS[*rank];
            let unit = names[name % names.len()];
            if space && !text.is_empty() {
                text.push(' ');
            }
            match fraction {
                Some(f) => text.push_str(&format!("{digits}.{f}{unit}")),
                None => text.push_str(&format!("{digits}{unit}")),
            }
            let part = exact(*whole, fraction.as_deref().unwrap_or(""), scale, true);
            expected = expected.zip(part).and_then(|(sum, part)| sum.checked_add(part));
        }
        let expected = expected.filter(|nanos| *nanos <= YEAR.as_nanos());
        match parse_duration(&text) {
            Ok(d) => prop_assert_eq!(Some(d.as_nanos()), expected, "{}", text),
            Err(why) => {
                prop_assert_eq!(expected, None, "{} refused: {}", text, why);
                prop_assert!(why.to_string().contains("365d"), "{}: {}", text, why);
            }
        }
    }

    #[test]
    fn a_compound_duration_out_of_order_is_refused(
        first in 0..COMPOUND_UNITS.len(),
        second in 0..COMPOUND_UNITS.len(),
        a in 1u32..1000,
        b in 1u32..1000,
    ) {
        // The second unit is the same as the first or larger.
        prop_assume!(second <= first);
        let text = format!("{a}{}{b}{}", COMPOUND_UNITS[first].0[0], COMPOUND_UNITS[second].0[0]);
        let why = parse_duration(&text).map(|d| format!("{d:?}")).unwrap_or_else(|e| e.to_string());
        prop_assert!(why.contains("out of order"), "{}: {}", text, why);
    }

    #[test]
    fn every_duration_up_to_a_year_prints_back_exactly(nanos in 0..=YEAR.as_nanos() as u64) {
        let d = Duration::from_nanos(nanos);
        let printed = format_duration(d);
        prop_assert_eq!(parse_duration(&printed).map_err(|e| e.to_string()), Ok(d), "{}", printed);
    }

    #[test]
    fn a_size_is_refused_or_fits(text in typed()) {
        if let Ok(bytes) = parse_size(&text)
            && bytes <= MAX_MEMORY
        {
            prop_assert!(parse_size(&format_size(bytes)).is_ok(), "{text:?}");
        }
    }

    #[test]
    fn every_number_with_every_size_unit_is_exact_or_refused(
        (whole, digits) in number(),
        fraction in prop::option::of("[0-9]{0,25}"),
        unit in 0..SIZE_UNITS.len(),
    ) {
        let (unit, scale) = SIZE_UNITS[unit];
        let text = match &fraction {
            Some(f) => format!("{digits}.{f}{unit}"),
            None => format!("{digits}{unit}"),
        };
        let expected = exact(whole, fraction.as_deref().unwrap_or(""), scale, false)
            .and_then(|bytes| usize::try_from(bytes).ok());
        match parse_size(&text) {
            Ok(bytes) => prop_assert_eq!(Some(bytes), expected, "{}", text),
            Err(why) => prop_assert_eq!(expected, None, "{} refused: {}", text, why),
        }
    }

    #[test]
    fn a_size_prints_back_at_most_a_tenth_of_its_unit_low(bytes in 0..=MAX_MEMORY) {
        let printed = format_size(bytes);
        let back = parse_size(&printed).map_err(|e| e.to_string());
        prop_assert!(back.is_ok(), "{} printed as {}: {:?}", bytes, printed, back);
        let back = back.unwrap_or_default();
        prop_assert!(back <= bytes, "{} printed as {} reads {}", bytes, printed, back);
        if printed.contains('.') {
            prop_assert!((bytes - back) * 10 < bytes, "{} printed as {}", bytes, printed);
        } else {
            prop_assert_eq!(back, bytes, "{}", printed);
        }
    }

    #[test]
    fn a_listen_address_is_refused_or_prints_back(text in prop_oneof![typed(), address()]) {
        if let Ok(addr) = parse_listen(&text) {
            prop_assert_eq!(parse_listen(&addr.to_string()), Ok(addr), "{}", text);
        }
    }

    #[test]
    fn a_backend_is_refused_or_prints_back(text in prop_oneof![typed(), address()]) {
        if let Ok(backend) = parse_backend(&text) {
            match &backend {
                Backend::Tcp { host, .. } => prop_assert!(!host.is_empty(), "{text:?}"),
                Backend::Unix(path) => prop_assert!(!path.as_os_str().is_empty(), "{text:?}"),
            }
            prop_assert_eq!(parse_backend(&backend.to_string()), Ok(backend), "{}", text);
        }
    }

    #[test]
    fn every_flag_value_is_refused_or_within_its_bounds(
        flag in 0..VALUE_FLAGS.len(),
        value in prop_oneof![
            typed(),
            address(),
            (number(), 0..DURATION_UNITS.len()).prop_map(|((_, n), u)| format!("{n}{}", DURATION_UNITS[u].0)),
            (number(), 0..SIZE_UNITS.len()).prop_map(|((_, n), u)| format!("{n}{}", SIZE_UNITS[u].0)),
        ],
    ) {
        let flag = VALUE_FLAGS[flag];
        let args = ["--listen", "9300", "--to", "127.0.0.1:9200", flag, value.as_str()];
        // argh may refuse the line itself (a value like "--x"); that is
        // the binary's usage error, not a panic.
        let Ok(args) = Args::from_args(&["wssify"], &args) else {
            return Ok(());
        };
        let Ok(s) = args.into_settings() else {
            return Ok(());
        };
        let never_zero = |d: Option<Duration>| d.is_none_or(|d| !d.is_zero() && d <= YEAR);
        prop_assert!(never_zero(s.idle_timeout), "{flag} {value:?}: {:?}", s.idle_timeout);
        prop_assert!(never_zero(s.stall_timeout), "{flag} {value:?}: {:?}", s.stall_timeout);
        prop_assert!(never_zero(s.certs.reload_interval), "{flag} {value:?}");
        prop_assert!(!s.handshake_timeout.is_zero() && s.handshake_timeout <= YEAR, "{flag} {value:?}");
        prop_assert!(!s.connect_timeout.is_zero() && s.connect_timeout <= YEAR, "{flag} {value:?}");
        prop_assert!(s.drain_timeout <= YEAR, "{flag} {value:?}");
        prop_assert!(s.busy_poll.is_none_or(|w| !w.is_zero() && w <= MAX_BUSY_POLL), "{flag} {value:?}");
        prop_assert!(s.max_conns.is_none_or(|n| (1..=MAX_CONNS).contains(&n)), "{flag} {value:?}");
        prop_assert!(s.max_conns_per_ip.is_none_or(|n| (1..=MAX_CONNS).contains(&n)), "{flag} {value:?}");
        prop_assert!(s.max_memory.is_none_or(|n| (MIN_MEMORY..=MAX_MEMORY).contains(&n)), "{flag} {value:?}");
        if flag == "--max-handshakes" {
            prop_assert!((1..=MAX_CONNS).contains(&s.max_handshakes), "{value:?}");
        }
        if flag == "--threads" {
            prop_assert!((1..=MAX_THREADS).contains(&s.threads), "{value:?}");
        }
        prop_assert!(s.alpn.iter().all(|p| (1..=255).contains(&p.len())), "{flag} {value:?}");
        prop_assert!(!matches!(s.backends[0], Backend::Tcp { port: 0, .. }), "{flag} {value:?}");
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn flag_equals_value_reads_as_flag_then_value(
        flag in 0..VALUE_FLAGS.len(),
        value in prop_oneof![typed(), address(), "-[a-z=-]{0,8}", "[a-z]{1,5}=[a-z=]{0,5}"],
    ) {
        prop_assume!(!value.is_empty());
        let flag = VALUE_FLAGS[flag];
        let base = ["--listen", "9300", "--to", "127.0.0.1:9200"].map(String::from);
        let mut joined = base.to_vec();
        joined.push(format!("{flag}={value}"));
        let mut spaced = base.to_vec();
        spaced.extend([flag.to_string(), value.clone()]);
        prop_assert_eq!(prepare(&joined), Ok(CommandLine::Args(spaced)));
    }

    #[test]
    fn a_command_line_without_equals_or_help_is_left_as_it_is(
        args in prop::collection::vec(prop_oneof![typed(), address(), "--?[a-z-]{0,20}"], 0..8),
    ) {
        prop_assume!(args.iter().all(|a| !a.contains('=') && !["-h", "--help", "help"].contains(&a.as_str())));
        prop_assert_eq!(prepare(&args), Ok(CommandLine::Args(args.clone())));
    }
}

/// The exact bounds, each side of them, for each flag.
#[test]
fn each_bound_is_taken_and_one_past_it_is_refused() {
    let cases: &[(&str, &str, &str)] = &[
        ("--idle-timeout", "365d", "365.000000001d"),
        ("--stall-timeout", "8760h", "8760.0001h"),
        ("--handshake-timeout", "525600m", "31536000.000000001"),
        ("--connect-timeout", "31536000s", "31536001s"),
        ("--drain-timeout", "365d", "366d"),
        ("--reload-interval", "365d", "200000000000000d"),
        ("--busy-poll", "10ms", "10001us"),
        ("--max-conns", "10000000", "10000001"),
        ("--max-handshakes", "10000000", "9999999999999999999"),
        ("--max-conns-per-ip", "10000000", "99999999999999999999999"),
        ("--threads", "1024", "1025"),
        ("--max-memory", "64TiB", "65536.001GiB"),
        ("--max-memory", "1MiB", "1048575"),
    ];
    for (flag, last, past) in cases {
        let run = |value: &str| {
            let args = ["--listen", "9300", "--to", "127.0.0.1:9200", flag, value];
            Args::from_args(&["wssify"], &args)
                .map_err(|e| e.output)
                .and_then(|a| a.into_settings().map_err(|e| e.to_string()))
        };
        assert!(run(last).is_ok(), "{flag} {last}: {:?}", run(last).err());
        let refusal = run(past).err().unwrap_or_default();
        assert!(
            refusal.starts_with(&format!("{flag} '{past}': ")) && !refusal.contains('\n'),
            "{flag} {past} must be refused in one line naming the flag: {refusal:?}"
        );
    }
}
