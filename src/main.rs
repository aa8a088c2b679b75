//! The `wssify` command: flags in, exit code out. Everything else lives in
//! the library so that tests can drive it.

use std::process::ExitCode;

use argh::FromArgs;

use wssify::cli::{self, Args, CommandLine};
use wssify::{Exit, limits};

fn main() -> ExitCode {
    // First, before anything opens a descriptor: 3, 4, ... are systemd's.
    wssify::systemd::take_passed_at_start();
    let args = match parse_args() {
        Ok(args) => args,
        Err(code) => return code,
    };
    if args.version {
        println!("{}", cli::version_line());
        return ExitCode::SUCCESS;
    }
    match args.dev_ca_action() {
        Ok(None) => {}
        Ok(Some(action)) => {
            return match wssify::dev_ca::run_action(action, args.dev_ca_dir.as_deref()) {
                Ok(out) => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("wssify: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Err(e) => {
            eprintln!("wssify: {e}");
            return ExitCode::from(2);
        }
    }
    // rustls warns once per client that sends a malformed server name or
    // the like: any client can cause that at will, so by default only its
    // errors are shown (wssify logs every failed handshake itself, rate
    // limited); RUST_LOG=info,rustls=warn brings them back.
    let mut logger = env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,rustls=error"),
    );
    // A bad value is refused with the other flags, below.
    if args.log_format.as_deref().map(str::trim) == Some("json") {
        logger.format(wssify::observe::json_log::format);
    }
    let logger = logger.build();
    let level = logger.filter();
    // rustls' lines get the id of the connection they are about.
    if log::set_boxed_logger(Box::new(wssify::conn_id::Tagged::new(logger))).is_ok() {
        log::set_max_level(level);
    }

    let check = args.check;
    let settings = match args.into_settings() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("wssify: {e}");
            return ExitCode::from(2);
        }
    };

    if check {
        return run_check(&settings);
    }

    let fd_limit = match limits::raise_fd_limit() {
        Ok(limit) => {
            if limit.now > limit.before {
                log::info!(
                    "open-file limit raised from {} to {}",
                    limit.before,
                    limit.now
                );
            } else {
                log::info!("open-file limit: {}", limit.now);
            }
            Some(limit.now)
        }
        Err(e) => {
            log::warn!("cannot read or raise the open-file limit ({e}); assuming 1024");
            None
        }
    };

    let runtime = match wssify::runtime::build(settings.threads, settings.busy_poll) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("wssify: cannot start the runtime ({e}); try a smaller --threads");
            return ExitCode::FAILURE;
        }
    };
    // After the main runtime, whose event queue busy polling looks for.
    let priority = settings.handshake_priority;
    let (handshakes, lane) = if priority == wssify::priority::HandshakePriority::Normal {
        (None, None)
    } else {
        match wssify::priority::Lane::build(settings.threads, priority) {
            Ok((runtime, lane)) => (Some(runtime), Some(lane)),
            Err(e) => {
                eprintln!(
                    "wssify: cannot start the handshake threads ({e}); try a smaller --threads"
                );
                return ExitCode::FAILURE;
            }
        }
    };
    let result = runtime.block_on(wssify::run(settings, fd_limit, lane));
    if let Some(handshakes) = handshakes {
        handshakes.shutdown_background();
    }
    match result {
        Ok(Exit::Drained) => {
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            ExitCode::SUCCESS
        }
        // A second signal: leave now, without waiting for anything.
        Ok(Exit::Forced) => std::process::exit(1),
        Err(e) => {
            eprintln!("wssify: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--check`: prints the findings to stdout; exit 0 when all is well, 1 if not.
fn run_check(settings: &wssify::Settings) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("wssify: cannot start the runtime ({e})");
            return ExitCode::FAILURE;
        }
    };
    let findings = runtime.block_on(wssify::check::check(settings));
    print!("{}", findings.render());
    if findings.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Parses the command line. `-h`/`--help` prints to stdout and exits 0; a
/// flag argh cannot parse (unknown, missing value) is a usage error like
/// any other flag mistake: one line on stderr and exit code 2. The forms
/// argh does not take (`--listen=9300`, `-h` anywhere) are rewritten by
/// [`cli::prepare`] first.
fn parse_args() -> Result<Args, ExitCode> {
    let strings: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let command = strings.first().map_or("wssify", String::as_str);
    let command = std::path::Path::new(command)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("wssify");
    let rest = match cli::prepare(strings.get(1..).unwrap_or_default()) {
        Ok(CommandLine::Args(rest)) => rest,
        Ok(CommandLine::Help) => vec!["--help".to_string()],
        Err(e) => {
            eprintln!("wssify: {e}");
            return Err(ExitCode::from(2));
        }
    };
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    Args::from_args(&[command], &rest).map_err(|early| match early.status {
        Ok(()) => {
            print!("{}", early.output);
            ExitCode::SUCCESS
        }
        Err(()) => {
            let first = early.output.lines().next().unwrap_or("bad arguments");
            eprintln!("wssify: {first}; see wssify --help");
            ExitCode::from(2)
        }
    })
}
