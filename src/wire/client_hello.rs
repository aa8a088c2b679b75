//! TEMPORARY STUB (replaced by the helper's parser).
pub const MAX_HELLO: usize = 16 * 1024;
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub records_len: usize,
    pub legacy_version: u16,
    pub server_name: Option<String>,
    pub alpn: Vec<Vec<u8>>,
    pub offers_tls13: bool,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    Incomplete { at_least: usize },
    NotClientHello,
    TooLarge,
    Malformed(&'static str),
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertDescription {
    DecodeError = 50,
    UnrecognizedName = 112,
    RecordOverflow = 22,
    UnexpectedMessage = 10,
    InternalError = 80,
    ProtocolVersion = 70,
    HandshakeFailure = 40,
    NoApplicationProtocol = 120,
}
pub fn fatal_alert(d: AlertDescription) -> [u8; 7] {
    [0x15, 3, 3, 0, 2, 2, d as u8]
}
pub fn parse(input: &[u8]) -> Result<Hello, Error> {
    let mut msg = Vec::new();
    let mut at = 0;
    loop {
        let Some(h) = input.get(at..at + 5) else {
            return Err(Error::Incomplete { at_least: at + 5 });
        };
        if h[0] != 0x16 {
            return Err(if at == 0 {
                Error::NotClientHello
            } else {
                Error::Malformed("x")
            });
        }
        let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        if len == 0 || len > 16384 {
            return Err(Error::Malformed("record length"));
        }
        let Some(body) = input.get(at + 5..at + 5 + len) else {
            return Err(Error::Incomplete {
                at_least: at + 5 + len,
            });
        };
        msg.extend_from_slice(body);
        at += 5 + len;
        if msg.len() >= 4 {
            if msg[0] != 1 {
                return Err(Error::NotClientHello);
            }
            let n = (usize::from(msg[1]) << 16) | (usize::from(msg[2]) << 8) | usize::from(msg[3]);
            if n > MAX_HELLO {
                return Err(Error::TooLarge);
            }
            if msg.len() >= 4 + n {
                let mut h = body_of(&msg[4..4 + n]).ok_or(Error::Malformed("body"))?;
                h.records_len = at;
                return Ok(h);
            }
        }
    }
}
fn body_of(b: &[u8]) -> Option<Hello> {
    let u16at = |b: &[u8], i: usize| -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([
            *b.get(i)?,
            *b.get(i + 1)?,
        ])))
    };
    let ver = u16at(b, 0)? as u16;
    let mut i = 34;
    i += 1 + usize::from(*b.get(i)?);
    i += 2 + u16at(b, i)?;
    i += 1 + usize::from(*b.get(i)?);
    let mut hello = Hello {
        records_len: 0,
        legacy_version: ver,
        server_name: None,
        alpn: vec![],
        offers_tls13: false,
    };
    if i == b.len() {
        return Some(hello);
    }
    let end = i + 2 + u16at(b, i)?;
    i += 2;
    let ext = b.get(i..end)?;
    let mut j = 0;
    while j < ext.len() {
        let t = u16at(ext, j)?;
        let l = u16at(ext, j + 2)?;
        let d = ext.get(j + 4..j + 4 + l)?;
        j += 4 + l;
        match t {
            0 => {
                let nl = u16at(d, 3)?;
                let n = d.get(5..5 + nl)?;
                let n = std::str::from_utf8(n)
                    .ok()?
                    .trim_end_matches('.')
                    .to_ascii_lowercase();
                if n.parse::<std::net::IpAddr>().is_err() {
                    hello.server_name = Some(n);
                }
            }
            16 => {
                let mut k = 2;
                while k < d.len() {
                    let pl = usize::from(d[k]);
                    hello.alpn.push(d.get(k + 1..k + 1 + pl)?.to_vec());
                    k += 1 + pl;
                }
            }
            43 => {
                hello.offers_tls13 = d.get(1..)?.chunks(2).any(|c| c == [3, 4]);
            }
            _ => {}
        }
    }
    Some(hello)
}
