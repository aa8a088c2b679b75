//! `--ticket-keys FILE`: TLS session tickets sealed with keys read from a
//! file that every replica mounts (a Kubernetes Secret), so a client
//! resumes on whichever replica the load balancer picks.
//!
//! The file follows HAProxy's `tls-ticket-keys` layout, so the tools and
//! habits around it carry over: one key per line, 80 random bytes in
//! base64 (`openssl rand 80 | openssl base64 -A`), blank lines and `#`
//! comments ignored. HAProxy's rotation rule holds too: the **second to
//! last** key seals new tickets and every key opens them. Keep three keys
//! (previous, current, next): a rotation drops the first and appends a new
//! one, and a replica still at the old file seals with a key the rotated
//! ones hold, while they seal with the old file's last key, which no one
//! sealed with before: at no step does a replica seal with a key another
//! cannot open. With a single key, that key seals.
//!
//! The tickets themselves are wssify's (not HAProxy's): AES-256-GCM under
//! a key derived with HKDF-SHA256 from each line and from the client
//! certificate checks in force (`--client-ca`, `--crl`), so a change of
//! those stops older tickets from resuming (a resumption skips the client
//! certificate check) exactly as without this flag.

use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

/// Bytes in one key line once decoded (HAProxy's AES-256 layout: a
/// 16-byte name, then 64 bytes of secret).
pub const KEY_BYTES: usize = 80;
/// How a ticket names the key that sealed it.
const NAME_BYTES: usize = 16;
/// How long a ticket may be used: TLS 1.3 allows at most 7 days; rustls'
/// own ticketer rotates every 6 hours. Rotate the file at least as often
/// as this for forward secrecy.
const LIFETIME_SECS: u32 = 12 * 3600;

/// One key from the file, ready to seal and open.
struct Key {
    name: [u8; NAME_BYTES],
    aead: LessSafeKey,
}

/// Seals with one key of the file, opens with any.
pub struct SharedTicketer {
    keys: Vec<Key>,
    /// Which of `keys` seals new tickets.
    sealing: usize,
    random: SystemRandom,
}

impl std::fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: never key material.
        f.debug_struct("SharedTicketer")
            .field("keys", &self.keys.len())
            .field("sealing", &self.sealing)
            .finish()
    }
}

/// A `--ticket-keys` file as read: its bytes (to see changes) and keys.
pub struct KeyFile {
    /// The file's contents.
    pub bytes: Vec<u8>,
    /// Its keys, in the file's order.
    pub keys: Vec<[u8; KEY_BYTES]>,
}

/// Reads and parses the `--ticket-keys` file at `path`, or says in one
/// line what is wrong with it (naming the flag and the file).
pub fn read_file(path: &std::path::Path) -> Result<KeyFile, String> {
    let label = format!("--ticket-keys {}", path.display());
    let bytes = crate::certs::read(&label, path, "the session ticket keys file")?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| format!("{label}: not text; each line is one base64 key"))?;
    let keys = parse(&label, text)?;
    Ok(KeyFile { bytes, keys })
}

/// Which key of `count` seals, counted from 1 as the file's lines are:
/// the second to last (one key seals itself).
pub fn sealing_line(count: usize) -> usize {
    count.saturating_sub(2) + 1
}

/// Reads the file's text into its keys, or says which line is wrong.
pub fn parse(label: &str, text: &str) -> Result<Vec<[u8; KEY_BYTES]>, String> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bytes = base64_decode(line).ok_or_else(|| {
            format!(
                "{label}: line {} is not base64; each line is one key: openssl rand 80 | openssl base64 -A",
                i + 1
            )
        })?;
        let key: [u8; KEY_BYTES] = bytes.as_slice().try_into().map_err(|_| {
            format!(
                "{label}: line {} holds {} bytes, and a key is {KEY_BYTES} (openssl rand 80 | openssl base64 -A)",
                i + 1,
                bytes.len()
            )
        })?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(format!(
            "{label}: holds no key; add one per line: openssl rand 80 | openssl base64 -A"
        ));
    }
    Ok(keys)
}

/// The ticketer for these keys, bound to `binding` (the client certificate
/// checks' bytes; empty without mTLS).
pub fn ticketer(keys: &[[u8; KEY_BYTES]], binding: &[u8]) -> Result<SharedTicketer, String> {
    let binding = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, binding);
    let mut sealed = Vec::with_capacity(keys.len());
    for key in keys {
        let mut name = [0u8; NAME_BYTES];
        name.copy_from_slice(&key[..NAME_BYTES]);
        let prk = Salt::new(HKDF_SHA256, b"wssify ticket key v1").extract(&key[NAME_BYTES..]);
        let info = [binding.as_ref()];
        let okm = prk
            .expand(&info, &AES_256_GCM)
            .map_err(|_| "cannot derive a ticket key".to_string())?;
        let aead = LessSafeKey::new(UnboundKey::from(okm));
        sealed.push(Key { name, aead });
    }
    // The second to last seals (HAProxy's rule); one key seals itself.
    let sealing = sealing_line(keys.len()) - 1;
    Ok(SharedTicketer {
        keys: sealed,
        sealing,
        random: SystemRandom::new(),
    })
}

impl ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME_SECS
    }

    /// `name | nonce | ciphertext and tag`, the name and nonce
    /// authenticated as associated data.
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let key = self.keys.get(self.sealing)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NAME_BYTES + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&out[..NAME_BYTES + NONCE_LEN]),
                &mut sealed,
            )
            .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    /// The plaintext, if some key of the file sealed it; `None` for
    /// anything else (a ticket from before a rotation dropped its key, or
    /// from another cluster): the client gets a full handshake.
    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < NAME_BYTES + NONCE_LEN + 16 {
            return None;
        }
        let (head, sealed) = ticket.split_at(NAME_BYTES + NONCE_LEN);
        let key = self.keys.iter().find(|k| k.name == head[..NAME_BYTES])?;
        let nonce = Nonce::try_assume_unique_for_key(&head[NAME_BYTES..]).ok()?;
        let mut buf = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(head), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

/// Shared for every configuration built from the same keys.
pub type Shared = Arc<SharedTicketer>;

/// Standard base64 (with or without padding); `None` for anything else.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    let body = text.trim_end_matches('=');
    if text.len() - body.len() > 2 {
        return None;
    }
    for c in body.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be zero padding of the last byte.
    if bits >= 6 || acc != 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(fill: u8) -> [u8; KEY_BYTES] {
        let mut k = [fill; KEY_BYTES];
        k[0] = fill.wrapping_add(1);
        k
    }

    fn line(k: &[u8]) -> String {
        crate::dev_ca::store::base64(k)
    }

    #[test]
    fn the_file_reads_as_haproxy_writes_it() {
        let text = format!("# rotated daily\n{}\n\n{}\n", line(&key(1)), line(&key(2)));
        assert_eq!(parse("f", &text).unwrap(), vec![key(1), key(2)]);
        assert!(parse("f", "").unwrap_err().contains("holds no key"));
        assert!(
            parse("f", "not base64!")
                .unwrap_err()
                .contains("line 1 is not base64")
        );
        let short = line(&[1u8; 48]);
        assert!(parse("f", &short).unwrap_err().contains("holds 48 bytes"));
    }

    #[test]
    fn the_second_to_last_seals_and_every_key_opens() {
        let one = ticketer(&[key(1)], b"").unwrap();
        let two = ticketer(&[key(1), key(2)], b"").unwrap();
        let ticket = one.encrypt(b"session").unwrap();
        assert_eq!(two.decrypt(&ticket).unwrap(), b"session");
        let ticket = two.encrypt(b"session").unwrap();
        assert_eq!(one.decrypt(&ticket).unwrap(), b"session");
        // A rotation of three keys, [1, 2, 3] -> [2, 3, 4]: mid-rotation,
        // replicas at either step open each other's tickets.
        let before = ticketer(&[key(1), key(2), key(3)], b"").unwrap();
        let after = ticketer(&[key(2), key(3), key(4)], b"").unwrap();
        let ticket = before.encrypt(b"session").unwrap();
        assert_eq!(after.decrypt(&ticket).unwrap(), b"session");
        let ticket = after.encrypt(b"session").unwrap();
        assert_eq!(before.decrypt(&ticket).unwrap(), b"session");
    }

    #[test]
    fn another_binding_or_a_tampered_ticket_does_not_open() {
        let a = ticketer(&[key(1)], b"client ca A").unwrap();
        let b = ticketer(&[key(1)], b"client ca B").unwrap();
        let mut ticket = a.encrypt(b"session").unwrap();
        assert!(b.decrypt(&ticket).is_none());
        assert!(a.decrypt(&ticket).is_some());
        let last = ticket.len() - 1;
        ticket[last] ^= 1;
        assert!(a.decrypt(&ticket).is_none());
        assert!(a.decrypt(b"short").is_none());
    }
}
