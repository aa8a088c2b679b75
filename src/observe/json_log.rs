//! `--log-format json`: each log line as one JSON object, so Loki,
//! Elasticsearch or `jq` read it without a parse rule.
//!
//! Every line keeps its text as `msg`, with `ts`, `level` and `target`.
//! A line about a connection (it starts with `conn=`) also gets each of
//! its `key=value` fields as a member of its own, parsed from the very
//! text the text format prints, so the two formats can never disagree:
//! `to_backend` and `to_client` become numbers of bytes, `duration` a
//! number of seconds, `-` (nothing negotiated) `null`, and everything else
//! a string as the text line escapes it (peer-controlled values stay
//! escaped by `logsafe`).

use std::io::Write;

/// The env_logger format for `--log-format json`.
pub fn format(
    buf: &mut env_logger::fmt::Formatter,
    record: &log::Record<'_>,
) -> std::io::Result<()> {
    let msg = record.args().to_string();
    let mut line = String::with_capacity(msg.len() * 2 + 96);
    line.push_str("{\"ts\":\"");
    line.push_str(&buf.timestamp_millis().to_string());
    line.push_str("\",\"level\":\"");
    line.push_str(record.level().as_str());
    line.push_str("\",\"target\":");
    string(&mut line, record.target());
    if msg.starts_with("conn=") {
        for (key, value) in fields(&msg) {
            line.push_str(",\"");
            line.push_str(key);
            line.push_str("\":");
            typed(&mut line, key, value);
        }
    }
    line.push_str(",\"msg\":");
    string(&mut line, &msg);
    line.push('}');
    writeln!(buf, "{line}")
}

/// The leading `key=value` fields of a connection line, up to the first
/// word that is not one (values in quotes may hold spaces; `\"` inside
/// them does not end them). A key seen twice keeps its first value.
fn fields(msg: &str) -> Vec<(&str, &str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    let mut rest = msg;
    loop {
        rest = rest.trim_start_matches(' ');
        let Some(eq) = rest.find('=') else { break };
        let key = &rest[..eq];
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            break;
        }
        let after = &rest[eq + 1..];
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let bytes = quoted.as_bytes();
            let mut i = 0;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            let end = i.min(bytes.len());
            (&quoted[..end], quoted.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if !out.iter().any(|(k, _)| *k == key) {
            out.push((key, value));
        }
        if next.is_empty() {
            break;
        }
        rest = next;
    }
    out
}

/// A field's value, typed by its key.
fn typed(line: &mut String, key: &str, value: &str) {
    let number = match key {
        "to_backend" | "to_client" => value.strip_suffix('B'),
        "duration" => value.strip_suffix('s'),
        _ => None,
    };
    match number {
        Some(n) if n.parse::<f64>().is_ok() => line.push_str(n),
        _ if value == "-" => line.push_str("null"),
        _ => string(line, value),
    }
}

/// A JSON string.
fn string(line: &mut String, s: &str) {
    line.push('"');
    for c in s.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                line.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_line_splits_into_its_fields() {
        let msg = r#"conn=1f peer=127.0.0.1:5000 sni=a\x20b tls=TLSv1.3 alpn=- client_cert="CN \"x\"" to_backend=10B duration=0.012s end="client closed""#;
        let got = fields(msg);
        assert_eq!(
            got,
            vec![
                ("conn", "1f"),
                ("peer", "127.0.0.1:5000"),
                ("sni", r"a\x20b"),
                ("tls", "TLSv1.3"),
                ("alpn", "-"),
                ("client_cert", r#"CN \"x\""#),
                ("to_backend", "10B"),
                ("duration", "0.012s"),
                ("end", "client closed"),
            ]
        );
        let mut line = String::new();
        typed(&mut line, "to_backend", "10B");
        typed(&mut line, "duration", "0.012s");
        typed(&mut line, "alpn", "-");
        typed(&mut line, "client_cert", r#"CN \"x\""#);
        assert_eq!(line, r#"100.012null"CN \\\"x\\\"""#);
    }
}
