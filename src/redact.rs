//! Password redaction. Every output path (reports, the stderr summary, tracing, errors,
//! `Debug` of connection settings) goes through [`text`], so a password never reaches
//! any output: connection URLs lose their password, `password=` keywords lose their
//! value, and every secret the configuration resolved is replaced wherever it appears.

use std::sync::Mutex;

/// What a password is replaced with.
pub const MASK: &str = "***";

static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Remember a secret so that [`text`] replaces it wherever it appears, in its raw and
/// percent-encoded forms. Secrets shorter than 4 bytes are only redacted by position
/// (in a URL or after `password=`), since replacing them everywhere would mangle output.
pub fn register_secret(secret: &str) {
    if secret.len() < 4 {
        return;
    }
    let mut forms = vec![secret.to_owned(), percent_encode(secret)];
    if let Some(decoded) = percent_decode(secret) {
        forms.push(decoded);
    }
    let mut secrets = SECRETS.lock().unwrap_or_else(|p| p.into_inner());
    for f in forms {
        if f.len() >= 4 && !secrets.contains(&f) {
            secrets.push(f);
        }
    }
    // Longest first, so that a secret containing another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// Redact a connection string: a URL (`scheme://user:password@host/db?password=...`)
/// or a libpq keyword string (`host=h password=secret`).
pub fn url(s: &str) -> String {
    let out = if let Some(i) = s.find("://") {
        redact_url_at(s, i)
    } else {
        redact_keywords(s)
    };
    replace_secrets(&out)
}

/// Redact free text: every URL in it, every `password=` keyword, every registered secret.
pub fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    // URLs inside text end at whitespace or a quote.
    while let Some(i) = rest.find("://") {
        let start = rest[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '.' || c == '-'))
            .map_or(0, |p| p + 1);
        let end = rest[i..]
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '`')
            .map_or(rest.len(), |p| i + p);
        out.push_str(&rest[..start]);
        out.push_str(&redact_url_at(&rest[start..end], i - start));
        rest = &rest[end..];
    }
    out.push_str(rest);
    replace_secrets(&redact_keywords(&out))
}

fn replace_secrets(s: &str) -> String {
    let secrets = SECRETS.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = s.to_owned();
    for secret in secrets.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), MASK);
        }
    }
    out
}

/// `s[sep..]` starts with "://".
fn redact_url_at(s: &str, sep: usize) -> String {
    let head = &s[..sep + 3];
    let rest = &s[sep + 3..];
    // The userinfo ends at the last '@' before the query; a password may hold a raw '@'.
    let query_at = rest.find('?').unwrap_or(rest.len());
    let at = rest[..query_at].rfind('@').or_else(|| rest.rfind('@'));
    let (authority_and_path, query) = match at {
        Some(at) => {
            let userinfo = &rest[..at];
            let after = &rest[at..];
            let user = match userinfo.find(':') {
                Some(c) => format!("{}:{MASK}", &userinfo[..c]),
                None => userinfo.to_owned(),
            };
            let q = after.find('?').unwrap_or(after.len());
            (format!("{user}{}", &after[..q]), &after[q..])
        }
        None => (rest[..query_at].to_owned(), &rest[query_at..]),
    };
    format!("{head}{authority_and_path}{}", redact_query(query))
}

fn redact_query(q: &str) -> String {
    if q.is_empty() {
        return String::new();
    }
    let mut out = String::from("?");
    for (n, pair) in q[1..].split('&').enumerate() {
        if n > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((k, _)) if is_secret_key(k) => {
                out.push_str(k);
                out.push('=');
                out.push_str(MASK);
            }
            _ => out.push_str(pair),
        }
    }
    out
}

fn is_secret_key(k: &str) -> bool {
    let k = k.trim().to_ascii_lowercase();
    k == "password" || k == "sslpassword" || k == "pass" || k == "pwd"
}

/// Redact `password=value` (and `sslpassword=`) wherever it appears; the value may be
/// single-quoted with backslash escapes, as libpq allows.
fn redact_keywords(s: &str) -> String {
    let lower = s.to_ascii_lowercase();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let found = ["sslpassword", "password"]
            .iter()
            .filter_map(|k| lower[i..].find(k).map(|p| (i + p, k.len())))
            .min();
        let Some((p, klen)) = found else { break };
        // Must be a whole keyword followed by optional spaces and '='.
        let before_ok = p == 0 || !s.as_bytes()[p - 1].is_ascii_alphanumeric();
        let mut j = p + klen;
        while j < s.len() && s.as_bytes()[j] == b' ' {
            j += 1;
        }
        if !before_ok || j >= s.len() || s.as_bytes()[j] != b'=' {
            out.push_str(&s[i..p + klen]);
            i = p + klen;
            continue;
        }
        j += 1;
        while j < s.len() && s.as_bytes()[j] == b' ' {
            j += 1;
        }
        out.push_str(&s[i..j]);
        out.push_str(MASK);
        // Skip the value.
        let bytes = s.as_bytes();
        if j < s.len() && bytes[j] == b'\'' {
            j += 1;
            while j < s.len() && bytes[j] != b'\'' {
                if bytes[j] == b'\\' {
                    j += 1;
                }
                j += 1;
            }
            j = (j + 1).min(s.len());
        } else {
            while j < s.len() && !bytes[j].is_ascii_whitespace() && bytes[j] != b'&' {
                j += 1;
            }
        }
        i = j;
    }
    if i < s.len() {
        out.push_str(&s[i..]);
    }
    out
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decode `%XX` escapes; `None` when the result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(input: &str, secret: &str) -> String {
        let r = url(input);
        assert!(!r.contains(secret), "{input} -> {r}");
        r
    }

    #[test]
    fn url_forms() {
        assert_eq!(
            clean("postgres://app:s3cr3tpw@db:5432/app", "s3cr3tpw"),
            "postgres://app:***@db:5432/app"
        );
        assert_eq!(
            clean("postgresql+asyncpg://app:pa@ss:wd@db/app", "pa@ss:wd"),
            "postgresql+asyncpg://app:***@db/app"
        );
        assert_eq!(
            clean(
                "postgresql://app:pa%40ss%3Aw@db/app?sslmode=require",
                "pa%40ss"
            ),
            "postgresql://app:***@db/app?sslmode=require"
        );
        assert_eq!(
            clean("postgresql://:emptyuserpw@db/app", "emptyuserpw"),
            "postgresql://:***@db/app"
        );
        assert_eq!(
            clean(
                "postgresql://db/app?user=u&password=qu3ry&sslmode=disable",
                "qu3ry"
            ),
            "postgresql://db/app?user=u&password=***&sslmode=disable"
        );
        assert_eq!(
            clean("postgresql://user@db/app", "zzz"),
            "postgresql://user@db/app"
        );
        assert_eq!(clean("postgresql://db", "zzz"), "postgresql://db");
        assert_eq!(
            clean("sqlite:///data/app.db", "zzz"),
            "sqlite:///data/app.db"
        );
    }

    #[test]
    fn keyword_forms() {
        assert_eq!(
            clean("host=db port=5432 password=kw0rd user=app", "kw0rd"),
            "host=db port=5432 password=*** user=app"
        );
        assert_eq!(
            clean(
                "host=db password='with space \\' quote' dbname=x",
                "with space"
            ),
            "host=db password=*** dbname=x"
        );
        assert_eq!(
            clean("password = spaced user=u", "spaced"),
            "password = *** user=u"
        );
        assert_eq!(
            clean("host=db sslpassword=k3y", "k3y"),
            "host=db sslpassword=***"
        );
    }

    #[test]
    fn free_text() {
        let t =
            text("error connecting to \"postgres://u:hunter2x@h/db\": refused; password=abc123 x");
        assert!(!t.contains("hunter2x") && !t.contains("abc123"), "{t}");
        assert!(t.contains("postgres://u:***@h/db"));
    }

    #[test]
    fn registered_secret_anywhere() {
        register_secret("Registered-Secret!");
        let t = text("the server said: Registered-Secret! and Registered-Secret%21");
        assert!(!t.contains("Registered-Secret"), "{t}");
    }
}
