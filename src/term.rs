//! What reaches the operator's terminal. Ids and file names can hold anything: an escape
//! sequence would colour or rewrite the terminal, a carriage return or a newline would
//! forge a log line. [`escape`] makes any text one inert line. It is applied where data
//! is formatted for stderr (each field of the summary) and, by the log writer, to each
//! log line but its final newline, so that the tool's own line structure stays and
//! nothing in the data can add to it. Reports keep the exact values: JSON escapes them.

use std::borrow::Cow;
use std::fmt::Write;
use std::path::Path;

/// `s` with every control character (C0, DEL, C1) and every Unicode control that
/// reorders or breaks a line (bidirectional overrides and isolates, the line and
/// paragraph separators) written as an escape: `\n`, `\r`, `\t`, `\x1b`, `\u{202e}`.
/// Text without them comes back as it is.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) && (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}'
        )
}

/// One line as the log formatter writes it: [`escape`]d, but for its final newline.
pub fn escape_line(s: &str) -> Cow<'_, str> {
    let Some(body) = s.strip_suffix('\n') else {
        return escape(s);
    };
    match escape(body) {
        Cow::Borrowed(_) => Cow::Borrowed(s),
        Cow::Owned(mut o) => {
            o.push('\n');
            Cow::Owned(o)
        }
    }
}

/// A path for a message: its bytes that are not UTF-8 written as `\xNN` (where
/// `Path::display` would put U+FFFD and lose them), the rest as it is. Control
/// characters are left for [`escape`] at the terminal; the report keeps them exact.
pub fn path(p: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for chunk in p.as_os_str().as_bytes().utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_cannot_reach_the_terminal_raw() {
        assert_eq!(escape("plain é 日本"), "plain é 日本");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        assert_eq!(escape("a\x1b[31mb"), "a\\x1b[31mb");
        assert_eq!(escape("x\r\nFORGED"), "x\\r\\nFORGED");
        assert_eq!(escape("\u{9b}2J\u{7f}\t"), "\\x9b2J\\x7f\\t");
        assert_eq!(escape("ab\u{202e}cd\u{2028}"), "ab\\u{202e}cd\\u{2028}");
        assert_eq!(escape_line("warn a\nb\n"), "warn a\\nb\n");
        assert_eq!(escape_line("ok line\n"), "ok line\n");
        use std::os::unix::ffi::OsStrExt;
        let p = Path::new(std::ffi::OsStr::from_bytes(b"/s/bad\xff\xfe/state.json"));
        assert_eq!(path(p), "/s/bad\\xff\\xfe/state.json");
    }
}
