//! Password redaction, on values: never on serialised text. A connection string is
//! redacted where it is built into a field ([`url`]: `Target.display`, the smoke URL);
//! the text of a driver's error goes through [`text`] before it becomes a message; and,
//! as a last resort that cannot corrupt what it touches, [`value`] masks the exact
//! secrets the configuration and the environment hold ([`register_secret`],
//! [`register_in`]) in every string of a JSON document, and [`known_secrets`] in a line
//! for stderr. Ids, file names and messages are data: nothing here looks for
//! `password=` in them (a session folder named `password=x` is an ordinary id).

use std::sync::Mutex;

/// What a password is replaced with.
pub const MASK: &str = "***";

static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Remember a secret so that [`known_secrets`] and [`value`] replace it wherever it
/// appears, in its raw and percent-encoded forms. Secrets shorter than 4 bytes are only
/// redacted by position (in a URL or after `password=`), since replacing them
/// everywhere would mangle output.
pub fn register_secret(secret: &str) {
    if secret.len() < 4 {
        return;
    }
    let mut forms = vec![secret.to_owned(), percent_encode(secret)];
    if let Some(decoded) = percent_decode(secret) {
        forms.push(decoded);
    }
    // As it would stand inside a JSON string (a quote or a backslash escaped).
    forms.push(
        serde_json::to_string(secret)
            .map(|q| q[1..q.len() - 1].to_owned())
            .unwrap_or_default(),
    );
    let mut secrets = SECRETS.lock().unwrap_or_else(|p| p.into_inner());
    for f in forms {
        if f.len() >= 4 && !secrets.contains(&f) {
            secrets.push(f);
        }
    }
    // Longest first, so that a secret containing another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// Register every password a connection string holds, found by position: the URL's
/// userinfo, `?password=` (and `sslpassword`) in its query, or a keyword string's
/// `password=value` / `password='quoted \' value'`, raw and unescaped. Called on what
/// the environment and the config hold before anything parses it, so that a string the
/// driver then rejects still has its password masked wherever it turns up.
pub fn register_in(conn: &str) {
    for p in passwords_in(conn) {
        register_secret(&p);
    }
}

/// The passwords of a connection string, as written and decoded.
fn passwords_in(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(i) = s.find("://") {
        let rest = &s[i + 3..];
        let query_at = rest.find('?').unwrap_or(rest.len());
        if let Some(at) = rest[..query_at].rfind('@').or_else(|| rest.rfind('@')) {
            if let Some((_, pw)) = rest[..at].split_once(':') {
                out.push(pw.to_owned());
                out.extend(percent_decode(pw));
            }
        }
        if let Some(q) = rest[query_at..].strip_prefix('?') {
            for pair in q.split('&') {
                if let Some((k, v)) = pair.split_once('=') {
                    if is_secret_key(&percent_decode(k).unwrap_or_default()) {
                        out.push(v.to_owned());
                        out.extend(percent_decode(v));
                    }
                }
            }
        }
        return out;
    }
    // Keyword form: `key = value` pairs, values optionally single-quoted with escapes.
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let k0 = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' {
            i += 1;
        }
        let key = &s[k0..i];
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b.get(i) != Some(&b'=') {
            break;
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let v0 = i;
        let mut value = Vec::new();
        if b.get(i) == Some(&b'\'') {
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                value.push(b[i]);
                i += 1;
            }
            i = (i + 1).min(b.len());
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                value.push(b[i]);
                i += 1;
            }
        }
        if is_secret_key(key) {
            let raw = &s[v0..i];
            out.push(raw.to_owned());
            if let Some(inner) = raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
                out.push(inner.to_owned());
            }
            out.push(String::from_utf8_lossy(&value).into_owned());
        }
    }
    out
}

/// Mask every registered secret in `s` (see [`register_secret`]); nothing else is
/// touched. For lines bound for stderr.
pub fn known_secrets(s: &str) -> String {
    replace_secrets(s)
}

/// Mask every registered secret in every string (and object key) of `v`, in place; true
/// when something was masked. Working on the values, it cannot break the document.
pub fn value(v: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    let secrets = SECRETS.lock().unwrap_or_else(|p| p.into_inner());
    if secrets.is_empty() {
        return false;
    }
    fn mask(s: &str, secrets: &[String]) -> Option<String> {
        let mut out: Option<String> = None;
        for secret in secrets {
            let cur = out.as_deref().unwrap_or(s);
            if cur.contains(secret.as_str()) {
                out = Some(cur.replace(secret.as_str(), MASK));
            }
        }
        out
    }
    fn walk(v: &mut Value, secrets: &[String]) -> bool {
        match v {
            Value::String(s) => match mask(s, secrets) {
                Some(m) => {
                    *s = m;
                    true
                }
                None => false,
            },
            Value::Array(a) => a.iter_mut().fold(false, |c, x| walk(x, secrets) | c),
            Value::Object(o) => {
                let mut changed = false;
                if o.keys().any(|k| mask(k, secrets).is_some()) {
                    let old = std::mem::take(o);
                    for (k, x) in old {
                        o.insert(mask(&k, secrets).unwrap_or(k), x);
                    }
                    changed = true;
                }
                o.values_mut().fold(changed, |c, x| walk(x, secrets) | c)
            }
            _ => false,
        }
    }
    walk(v, &secrets)
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

/// Redact the free text of a driver's error (never data: an id or a file name would be
/// masked too): every URL in it, every `password=` keyword, every registered secret.
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

    #[test]
    fn passwords_are_found_by_position_and_registered() {
        assert_eq!(
            passwords_in("postgresql://u:pa%40ss@h/db?sslmode=require"),
            ["pa%40ss", "pa@ss"]
        );
        assert_eq!(
            passwords_in("postgresql://h/db?user=u&password=qpw1&x=1"),
            ["qpw1", "qpw1"]
        );
        assert_eq!(
            passwords_in("host=h password='a b\\' c' user=u"),
            ["'a b\\' c'", "a b\\' c", "a b' c"]
        );
        assert_eq!(passwords_in("host=h sslpassword=k3y7"), ["k3y7", "k3y7"]);
        register_in("host=h password='Kw-Esc\\'aped' user=u");
        assert_eq!(known_secrets("said: Kw-Esc'aped"), "said: ***");
    }

    #[test]
    fn values_are_masked_and_stay_json() {
        register_secret("Value-Secret-9");
        let mut v = serde_json::json!({
            "id": "password=x",
            "path": "/s/password=x/state.json",
            "msg": ["at Value-Secret-9 and \"Value-Secret-9\""],
            "Value-Secret-9": 1,
        });
        assert!(value(&mut v));
        let text = v.to_string();
        assert!(!text.contains("Value-Secret-9"), "{text}");
        assert_eq!(v["id"], "password=x", "an id is data");
        assert_eq!(v["path"], "/s/password=x/state.json");
        assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
        let mut plain = serde_json::json!({"id": "password=y"});
        assert!(!value(&mut plain));
    }
}
