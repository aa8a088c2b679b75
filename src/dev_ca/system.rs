//! `wssify --dev-ca install` / `uninstall`: the development CA into (or out
//! of) the system's trust store, only when asked, never by a start.
//!
//! Supported where the store is a directory plus an update command:
//! Debian/Ubuntu (`update-ca-certificates`) and Fedora/RHEL
//! (`update-ca-trust`). Both need root; without it the answer is the exact
//! `sudo` command. The file has a fixed name, so installing a new CA
//! replaces the old one rather than trusting both.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A system trust store wssify knows how to update.
pub struct Store {
    /// The distributions that have it.
    pub name: &'static str,
    /// Where local CA files go.
    pub dir: &'static str,
    /// The file wssify writes there.
    pub file: &'static str,
    /// The command that rebuilds the store from that directory.
    pub update: &'static str,
    /// Its arguments after a removal.
    pub update_after_removal: &'static [&'static str],
}

/// Debian and Ubuntu.
pub const DEBIAN: Store = Store {
    name: "Debian/Ubuntu",
    dir: "/usr/local/share/ca-certificates",
    file: "/usr/local/share/ca-certificates/wssify-dev-ca.crt",
    update: "update-ca-certificates",
    // Without --fresh it leaves the removed certificate's links in
    // /etc/ssl/certs behind, dangling.
    update_after_removal: &["--fresh"],
};

/// Fedora, RHEL and their relatives.
pub const FEDORA: Store = Store {
    name: "Fedora/RHEL",
    dir: "/etc/pki/ca-trust/source/anchors",
    file: "/etc/pki/ca-trust/source/anchors/wssify-dev-ca.pem",
    update: "update-ca-trust",
    update_after_removal: &[],
};

/// The store of this system, with the path of its update command.
pub fn detect() -> Option<(&'static Store, PathBuf)> {
    [&DEBIAN, &FEDORA].into_iter().find_map(|store| {
        if !Path::new(store.dir).is_dir() {
            return None;
        }
        find_program(store.update).map(|program| (store, program))
    })
}

/// Whether the CA with this PEM is what the store holds.
pub fn installed(ca_pem: &[u8]) -> Option<&'static str> {
    [&DEBIAN, &FEDORA]
        .into_iter()
        .find(|store| fs::read(store.file).is_ok_and(|held| held == ca_pem))
        .map(|store| store.file)
}

/// Puts `ca_pem` into the system store. `retry` is the command to run as
/// root, for the answer when permission is denied.
pub fn install(ca_pem: &[u8], retry: &str) -> Result<String, String> {
    let (store, program) = detect().ok_or_else(no_store)?;
    write_file(Path::new(store.file), ca_pem).map_err(|e| denied(store.file, &e, retry))?;
    run(&program, &[]).map_err(|why| {
        format!(
            "wrote {} but {} failed: {why}; run it as root to finish",
            store.file, store.update
        )
    })?;
    Ok(format!(
        "installed the development CA into the {} system store: {} (and ran {})\nChrome, Firefox and Node on Linux do not read the system store: see wssify --dev-ca show",
        store.name, store.file, store.update
    ))
}

/// Takes the development CA out of the system store, if it is there.
pub fn uninstall(retry: &str) -> Result<String, String> {
    let Some((store, program)) = detect() else {
        return Err(no_store());
    };
    match fs::remove_file(store.file) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(format!(
                "the development CA is not in the {} system store ({} does not exist): nothing to do",
                store.name, store.file
            ));
        }
        Err(e) => return Err(denied(store.file, &e, retry)),
    }
    let update = [store.update]
        .iter()
        .chain(store.update_after_removal)
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    run(&program, store.update_after_removal).map_err(|why| {
        format!(
            "removed {} but {update} failed: {why}; run it as root to finish",
            store.file
        )
    })?;
    Ok(format!(
        "removed the development CA from the {} system store: {} (and ran {update})",
        store.name, store.file
    ))
}

fn no_store() -> String {
    format!(
        "no system store wssify knows how to update here ({} with {}, or {} with {}); on macOS run: sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain ca.pem; wssify --dev-ca show lists the other ways",
        DEBIAN.dir, DEBIAN.update, FEDORA.dir, FEDORA.update
    )
}

fn denied(file: &str, e: &io::Error, retry: &str) -> String {
    if e.kind() == io::ErrorKind::PermissionDenied {
        format!("changing the system store needs root ({file}: permission denied): run {retry}")
    } else {
        format!("cannot change {file} ({e})")
    }
}

/// Writes the file (mode 0644, readable by every program that checks
/// certificates) through a temporary file renamed into place.
fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Runs the store's update command; its first line of output on failure.
fn run(program: &Path, args: &[&str]) -> Result<(), String> {
    // Nothing from the caller's environment: a fixed PATH for the scripts
    // these commands run, and messages in plain English.
    let output = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", SYSTEM_DIRS.join(":"))
        .env("LANG", "C")
        .output()
        .map_err(|e| format!("cannot run it ({e})"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let first = stderr.lines().next().unwrap_or("no message");
    Err(format!("{} ({first})", output.status))
}

/// The directories a store's update command is looked for in as root, and
/// the PATH it runs with: never the user's PATH, which under `sudo -E` or a
/// root shell may name a program someone else put there.
const SYSTEM_DIRS: [&str; 4] = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// `name` in the system directories, and as another user also in PATH
/// (first).
fn find_program(name: &str) -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    find_in(name, std::env::var_os("PATH"), root)
}

/// [`find_program`] with PATH and whether this is root given.
fn find_in(name: &str, path: Option<std::ffi::OsString>, root: bool) -> Option<PathBuf> {
    let user_dirs: Vec<PathBuf> = match path {
        Some(path) if !root => std::env::split_paths(&path).collect(),
        _ => Vec::new(),
    };
    user_dirs
        .into_iter()
        .chain(SYSTEM_DIRS.map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_never_looks_in_the_users_path() {
        let dir = tempfile::tempdir().unwrap();
        let name = "wssify-test-update-ca-certificates";
        std::fs::write(dir.path().join(name), "#!/bin/sh\n").unwrap();
        let path = Some(dir.path().as_os_str().to_owned());
        assert_eq!(
            find_in(name, path.clone(), false),
            Some(dir.path().join(name))
        );
        assert_eq!(find_in(name, path, true), None);
    }
}
