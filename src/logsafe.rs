//! Escaping what a client sends before it reaches a log line.
//!
//! SNI, ALPN and a client certificate's subject are chosen by whoever
//! connects. Written raw, a newline in one of them starts a forged log line
//! of the attacker's choosing, an ESC sequence rewrites a terminal, a quote
//! ends a quoted field early, and a bidirectional override reorders what a
//! reader sees. Every such character is written as a visible escape instead
//! (`\n`, `\x1b`, `\"`, `\\`, `\u{202e}`), and bytes that are not UTF-8 as
//! `\xNN`, so one connection is always exactly one line whose fields mean
//! what they say.

use std::fmt;

/// A peer-controlled value for a quoted field (`client_cert="..."`):
/// control characters, quotes, backslashes, invisible Unicode that moves
/// or breaks text, and bytes that are not UTF-8 are escaped.
pub fn quoted(bytes: &[u8]) -> Escaped<'_> {
    Escaped {
        bytes,
        space: false,
    }
}

/// A peer-controlled value for an unquoted field (`sni=...`): as
/// [`quoted`], and a space too (as `\x20`), which would otherwise start a
/// field the client made up (`sni=a end="ok"`).
pub fn bare(bytes: &[u8]) -> Escaped<'_> {
    Escaped { bytes, space: true }
}

/// A file path for a log line or the terminal, as [`quoted`]: a newline in
/// `XDG_DATA_HOME` or `--dev-ca-dir` cannot start a line of its own.
pub fn path(path: &std::path::Path) -> Escaped<'_> {
    use std::os::unix::ffi::OsStrExt;
    quoted(path.as_os_str().as_bytes())
}

/// Bytes written escaped by [`fmt::Display`]; made by [`quoted`] or
/// [`bare`], so escaping costs no allocation of its own.
#[derive(Clone, Copy)]
pub struct Escaped<'a> {
    bytes: &'a [u8],
    space: bool,
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.bytes.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '"' => f.write_str("\\\"")?,
                    '\\' => f.write_str("\\\\")?,
                    '\n' => f.write_str("\\n")?,
                    '\r' => f.write_str("\\r")?,
                    '\t' => f.write_str("\\t")?,
                    ' ' if self.space => f.write_str("\\x20")?,
                    c if c.is_ascii_control() => write!(f, "\\x{:02x}", u32::from(c))?,
                    c if c.is_control() || invisible(c) => write!(f, "\\u{{{:x}}}", u32::from(c))?,
                    c => fmt::Write::write_char(f, c)?,
                }
            }
            for byte in chunk.invalid() {
                write!(f, "\\x{byte:02x}")?;
            }
        }
        Ok(())
    }
}

/// Characters that print nothing yet break a line or reorder the text
/// around them: line and paragraph separators, zero-width characters,
/// bidirectional marks, embeddings, overrides and isolates, the BOM.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}'
            | '\u{feff}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(bytes: &[u8]) -> String {
        quoted(bytes).to_string()
    }

    #[test]
    fn ordinary_names_pass_unchanged() {
        assert_eq!(q(b"ws.example.com"), "ws.example.com");
        assert_eq!(q(b"http/1.1"), "http/1.1");
        assert_eq!(
            q("device 7 \u{e9}t\u{e9}".as_bytes()),
            "device 7 \u{e9}t\u{e9}"
        );
        assert_eq!(q("\u{65e5}\u{672c}".as_bytes()), "\u{65e5}\u{672c}");
        assert_eq!(q(b""), "");
    }

    #[test]
    fn line_breaks_and_terminal_escapes_become_visible() {
        assert_eq!(
            q(b"a\nINFO forged\r\tb"),
            "a\\nINFO forged\\r\\tb",
            "no raw newline may start a forged line"
        );
        assert_eq!(q(b"\x1b[2J\x00\x7f"), "\\x1b[2J\\x00\\x7f");
        // C1 controls (NEL among them) and Unicode line separators.
        assert_eq!(q("x\u{85}y\u{2028}z".as_bytes()), "x\\u{85}y\\u{2028}z");
    }

    #[test]
    fn quotes_and_backslashes_cannot_end_a_field_or_fake_an_escape() {
        assert_eq!(q(br#"a" end="ok"#), r#"a\" end=\"ok"#);
        assert_eq!(q(br"a\nb"), r"a\\nb");
    }

    #[test]
    fn reordering_and_invisible_characters_are_shown() {
        assert_eq!(q("evil\u{202e}gpj.exe".as_bytes()), "evil\\u{202e}gpj.exe");
        assert_eq!(q("a\u{200b}b\u{feff}".as_bytes()), "a\\u{200b}b\\u{feff}");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_written_as_hex() {
        // An ALPN protocol id is any bytes at all.
        assert_eq!(q(b"h2\xff\xfe"), "h2\\xff\\xfe");
        assert_eq!(q(b"\xc3"), "\\xc3", "a truncated sequence");
        assert_eq!(q(b"\xc3\xa9\x80"), "\u{e9}\\x80");
    }

    #[test]
    fn bare_fields_cannot_gain_a_field() {
        assert_eq!(bare(br#"a end="ok""#).to_string(), r#"a\x20end=\"ok\""#);
        assert_eq!(bare(b"ws.example.com").to_string(), "ws.example.com");
    }

    /// Every backslash starts one of the escapes above, and nothing else
    /// is a control character or a quote.
    fn well_formed(text: &str) -> bool {
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' if !matches!(chars.next(), Some('\\' | '"' | 'n' | 'r' | 't' | 'x' | 'u')) => {
                    return false;
                }
                '\\' => {}
                '"' => return false,
                c if c.is_control() || invisible(c) => return false,
                _ => {}
            }
        }
        true
    }

    #[test]
    fn nothing_dangerous_survives_any_byte_or_character() {
        for b in 0..=255u8 {
            for text in [quoted(&[b, b'x']).to_string(), bare(&[b]).to_string()] {
                assert!(well_formed(&text), "byte {b:#04x} escaped as {text:?}");
            }
        }
        for c in (0..=0x3000u32).filter_map(char::from_u32) {
            let text = quoted(c.to_string().as_bytes()).to_string();
            assert!(well_formed(&text), "{c:?} escaped as {text:?}");
        }
    }
}
