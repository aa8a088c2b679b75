//! The container image (deploy/container/) and the Kubernetes manifests
//! (deploy/kubernetes/), run for real: Debian's podman builds the images
//! from the release binaries (scripts/container-image.sh, once for all the
//! tests here) and runs them the ways operators do: read-only, non-root,
//! only NET_BIND_SERVICE, a backend named by DNS, SIGTERM from `podman
//! stop`, and the sidecar pod with `podman kube play`, whose containers
//! share localhost as in Kubernetes. The manifests are also checked against
//! the Kubernetes schemas with `kubernetes-validate --strict`.
//!
//! Podman's containers outlive the process that started them (conmon is
//! re-parented to PID 1), so every container, pod and network made here is
//! named `wssify-test-PID-...` and removed by a guard even when a test
//! fails; a run also removes what an earlier, killed run left behind.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::ca::{Ca, Leaf, presented};
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// The images the script builds, under the names the manifests use.
const WSSIFY_IMAGE: &str = "localhost/wssify:latest";
const ECHO_IMAGE: &str = "localhost/ws-echo:latest";

/// Where the repository is.
fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A name for something podman keeps, unique to this test process.
fn name(what: &str) -> String {
    format!("wssify-test-{}-{what}", std::process::id())
}

/// Runs `podman args`, returning its exit status and its output (stdout,
/// then stderr).
fn podman_status(args: &[&str]) -> (bool, String) {
    let out = Command::new("podman")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run podman: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs `podman args`, which must succeed; returns its standard output.
fn podman(args: &[&str]) -> String {
    let out = Command::new("podman")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run podman: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The two host problems containers.conf fixes (README, Container).
    let hint = if stderr.contains("setrlimit") || stderr.contains("hybrid mode") {
        "\n/etc/containers/containers.conf needs default_ulimits within `ulimit -Hn`/`-Hu` \
         and runtime = \"runc\": see the README's Container section"
    } else {
        ""
    };
    assert!(
        out.status.success(),
        "podman {} failed: {}{stderr}{hint}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// [`podman`] with its arguments written as one command line (split at
/// whitespace: no argument here holds any), as the README writes them.
fn podman_line(line: &str) -> String {
    podman(&line.split_whitespace().collect::<Vec<_>>())
}

/// Removes, when dropped (a test's end or its panic), the containers, pods
/// and networks it was given.
#[derive(Default)]
struct Cleanup {
    containers: Vec<String>,
    pods: Vec<String>,
    networks: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for pod in &self.pods {
            let _ = podman_status(&["pod", "rm", "-f", "-t", "0", pod]);
        }
        for container in &self.containers {
            let _ = podman_status(&["rm", "-f", "-t", "0", container]);
        }
        for network in &self.networks {
            let _ = podman_status(&["network", "rm", "-f", network]);
        }
    }
}

/// Removes the containers, pods and networks of earlier test processes
/// that are gone (killed before their guards ran).
fn remove_leftovers() {
    let alive = |name: &str| {
        name.strip_prefix("wssify-test-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
    };
    let listed = |args: &[&str]| -> Vec<String> {
        podman(args)
            .lines()
            .filter(|n| n.starts_with("wssify-test-") && !alive(n))
            .map(str::to_string)
            .collect()
    };
    // Removed as the guard is dropped.
    drop(Cleanup {
        pods: listed(&["pod", "ps", "--format", "{{.Name}}"]),
        containers: listed(&["ps", "-a", "--format", "{{.Names}}"]),
        networks: listed(&["network", "ls", "--format", "{{.Name}}"]),
    });
}

/// podman, runc and buildah from Debian, `containers.conf` written where
/// missing, and both images built from the release binaries: once for all
/// the tests in this file (the release build takes a minute or two the
/// first time, seconds after).
fn images() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        debian_package("podman", "podman");
        debian_package("runc", "runc");
        debian_package("buildah", "buildah");
        let started = Instant::now();
        let out = Command::new(repo().join("scripts/container-image.sh"))
            .current_dir(repo())
            .env("TAG", "latest")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run scripts/container-image.sh: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            return Err(format!(
                "scripts/container-image.sh failed (podman needs /etc/containers/containers.conf \
                 with default_ulimits within `ulimit -H` and runtime = \"runc\" on some hosts; \
                 see the README's Container section):\n{text}"
            ));
        }
        eprintln!(
            "images built in {:.0?}:\n{}",
            started.elapsed(),
            text.lines()
                .filter(|l| l.starts_with("localhost/"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        remove_leftovers();
        Ok(())
    });
    if let Err(e) = built {
        panic!("{e}");
    }
}

/// A certificate for `names` signed by a fresh CA, written as a
/// cert-manager Secret holds it: tls.crt, tls.key and ca.crt, readable by
/// the container's user (65534).
fn secret_files(dir: &Path, ca: &Ca, names: &[&str]) -> Leaf {
    let leaf = ca.server(names);
    write_secret(dir, ca, &leaf);
    leaf
}

/// Writes `leaf` and its CA into `dir` as tls.crt, tls.key and ca.crt.
fn write_secret(dir: &Path, ca: &Ca, leaf: &Leaf) {
    use std::os::unix::fs::PermissionsExt;
    for (file, text) in [
        ("tls.crt", &leaf.cert_pem),
        ("tls.key", &leaf.key_pem),
        ("ca.crt", &ca.cert_pem()),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Waits (bounded) until `podman logs NAME` holds `needle`; returns the log.
async fn wait_for_podman_log(name: &str, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, log) = podman_status(&["logs", name]);
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no `{needle}` in the log of {name} within {WAIT:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A wss:// client at `addr` for `host`, trusting `ca`.
async fn wss_client(
    addr: SocketAddr,
    ca: &Ca,
    host: &str,
) -> WebSocketStream<TlsStream<TcpStream>> {
    let tls = tls_connect(addr, trusting_client(&[ca.der()]), host)
        .await
        .expect("TLS handshake trusting the test CA");
    let url = format!("wss://{host}:{}/chat", addr.port());
    let (ws, response) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("WebSocket upgrade through wssify");
    assert_eq!(response.status(), 101);
    ws
}

/// Sends `text` and expects it back.
async fn echoes(ws: &mut WebSocketStream<TlsStream<TcpStream>>, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    match ws.next().await {
        Some(Ok(message)) => assert_eq!(message, Message::text(text)),
        other => panic!("expected the echo of {text:?}, got {other:?}"),
    }
}

/// `/proc/PID/status` field `name` of a process on this host.
fn proc_status(pid: &str, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// The mount options of the root file system as process `pid` sees it.
fn root_mount_options(pid: &str) -> String {
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    // Fields: id parent major:minor root mountpoint options ...; the last
    // mount on "/" is the one in effect.
    mountinfo
        .lines()
        .rfind(|l| l.split_whitespace().nth(4) == Some("/"))
        .and_then(|l| l.split_whitespace().nth(5))
        .unwrap_or_else(|| panic!("no / in /proc/{pid}/mountinfo"))
        .to_string()
}

#[test]
fn the_image_holds_the_binary_its_libraries_and_no_shell() {
    images();
    let mut guard = Cleanup::default();
    let container = name("files");
    guard.containers.push(container.clone());
    podman(&["create", "--name", &container, WSSIFY_IMAGE]);
    let tar = Command::new("sh")
        .arg("-c")
        .arg(format!("podman export {container} | tar -tvf -"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&tar.stdout).to_string();
    let files: Vec<&str> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    assert!(files.contains(&"usr/local/bin/wssify"), "{listing}");
    assert!(files.contains(&"lib64/ld-linux-x86-64.so.2"), "{listing}");
    assert!(files.iter().any(|f| f.ends_with("/libc.so.6")), "{listing}");
    assert!(
        files.contains(&"etc/nsswitch.conf") && files.contains(&"etc/passwd"),
        "{listing}"
    );
    for file in &files {
        assert!(
            file.starts_with("usr/local/bin/wssify")
                || file.starts_with("lib")
                || file.starts_with("etc/"),
            "unexpected file in the image: {file}\n{listing}"
        );
        assert!(
            !file.ends_with("/sh") && !file.contains("busybox") && !file.contains("apt"),
            "a shell or package manager in the image: {file}"
        );
    }
    let size: u64 = podman(&["image", "inspect", "--format", "{{.Size}}", WSSIFY_IMAGE])
        .parse()
        .unwrap();
    eprintln!(
        "{WSSIFY_IMAGE}: {:.1} MB, {} files",
        size as f64 / 1e6,
        files.len()
    );
    assert!(size < 30_000_000, "the image grew to {size} bytes");
    let user = podman(&[
        "image",
        "inspect",
        "--format",
        "{{.Config.User}}",
        WSSIFY_IMAGE,
    ]);
    assert_eq!(user, "65534:65534");
    // No shell to run anything else with.
    let (ran, out) = podman_status(&[
        "run",
        "--rm",
        "--name",
        &name("sh"),
        "--entrypoint",
        "/bin/sh",
        WSSIFY_IMAGE,
        "-c",
        "true",
    ]);
    assert!(!ran, "a shell ran in the image: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_non_root_on_443_to_a_backend_by_name_and_sigterm_drains() {
    images();
    bounded(Duration::from_secs(120), async {
        let mut guard = Cleanup::default();
        // A user-defined network has podman's DNS server (aardvark-dns):
        // the backend is found by its name through the image's resolver,
        // as a Kubernetes Service name would be.
        let network = name("net");
        guard.networks.push(network.clone());
        podman(&["network", "create", &network]);
        let backend = name("ws-server");
        guard.containers.push(backend.clone());
        podman_line(&format!(
            "run -d --name {backend} --network {network} --read-only --cap-drop ALL \
             {ECHO_IMAGE} 0.0.0.0:9200"
        ));
        wait_for_podman_log(&backend, "ws echo listening on").await;

        let certs = tempfile::tempdir().unwrap();
        let ca = Ca::new("container test CA");
        let leaf = secret_files(certs.path(), &ca, &["localhost"]);
        let port = free_port();
        let wssify = name("wssify");
        guard.containers.push(wssify.clone());
        podman_line(&format!(
            "run -d --name {wssify} --network {network} \
             --read-only --user 65534:65534 --cap-drop ALL --cap-add NET_BIND_SERVICE \
             -p 127.0.0.1:{port}:443 -v {}:/etc/wssify/tls:ro {WSSIFY_IMAGE} \
             --listen 443 --to {backend}:9200 \
             --cert /etc/wssify/tls/tls.crt --key /etc/wssify/tls/tls.key --drain-timeout 20s",
            certs.path().display()
        ));
        let log = wait_for_podman_log(&wssify, "listening on").await;
        assert!(
            !log.contains("cannot connect to backend"),
            "the backend's name did not resolve or connect at start:\n{log}"
        );
        // Through DNS (the image's libc, nsswitch.conf and podman's
        // resolv.conf), not the hosts file, which does not name it.
        wait_for_podman_log(&wssify, &format!("backend {backend}:9200 resolves to")).await;
        let hosts = podman(&["inspect", "--format", "{{.HostsPath}}", &wssify]);
        let hosts = std::fs::read_to_string(hosts).unwrap();
        assert!(!hosts.contains(&backend), "{hosts}");

        // A WebSocket from the host, through the container, to the backend
        // container found by name.
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut ws = wss_client(addr, &ca, "localhost").await;
        echoes(&mut ws, "hello through the container").await;
        assert_eq!(
            presented(addr, Some("localhost")).await.unwrap(),
            leaf.der,
            "the mounted certificate is served"
        );

        // The settings hold: podman's view, then the kernel's view of the
        // process from the host.
        let inspect = podman(&[
            "inspect",
            "--format",
            "{{.HostConfig.ReadonlyRootfs}} {{.Config.User}} {{.State.Pid}}",
            &wssify,
        ]);
        let fields: Vec<&str> = inspect.split_whitespace().collect();
        assert_eq!(fields[..2], ["true", "65534:65534"], "{inspect}");
        let pid = fields[2];
        for field in ["Uid", "Gid"] {
            let ids = proc_status(pid, field);
            assert!(
                ids.split_whitespace().all(|id| id == "65534"),
                "{field}: {ids}"
            );
        }
        // CAP_NET_BIND_SERVICE (bit 10) and nothing else.
        assert_eq!(proc_status(pid, "CapEff"), "0000000000000400");
        assert_eq!(proc_status(pid, "CapBnd"), "0000000000000400");
        let options = root_mount_options(pid);
        assert!(
            options.split(',').any(|o| o == "ro"),
            "root mounted {options}"
        );

        // `podman stop` sends SIGTERM to wssify as PID 1: it stops
        // accepting, the open WebSocket still works during the drain, and
        // once it closes wssify exits 0, long before the drain timeout.
        let stopping = {
            let wssify = wssify.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let result = podman_status(&["stop", "-t", "40", &wssify]);
                (result, started.elapsed())
            })
        };
        wait_for_podman_log(&wssify, "SIGTERM: no longer accepting").await;
        assert!(
            tls_connect(addr, trusting_client(&[ca.der()]), "localhost")
                .await
                .is_err(),
            "a new client was accepted during the drain"
        );
        echoes(&mut ws, "still open while draining").await;
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
        drop(ws);
        let ((stopped, out), took) = tokio::task::spawn_blocking(move || stopping.join().unwrap())
            .await
            .unwrap();
        assert!(stopped, "podman stop: {out}");
        assert!(
            took < Duration::from_secs(15),
            "podman stop took {took:?}: SIGTERM not handled?"
        );
        let code = podman(&["inspect", "--format", "{{.State.ExitCode}}", &wssify]);
        assert_eq!(code, "0", "{}", podman_status(&["logs", &wssify]).1);
        let (_, log) = podman_status(&["logs", &wssify]);
        assert!(
            log.contains("stopped accepting; waiting up to 20s for 1 open connection"),
            "{log}"
        );
    })
    .await;
}

#[test]
fn port_443_is_refused_without_net_bind_service() {
    images();
    let mut guard = Cleanup::default();
    let container = name("nocap");
    guard.containers.push(container.clone());
    // The same as the container that serves, less the capability.
    let line = format!(
        "run --name {container} --read-only --user 65534:65534 --cap-drop ALL \
         {WSSIFY_IMAGE} --listen 443 --to 127.0.0.1:9200 --self-signed"
    );
    let (ran, out) = podman_status(&line.split_whitespace().collect::<Vec<_>>());
    assert!(!ran, "wssify bound 443 without the capability: {out}");
    assert!(
        out.contains("--listen 443: permission denied for port 443"),
        "{out}"
    );
    let code = podman(&["inspect", "--format", "{{.State.ExitCode}}", &container]);
    assert_ne!(code, "0");
}

/// `kubernetes-validate` from PyPI in a virtual environment of its own,
/// installed once (about 30 s) and reused.
fn kubernetes_validate() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kubernetes-validate");
    let program = venv.join("bin/kubernetes-validate");
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        if program.is_file() {
            return;
        }
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            made,
            "this test needs python3 with venv: `sudo apt-get install -y python3-venv`"
        );
        let installed = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "kubernetes-validate"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            installed,
            "`pip install kubernetes-validate` failed (it needs PyPI)"
        );
    });
    program
}

/// Runs `kubernetes-validate --strict` on `files`; its success and output.
fn validate(files: &[&Path]) -> (bool, String) {
    let out = Command::new(kubernetes_validate())
        .arg("--strict")
        .args(files)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The number in the manifest's `- --FLAG=VALUE` argument, or `KEY: VALUE`.
fn manifest_number(manifest: &str, key: &str, strip: &str) -> u64 {
    manifest
        .lines()
        .find_map(|l| l.trim().trim_start_matches("- ").strip_prefix(key))
        .map(|v| v.trim().trim_end_matches(strip))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number for {key} in the manifest"))
}

#[test]
fn the_kubernetes_manifests_pass_the_schemas_and_agree_with_the_flags() {
    let deployment = repo().join("deploy/kubernetes/deployment.yaml");
    let service = repo().join("deploy/kubernetes/service.yaml");
    let (valid, out) = validate(&[&deployment, &service]);
    assert!(valid, "{out}");
    assert_eq!(out.matches("passed").count(), 2, "{out}");

    // The check can fail: a misspelt field is refused.
    let text = std::fs::read_to_string(&deployment).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        text.replace("readOnlyRootFilesystem", "readOnlyRootFileSystem"),
    )
    .unwrap();
    let (valid, out) = validate(&[&bad]);
    assert!(!valid && out.contains("readOnlyRootFileSystem"), "{out}");

    // The pod outlives the drain: the grace period covers the preStop
    // pause and --drain-timeout with room to close.
    let grace = manifest_number(&text, "terminationGracePeriodSeconds:", "");
    let drain = manifest_number(&text, "--drain-timeout=", "s");
    let pause = manifest_number(&text, "seconds:", "");
    assert!(
        grace >= pause + drain + 5,
        "grace {grace}s, drain {drain}s, preStop {pause}s"
    );
    // --max-memory is half of wssify's memory limit (the rest for the
    // connections' own state and the process), and the connections it
    // allows fit in that rest at about 6 KiB each (README, Performance).
    let budget_mib = manifest_number(&text, "--max-memory=", "MiB");
    // --max-conns follows --max-memory: 32 KiB each.
    assert!(!text.contains("- --max-conns"));
    let conns = budget_mib * 1024 / 32;
    let wssify_part = &text[text.find("- name: wssify").unwrap()..];
    let limit_mib = wssify_part
        .split("limits:")
        .nth(1)
        .map(|rest| manifest_number(rest, "memory:", "Mi"))
        .unwrap();
    assert_eq!(budget_mib * 2, limit_mib);
    let state_mib = conns * 6 / 1024;
    assert!(
        budget_mib + state_mib + 10 <= limit_mib * 9 / 10,
        "{budget_mib} MiB buffers + {conns} connections x 6 KiB + 10 MiB does not fit {limit_mib} MiB"
    );
}

/// A Secret volume as the kubelet writes it: the files in a timestamped
/// directory, `..data` pointing at it, and each name a symbolic link
/// through `..data`. An update writes a new directory and renames a new
/// `..data` link over the old one (one atomic step), then removes the old
/// directory: what a cert-manager renewal looks like from inside the pod.
struct SecretVolume {
    dir: tempfile::TempDir,
    generation: u32,
}

impl SecretVolume {
    fn new(ca: &Ca, leaf: &Leaf) -> SecretVolume {
        let mut volume = SecretVolume {
            dir: tempfile::tempdir().unwrap(),
            generation: 0,
        };
        volume.update(ca, leaf);
        for file in ["tls.crt", "tls.key", "ca.crt"] {
            std::os::unix::fs::symlink(format!("..data/{file}"), volume.dir.path().join(file))
                .unwrap();
        }
        volume
    }

    fn update(&mut self, ca: &Ca, leaf: &Leaf) {
        self.generation += 1;
        let stamp = format!(
            "..2026_11_29_00_00_0{}.{}",
            self.generation,
            std::process::id()
        );
        let fresh = self.dir.path().join(&stamp);
        std::fs::create_dir(&fresh).unwrap();
        write_secret(&fresh, ca, leaf);
        let link = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&stamp, &link).unwrap();
        let data = self.dir.path().join("..data");
        let old = std::fs::read_link(&data).ok();
        std::fs::rename(&link, &data).unwrap();
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.path().join(old)).unwrap();
        }
    }
}

/// Replaces `from` (which must be there exactly once) by `to`.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "`{from}` in the manifest");
    text.replacen(from, to, 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_pod_serves_wss_and_takes_a_renewed_secret_without_a_restart() {
    images();
    bounded(Duration::from_secs(120), async {
        let ca = Ca::new("kube test CA");
        let first = ca.server(&["ws-echo.default.svc"]);
        let mut secret = SecretVolume::new(&ca, &first);

        // deploy/kubernetes/deployment.yaml as it is, but for what podman
        // 4.3 cannot do or a test must not: the Secret becomes the
        // kubelet-style directory above (podman has no Secret objects that
        // update), one replica (podman makes one pod per replica), a
        // name of this test's own, and the port published on a free
        // loopback port (podman 4.3 publishes every containerPort on the
        // host's same port otherwise).
        let manifest =
            std::fs::read_to_string(repo().join("deploy/kubernetes/deployment.yaml")).unwrap();
        let deployment = name("kube");
        let port = free_port();
        let manifest = replace_once(&manifest, "\n  name: ws-echo\n", &format!("\n  name: {deployment}\n"));
        let manifest = replace_once(&manifest, "replicas: 2", "replicas: 1");
        let manifest = replace_once(
            &manifest,
            "          secret:\n            secretName: wssify-tls\n            defaultMode: 0440\n",
            &format!(
                "          hostPath:\n            path: {}\n            type: Directory\n",
                secret.dir.path().display()
            ),
        );
        let manifest = replace_once(
            &manifest,
            "              containerPort: 8443\n",
            &format!(
                "              containerPort: 8443\n              hostPort: {port}\n              hostIP: 127.0.0.1\n"
            ),
        );
        let dir = tempfile::tempdir().unwrap();
        let play = dir.path().join("play.yaml");
        std::fs::write(&play, manifest).unwrap();

        let mut guard = Cleanup::default();
        let pod = format!("{deployment}-pod-0");
        guard.pods.push(pod.clone());
        let (played, out) = podman_status(&["kube", "play", play.to_str().unwrap()]);
        assert!(played, "podman kube play: {out}");
        let wssify = format!("{pod}-wssify");
        let server = format!("{pod}-ws-server");
        wait_for_podman_log(&server, "ws echo listening on 127.0.0.1:9200").await;
        wait_for_podman_log(&wssify, "listening on [::]:8443").await;

        // One network namespace: the ws server's loopback is wssify's.
        let pid = |c: &str| podman(&["inspect", "--format", "{{.State.Pid}}", c]);
        let net = |pid: String| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
        assert_eq!(net(pid(&wssify)), net(pid(&server)));

        // From outside the pod, wssify is the one way in: its port answers
        // on the pod's address, the ws server's does not.
        let pod_ip = podman(&[
            "inspect", "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &wssify,
        ]);
        let at = |port: u16| format!("{pod_ip}:{port}").parse::<SocketAddr>().unwrap();
        TcpStream::connect(at(8443)).await.expect("wssify on the pod's address");
        let refused = TcpStream::connect(at(9200)).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut ws = wss_client(addr, &ca, "ws-echo.default.svc").await;
        echoes(&mut ws, "hello through the sidecar").await;
        assert_eq!(presented(addr, Some("ws-echo.default.svc")).await.unwrap(), first.der);

        // cert-manager renews: the kubelet swaps the volume's files.
        let started = podman(&["inspect", "--format", "{{.State.StartedAt}} {{.RestartCount}}", &wssify]);
        let renewed = ca.server(&["ws-echo.default.svc"]);
        secret.update(&ca, &renewed);
        let log = wait_for_podman_log(&wssify, "reloaded (file change): --cert /etc/wssify/tls/tls.crt").await;
        assert!(log.contains(&renewed.fingerprint), "{log}");
        assert_eq!(presented(addr, Some("ws-echo.default.svc")).await.unwrap(), renewed.der);
        // The WebSocket opened before is untouched, and nothing restarted.
        echoes(&mut ws, "still here after the renewal").await;
        assert_eq!(
            podman(&["inspect", "--format", "{{.State.StartedAt}} {{.RestartCount}}", &wssify]),
            started
        );
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
        drop(ws);

        // Stopping the pod sends both containers SIGTERM (what the kubelet
        // does after preStop): each is PID 1 in its container, handles it
        // and exits 0 at once, long before the grace period's SIGKILL.
        let stopping = Instant::now();
        podman(&["pod", "stop", "-t", "40", &pod]);
        assert!(
            stopping.elapsed() < Duration::from_secs(15),
            "the pod took {:?} to stop: SIGTERM not handled?",
            stopping.elapsed()
        );
        for container in [&wssify, &server] {
            let code = podman(&["inspect", "--format", "{{.State.ExitCode}}", container]);
            assert_eq!(code, "0", "{container}: {}", podman_status(&["logs", container]).1);
        }
        let (down, out) = podman_status(&["kube", "down", play.to_str().unwrap()]);
        assert!(down, "podman kube down: {out}");
    })
    .await;
}
