//! JSON the way PostgreSQL 15's `jsonb` sees it: [`canonicalize`] accepts exactly the
//! documents `jsonb_in` accepts and returns exactly the text `jsonb::text` prints, so a
//! state's canonical text and hash ([`hash_canonical`]) can be computed on either side of
//! the migration without asking the server. [`parse`] reads the deprecated JSON store file
//! into a tree that keeps byte spans into the input.
//!
//! What PostgreSQL 15 does, checked against a running 15.18 server (`tests/it/canon.rs`
//! compares thousands of random documents):
//!
//! - Grammar: RFC 8259. Whitespace is space, tab, LF and CR only; any scalar may stand at
//!   the top; raw control characters (< 0x20) inside strings and trailing text are errors.
//!   The input must be valid UTF-8 (text input checks the encoding before parsing).
//! - Strings: escapes are decoded, surrogate pairs combine, a lone surrogate is an error and
//!   so is `\u0000` (in keys too). The output escapes `"`, `\`, `\b`, `\f`, `\n`, `\r`, `\t`
//!   and other bytes below 0x20 as `\u00xx` (lowercase hex); everything else, `/`, DEL and
//!   non-ASCII included, is printed raw.
//! - Objects: the last of duplicate keys wins; keys are ordered shorter first, then
//!   bytewise. Output is `{"a": 1, "bb": [1, 2]}`, with `{}` and `[]` when empty.
//! - Numbers are `numeric`: `numeric_in` keeps every digit and a display scale of
//!   (digits after the point) - (exponent), floored at 0; `numeric_out` prints that without
//!   an exponent, so `1e2` is `100`, `1.5e1` is `15`, `100e-1` is `10.0`, `-0.0` is `0.0`.
//!   It refuses ("value overflows numeric format") an exponent of magnitude 1073741823
//!   (`INT_MAX / 2`) or more, a display scale above 16383, and a value whose leading digit
//!   sits at 10^131072 or beyond (weight above 32767 base-10000 digits). `1e1001` and
//!   `0e1073741822` are accepted.
//! - Size: an array may hold at most 2^24 elements and an object 2^23 members, duplicates
//!   included (the next doubling of the parser's array would pass PostgreSQL's 1 GB
//!   allocation limit), and every container's binary form must fit in 2^28 - 1 bytes.
//!   [`canonicalize`] computes that binary layout (alignment padding, numeric headers)
//!   exactly. The printed text must also stay under 1 GB (from PostgreSQL's source; this
//!   one is not exercised against a server).
//! - Depth: PostgreSQL has no nesting limit of its own. Its parser and then its binary
//!   encoder recurse, and fail with "stack depth limit exceeded" past `max_stack_depth`
//!   (2 MB by default). Per level an array costs about 144 bytes of stack and an object
//!   about 160 (the measured ratio is 9:10); what counts is the cost of a value's enclosing
//!   containers (keys are not counted). How much stack is
//!   left depends on the calling context: with the default setting a 15.18 server accepted
//!   at most 14,521 (PL/pgSQL), 14,534 (`unnest($1::text[]::jsonb[])`), 14,541
//!   (`SELECT $1::text::jsonb`) or 14,545 (`INSERT ... unnest($1::text[])`) nested arrays
//!   around a scalar, and 13,070 to 13,092 nested objects. [`DEPTH_BUDGET`] stays about 1%
//!   below all of these, so whatever we accept PostgreSQL builds in any of those contexts;
//!   documents within that 1% band are refused although a server would take them.

use std::cell::RefCell;
use std::ops::Range;

use sha2::{Digest, Sha256};

/// A state document whose raw text exceeds this many bytes is [`JsonError::TooLarge`]
/// (jsonb's own limit is about 256 MiB of its binary form).
pub const MAX_STATE_BYTES: usize = 255 * 1024 * 1024;

/// `jsonb::text` fails when the printed text reaches PostgreSQL's 1 GB allocation limit
/// (`MaxAllocSize` less the text header); past this, [`canonicalize`] refuses.
pub const MAX_CANONICAL_BYTES: usize = 0x3fff_ffff - 4;

/// Most elements one array may hold (PostgreSQL's parser doubles its element array and
/// the doubling past this would allocate 1 GB).
pub const MAX_ARRAY_ELEMENTS: usize = 1 << 24;

/// Most members one object may hold before duplicates are removed (same reason).
pub const MAX_OBJECT_MEMBERS: usize = 1 << 23;

/// The largest file [`parse`] reads (its offsets are 32-bit internally).
pub const MAX_PARSE_BYTES: usize = u32::MAX as usize;

/// Largest binary size of one jsonb container (`JENTRY_OFFLENMASK`).
pub const MAX_CONTAINER_BYTES: u64 = 0x0fff_ffff;

/// The stack PostgreSQL spends per nesting level, in units of 16 bytes: an array level
/// costs [`ARRAY_LEVEL_COST`], an object level [`OBJECT_LEVEL_COST`].
pub const ARRAY_LEVEL_COST: u32 = 9;
/// See [`ARRAY_LEVEL_COST`].
pub const OBJECT_LEVEL_COST: u32 = 10;

/// A value whose enclosing containers cost more than this is [`JsonError::TooDeep`]:
/// 14,400 arrays or 12,960 objects deep, about 1% short of what PostgreSQL 15 builds with
/// the default `max_stack_depth` (see the module documentation).
pub const DEPTH_BUDGET: u32 = ARRAY_LEVEL_COST * 14_400;

/// Why a state document would be refused by PostgreSQL's jsonb (or by us).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("invalid UTF-8 at byte {offset}")]
    InvalidUtf8 { offset: usize },

    #[error("invalid JSON at line {line}, column {column} (byte {offset}): {message}")]
    Syntax {
        offset: usize,
        line: usize,
        column: usize,
        message: String,
    },

    #[error("\\u0000 at byte {offset}: jsonb cannot store a NUL character")]
    Nul { offset: usize },

    #[error("unpaired UTF-16 surrogate escape at byte {offset}")]
    LoneSurrogate { offset: usize },

    #[error("number at byte {offset} is out of range for numeric: {message}")]
    NumberOutOfRange { offset: usize, message: String },

    #[error("document is {bytes} bytes, over the limit of {limit}")]
    TooLarge { bytes: usize, limit: usize },

    #[error(
        "value at byte {offset} is nested {depth} deep, past what jsonb can build within PostgreSQL's default stack depth"
    )]
    TooDeep { offset: usize, depth: usize },

    #[error("{what} at byte {offset} is over jsonb's limit: {message}")]
    JsonbLimit {
        offset: usize,
        what: &'static str,
        message: String,
    },
}

impl JsonError {
    /// The stable report code (SPEC §6).
    pub fn code(&self) -> &'static str {
        match self {
            JsonError::InvalidUtf8 { .. } => "invalid_utf8",
            JsonError::Syntax { .. }
            | JsonError::LoneSurrogate { .. }
            | JsonError::NumberOutOfRange { .. } => "invalid_json",
            JsonError::Nul { .. } => "jsonb_incompatible_nul",
            JsonError::TooLarge { .. }
            | JsonError::TooDeep { .. }
            | JsonError::JsonbLimit { .. } => "too_large",
        }
    }

    /// The byte offset the error points at, where there is one.
    pub fn offset(&self) -> Option<usize> {
        match self {
            JsonError::InvalidUtf8 { offset }
            | JsonError::Syntax { offset, .. }
            | JsonError::Nul { offset }
            | JsonError::LoneSurrogate { offset }
            | JsonError::NumberOutOfRange { offset, .. }
            | JsonError::TooDeep { offset, .. }
            | JsonError::JsonbLimit { offset, .. } => Some(*offset),
            JsonError::TooLarge { .. } => None,
        }
    }
}

/// Validate `raw` and return exactly the text PostgreSQL prints for `raw::jsonb::text`.
pub fn canonicalize(raw: &[u8]) -> Result<String, JsonError> {
    canonicalize_with_size(raw).map(|c| c.text)
}

/// A canonical document and the size of its jsonb datum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical {
    /// Exactly what `raw::jsonb::text` prints.
    pub text: String,
    /// `pg_column_size(raw::jsonb)` before any compression: the binary form's size.
    pub jsonb_bytes: usize,
}

/// [`canonicalize`], also returning the size of the jsonb datum PostgreSQL would build.
pub fn canonicalize_with_size(raw: &[u8]) -> Result<Canonical, JsonError> {
    if raw.len() > MAX_STATE_BYTES {
        return Err(JsonError::TooLarge {
            bytes: raw.len(),
            limit: MAX_STATE_BYTES,
        });
    }
    let src = utf8(raw)?;
    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        scratch.clear();
        let result = build(src, &mut scratch).and_then(|()| emit(src, &scratch));
        scratch.trim();
        result
    })
}

/// Versioned content hash: "v1:" + lowercase hex SHA-256 of the canonical text bytes.
pub fn hash_canonical(canonical: &str) -> String {
    format!("v1:{}", hex::encode(Sha256::digest(canonical.as_bytes())))
}

/// A parsed JSON value. Objects keep all members in input order, duplicates too.
/// `Debug` and `PartialEq` recurse, so keep them for shallow values; dropping does not.
#[derive(Debug, PartialEq, Eq)]
pub enum Node {
    Null,
    Bool(bool),
    /// The number's text in the input (grammar checked, range not).
    Number {
        text_span: Range<usize>,
    },
    String(String),
    Array(Vec<Spanned>),
    Object(Vec<(String, Spanned)>),
}

/// A value and the byte span of its text in the input.
#[derive(Debug, PartialEq, Eq)]
pub struct Spanned {
    pub node: Node,
    pub span: Range<usize>,
}

impl Spanned {
    /// The value's own text in `raw`, the input it was parsed from.
    pub fn text<'a>(&self, raw: &'a [u8]) -> &'a [u8] {
        &raw[self.span.clone()]
    }

    /// Take the node and span apart (`Spanned` has a `Drop`, so it cannot be destructured).
    pub fn into_parts(mut self) -> (Node, Range<usize>) {
        let node = std::mem::replace(&mut self.node, Node::Null);
        (node, self.span.clone())
    }

    /// The first member named `key`, if this is an object.
    pub fn get(&self, key: &str) -> Option<&Spanned> {
        match &self.node {
            Node::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

impl Drop for Spanned {
    /// Tear the tree down with a heap stack: a deeply nested document would otherwise
    /// overflow the thread's stack in the compiler's recursive drop glue.
    fn drop(&mut self) {
        fn take_children(node: &mut Node, pending: &mut Vec<Spanned>) {
            match node {
                Node::Array(items) => pending.append(items),
                Node::Object(members) => pending.extend(members.drain(..).map(|(_, v)| v)),
                _ => {}
            }
        }
        if !matches!(self.node, Node::Array(_) | Node::Object(_)) {
            return;
        }
        let mut pending = Vec::new();
        take_children(&mut self.node, &mut pending);
        while let Some(mut child) = pending.pop() {
            take_children(&mut child.node, &mut pending);
        }
    }
}

/// Parse `raw` into a tree of [`Spanned`] values, for reading the deprecated JSON store
/// file. The grammar and the UTF-8 check are [`canonicalize`]'s; unlike it, `parse` has no
/// depth limit, takes files up to 4 GiB ([`MAX_PARSE_BYTES`]), leaves numbers unchecked
/// beyond their grammar and accepts `\u0000` (a Rust `String` holds it): a record's `state`
/// is judged by calling [`canonicalize`] on its span, so one bad state does not make the
/// file unreadable. A lone surrogate escape is an error here too, because a `String`
/// cannot hold it.
pub fn parse(raw: &[u8]) -> Result<Spanned, JsonError> {
    if raw.len() > MAX_PARSE_BYTES {
        return Err(JsonError::TooLarge {
            bytes: raw.len(),
            limit: MAX_PARSE_BYTES,
        });
    }
    let src = utf8(raw)?;
    let mut lx = Lexer::new(src);
    let mut decoded = String::new();
    let mut open: Vec<Partial> = Vec::new();
    'value: loop {
        lx.skip_ws();
        let start = lx.pos;
        let node = match lx.peek() {
            Some(b'[') => {
                lx.pos += 1;
                lx.skip_ws();
                if lx.eat(b']') {
                    Node::Array(Vec::new())
                } else {
                    open.push(Partial::Array {
                        start,
                        items: Vec::new(),
                    });
                    continue 'value;
                }
            }
            Some(b'{') => {
                lx.pos += 1;
                lx.skip_ws();
                if lx.eat(b'}') {
                    Node::Object(Vec::new())
                } else {
                    let key = parse_key(&mut lx, src, &mut decoded)?;
                    open.push(Partial::Object {
                        start,
                        members: Vec::new(),
                        key,
                    });
                    continue 'value;
                }
            }
            Some(b'"') => {
                decoded.clear();
                let s = lx.string(&mut decoded, Nul::Allow)?;
                Node::String(s.as_str(src, &decoded).to_owned())
            }
            Some(b'-' | b'0'..=b'9') => {
                lx.number()?;
                Node::Number {
                    text_span: start..lx.pos,
                }
            }
            Some(b't') => lx.literal(b"true").map(|()| Node::Bool(true))?,
            Some(b'f') => lx.literal(b"false").map(|()| Node::Bool(false))?,
            Some(b'n') => lx.literal(b"null").map(|()| Node::Null)?,
            _ => return Err(lx.expected_value()),
        };
        let mut done = Spanned {
            node,
            span: start..lx.pos,
        };
        loop {
            let Some(top) = open.last_mut() else {
                lx.skip_ws();
                lx.end()?;
                return Ok(done);
            };
            match top {
                Partial::Array { items, .. } => items.push(done),
                Partial::Object { members, key, .. } => {
                    members.push((std::mem::take(key), done));
                }
            }
            lx.skip_ws();
            match (&mut *top, lx.peek()) {
                (_, Some(b',')) => {
                    lx.pos += 1;
                    if let Partial::Object { key, .. } = top {
                        lx.skip_ws();
                        *key = parse_key(&mut lx, src, &mut decoded)?;
                    }
                    continue 'value;
                }
                (Partial::Array { .. }, Some(b']')) | (Partial::Object { .. }, Some(b'}')) => {
                    lx.pos += 1;
                    let node = match open.pop() {
                        Some(Partial::Array { start, items }) => Spanned {
                            node: Node::Array(items),
                            span: start..lx.pos,
                        },
                        Some(Partial::Object { start, members, .. }) => Spanned {
                            node: Node::Object(members),
                            span: start..lx.pos,
                        },
                        None => unreachable!("a container is open"),
                    };
                    done = node;
                }
                (Partial::Array { .. }, _) => return Err(lx.syntax("expected ',' or ']'")),
                (Partial::Object { .. }, _) => return Err(lx.syntax("expected ',' or '}'")),
            }
        }
    }
}

enum Partial {
    Array {
        start: usize,
        items: Vec<Spanned>,
    },
    Object {
        start: usize,
        members: Vec<(String, Spanned)>,
        key: String,
    },
}

fn parse_key(lx: &mut Lexer<'_>, src: &str, decoded: &mut String) -> Result<String, JsonError> {
    if lx.peek() != Some(b'"') {
        return Err(lx.syntax("expected a string key"));
    }
    decoded.clear();
    let key = lx
        .string(decoded, Nul::Allow)?
        .as_str(src, decoded)
        .to_owned();
    lx.skip_ws();
    if !lx.eat(b':') {
        return Err(lx.syntax("expected ':'"));
    }
    Ok(key)
}

fn utf8(raw: &[u8]) -> Result<&str, JsonError> {
    std::str::from_utf8(raw).map_err(|e| JsonError::InvalidUtf8 {
        offset: e.valid_up_to(),
    })
}

// ---------------------------------------------------------------------------------------
// Lexing, shared by `canonicalize` and `parse`.

/// Whether `\u0000` is an error (jsonb) or decoded (the store file reader).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Nul {
    Reject,
    Allow,
}

/// A lexed string: its text in the input when it had no escapes (then it is also its own
/// `escape_json` form), else its decoded text in the scratch arena.
#[derive(Clone, Copy)]
struct Str {
    start: u32,
    len: u32,
    decoded: bool,
}

impl Str {
    fn as_str<'a>(self, src: &'a str, arena: &'a str) -> &'a str {
        let (start, end) = (self.start as usize, (self.start + self.len) as usize);
        if self.decoded {
            &arena[start..end]
        } else {
            &src[start..end]
        }
    }
}

/// What lexing a number found, for the range check and the printer.
struct Number {
    negative: bool,
    int: Range<usize>,
    frac: Range<usize>,
    /// The exponent, saturated to +-2^40 (anything that large is refused anyway).
    exponent: Option<i64>,
}

struct Lexer<'a> {
    s: &'a str,
    b: &'a [u8],
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn new(s: &'a str) -> Self {
        Lexer {
            s,
            b: s.as_bytes(),
            pos: 0,
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    #[inline]
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    #[inline]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.pos) {
            self.pos += 1;
        }
    }

    fn end(&self) -> Result<(), JsonError> {
        if self.pos == self.b.len() {
            Ok(())
        } else {
            Err(self.syntax("unexpected text after the JSON value"))
        }
    }

    fn syntax(&self, message: &str) -> JsonError {
        syntax_at(self.b, self.pos, message)
    }

    fn expected_value(&self) -> JsonError {
        match self.peek() {
            None => self.syntax("unexpected end of input, expected a JSON value"),
            Some(_) => self.syntax("expected a JSON value"),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), JsonError> {
        if self.b[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.syntax("invalid literal (expected true, false or null)"))
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?` starting at `pos`.
    fn number(&mut self) -> Result<Number, JsonError> {
        let negative = self.eat(b'-');
        let int_start = self.pos;
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.syntax("expected a digit")),
        }
        let int = int_start..self.pos;
        let mut frac = self.pos..self.pos;
        if self.eat(b'.') {
            let start = self.pos;
            self.digits();
            if self.pos == start {
                return Err(self.syntax("expected a digit after the decimal point"));
            }
            frac = start..self.pos;
        }
        let mut exponent = None;
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            let negative = match self.peek() {
                Some(b'-') => {
                    self.pos += 1;
                    true
                }
                Some(b'+') => {
                    self.pos += 1;
                    false
                }
                _ => false,
            };
            let start = self.pos;
            self.digits();
            if self.pos == start {
                return Err(self.syntax("expected a digit in the exponent"));
            }
            let magnitude = self.b[start..self.pos].iter().fold(0i64, |acc, &d| {
                (acc * 10 + i64::from(d - b'0')).min(1 << 40)
            });
            exponent = Some(if negative { -magnitude } else { magnitude });
        }
        Ok(Number {
            negative,
            int,
            frac,
            exponent,
        })
    }

    #[inline]
    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.b.get(self.pos) {
            self.pos += 1;
        }
    }

    /// A string whose opening quote is at `pos`. Escapes are decoded into `arena`.
    fn string(&mut self, arena: &mut String, nul: Nul) -> Result<Str, JsonError> {
        self.pos += 1;
        let start = self.pos;
        let stop = scan_plain(self.b, start);
        match self.b.get(stop) {
            Some(b'"') => {
                self.pos = stop + 1;
                return Ok(Str {
                    start: start as u32,
                    len: (stop - start) as u32,
                    decoded: false,
                });
            }
            Some(b'\\') => {}
            Some(_) => {
                self.pos = stop;
                return Err(self.syntax("control character in string (escape it)"));
            }
            None => {
                self.pos = stop;
                return Err(self.syntax("unterminated string"));
            }
        }
        let arena_start = arena.len();
        let src = self.str_slice(start, stop);
        arena.push_str(src);
        self.pos = stop;
        loop {
            // At a backslash.
            let esc_at = self.pos;
            let Some(&c) = self.b.get(self.pos + 1) else {
                self.pos += 1;
                return Err(self.syntax("unterminated string"));
            };
            self.pos += 2;
            let decoded = match c {
                b'"' => '"',
                b'\\' => '\\',
                b'/' => '/',
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                b'u' => {
                    let unit = self.hex4()?;
                    match unit {
                        0xd800..=0xdbff => {
                            let low = if self.b[self.pos..].starts_with(b"\\u") {
                                self.pos += 2;
                                Some(self.hex4()?)
                            } else {
                                None
                            };
                            match low {
                                Some(low @ 0xdc00..=0xdfff) => {
                                    let cp = 0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00);
                                    char::from_u32(cp).expect("a surrogate pair is a scalar value")
                                }
                                _ => return Err(JsonError::LoneSurrogate { offset: esc_at }),
                            }
                        }
                        0xdc00..=0xdfff => return Err(JsonError::LoneSurrogate { offset: esc_at }),
                        0 if nul == Nul::Reject => return Err(JsonError::Nul { offset: esc_at }),
                        _ => char::from_u32(unit).expect("not a surrogate"),
                    }
                }
                _ => {
                    self.pos = esc_at;
                    return Err(self.syntax("invalid escape sequence"));
                }
            };
            arena.push(decoded);
            let run = self.pos;
            let stop = scan_plain(self.b, run);
            arena.push_str(self.str_slice(run, stop));
            self.pos = stop;
            match self.b.get(stop) {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Str {
                        start: arena_start as u32,
                        len: (arena.len() - arena_start) as u32,
                        decoded: true,
                    });
                }
                Some(b'\\') => {}
                Some(_) => return Err(self.syntax("control character in string (escape it)")),
                None => return Err(self.syntax("unterminated string")),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let mut v = 0;
        for i in 0..4 {
            let d = match self.b.get(self.pos + i) {
                Some(&c @ b'0'..=b'9') => c - b'0',
                Some(&c @ b'a'..=b'f') => c - b'a' + 10,
                Some(&c @ b'A'..=b'F') => c - b'A' + 10,
                _ => {
                    self.pos += i;
                    return Err(self.syntax("\\u must be followed by four hex digits"));
                }
            };
            v = v * 16 + u32::from(d);
        }
        self.pos += 4;
        Ok(v)
    }

    /// `b[start..end]` as text (both ends are next to ASCII bytes).
    fn str_slice(&self, start: usize, end: usize) -> &'a str {
        &self.s[start..end]
    }
}

fn syntax_at(b: &[u8], offset: usize, message: &str) -> JsonError {
    let before = &b[..offset.min(b.len())];
    let line_start = before
        .iter()
        .rposition(|&c| c == b'\n')
        .map_or(0, |i| i + 1);
    let line = 1 + before.iter().filter(|&&c| c == b'\n').count();
    // Count characters, not bytes: continuation bytes are 0b10xxxxxx.
    let column = 1 + before[line_start..]
        .iter()
        .filter(|&&c| (c as i8) >= -0x40)
        .count();
    JsonError::Syntax {
        offset,
        line,
        column,
        message: message.to_owned(),
    }
}

/// Index of the first `"`, `\` or control byte at or after `i`, or `b.len()`.
#[inline]
fn scan_plain(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        // Standard "has a zero byte" / "has a byte below n" tricks; the lowest flagged
        // byte is exact, which is all we need.
        let hits = ((quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (w.wrapping_sub(ONES * 0x20) & !w))
            & HIGHS;
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            break;
        }
        i += 1;
    }
    i
}

// ---------------------------------------------------------------------------------------
// numeric: range check, binary size, printing.

/// What `numeric_in` makes of a number: its display scale, and its size in jsonb.
struct Numeric {
    /// Printed exactly as written (no exponent, not a negative zero).
    verbatim: bool,
    /// `VARSIZE` of the numeric datum jsonb stores (4-byte header included).
    size: u32,
}

const OVERFLOW: &str = "value overflows numeric format";
/// `numeric_in` refuses exponents of this magnitude or more (`INT_MAX / 2`).
const MAX_EXPONENT: i64 = 1_073_741_823;
const MAX_DSCALE: i64 = 0x3fff;
const MAX_WEIGHT: i64 = i16::MAX as i64;

fn check_numeric(b: &[u8], n: &Number, offset: usize) -> Result<Numeric, JsonError> {
    let out_of_range = |message: &str| JsonError::NumberOutOfRange {
        offset,
        message: message.to_owned(),
    };
    let e = n.exponent.unwrap_or(0);
    if e >= MAX_EXPONENT || e <= -MAX_EXPONENT {
        return Err(out_of_range(OVERFLOW));
    }
    let int = &b[n.int.clone()];
    let frac = &b[n.frac.clone()];
    let n_int = int.len() as i64;
    let dscale = (frac.len() as i64 - e).max(0);
    if dscale > MAX_DSCALE {
        return Err(out_of_range(
            "value overflows numeric format (more than 16383 digits after the decimal point)",
        ));
    }
    // Positions of the first and last non-zero digits within int ++ frac.
    let first = int
        .iter()
        .chain(frac)
        .position(|&d| d != b'0')
        .map(|i| i as i64);
    let (weight, ndigits) = match first {
        None => (0, 0),
        Some(first) => {
            let last = (int.len() + frac.len()
                - 1
                - int
                    .iter()
                    .chain(frac)
                    .rev()
                    .position(|&d| d != b'0')
                    .expect("non-zero")) as i64;
            // Digit i stands for 10^(n_int - 1 - i + e); numeric groups them by 10^4.
            let msd = n_int - 1 - first + e;
            let lsd = n_int - 1 - last + e;
            let weight = msd.div_euclid(4);
            if weight > MAX_WEIGHT {
                return Err(out_of_range(OVERFLOW));
            }
            (weight, weight - lsd.div_euclid(4) + 1)
        }
    };
    // NUMERIC_CAN_BE_SHORT: a 2-byte header instead of 4.
    let short = dscale <= 63 && (-64..=63).contains(&weight);
    let size = 4 + if short { 2 } else { 4 } + 2 * ndigits;
    Ok(Numeric {
        verbatim: n.exponent.is_none() && !(n.negative && first.is_none()),
        size: size as u32,
    })
}

/// Print a checked number the way `numeric_out` does.
fn write_numeric(out: &mut String, text: &str) {
    let mut lx = Lexer::new(text);
    let n = lx.number().expect("the number was checked");
    let int = &text[n.int.clone()];
    let frac = &text[n.frac.clone()];
    let e = n.exponent.unwrap_or(0);
    let len = (int.len() + frac.len()) as i64;
    // digits(a..b) of int ++ frac.
    let digits = |out: &mut String, a: i64, b: i64| {
        let (a, b) = (a as usize, b as usize);
        let n_int = int.len();
        if a < n_int {
            out.push_str(&int[a..b.min(n_int)]);
        }
        if b > n_int {
            out.push_str(&frac[a.max(n_int) - n_int..b - n_int]);
        }
    };
    let zero = !int.bytes().chain(frac.bytes()).any(|d| d != b'0');
    if n.negative && !zero {
        out.push('-');
    }
    // The decimal point falls before digit `point` (may be outside the digits).
    let point = int.len() as i64 + e;
    let lead = int
        .bytes()
        .chain(frac.bytes())
        .take(point.clamp(0, len) as usize)
        .position(|d| d != b'0');
    match lead {
        None => out.push('0'),
        Some(lead) => {
            digits(out, lead as i64, point.min(len));
            push_zeros(out, point - len);
        }
    }
    let dscale = frac.len() as i64 - e;
    if dscale > 0 {
        out.push('.');
        if point < 0 {
            push_zeros(out, -point);
            digits(out, 0, len);
        } else {
            digits(out, point, len);
        }
    }
}

fn push_zeros(out: &mut String, mut n: i64) {
    const ZEROS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
    while n > 0 {
        let k = n.min(ZEROS.len() as i64);
        out.push_str(&ZEROS[..k as usize]);
        n -= k;
    }
}

// ---------------------------------------------------------------------------------------
// canonicalize: one pass builds a tape (values in document order, object members sorted
// and deduplicated into a side table), a second pass prints it and sizes its binary form.

#[derive(Clone, Copy)]
enum Tok {
    Null,
    True,
    False,
    Str(Str),
    Num {
        start: u32,
        len: u32,
        verbatim: bool,
        size: u32,
    },
    /// `next` is the tape index just past this container's values.
    Arr {
        next: u32,
        len: u32,
        at: u32,
    },
    /// Members are `table[first..first + len]`, sorted and unique.
    Obj {
        next: u32,
        first: u32,
        len: u32,
        at: u32,
    },
}

#[derive(Clone, Copy)]
struct Member {
    key: Str,
    /// Tape index of the value.
    value: u32,
}

#[derive(Clone, Copy)]
struct Open {
    tape: u32,
    at: u32,
    /// Elements or members so far.
    count: u32,
    /// For objects: where its members start in `Scratch::members`.
    members: u32,
    object: bool,
}

#[derive(Default)]
struct Scratch {
    tape: Vec<Tok>,
    arena: String,
    members: Vec<Member>,
    table: Vec<Member>,
    open: Vec<Open>,
}

impl Scratch {
    fn clear(&mut self) {
        self.tape.clear();
        self.arena.clear();
        self.members.clear();
        self.table.clear();
        self.open.clear();
    }

    /// Keep the buffers for the next document unless one was unusually big.
    fn trim(&mut self) {
        const KEEP: usize = 1 << 20;
        if self.tape.capacity() > KEEP / 16 || self.arena.capacity() > KEEP {
            *self = Scratch::default();
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

fn build(src: &str, s: &mut Scratch) -> Result<(), JsonError> {
    let b = src.as_bytes();
    let Scratch {
        tape,
        arena,
        members,
        table,
        open,
    } = s;
    let mut lx = Lexer::new(src);
    let mut cost: u32 = 0;
    'value: loop {
        lx.skip_ws();
        let at = lx.pos;
        if cost > DEPTH_BUDGET {
            return Err(JsonError::TooDeep {
                offset: at,
                depth: open.len(),
            });
        }
        match lx.peek() {
            Some(c @ (b'[' | b'{')) => {
                lx.pos += 1;
                let object = c == b'{';
                let idx = tape.len() as u32;
                tape.push(Tok::Null);
                open.push(Open {
                    tape: idx,
                    at: at as u32,
                    count: 0,
                    members: members.len() as u32,
                    object,
                });
                cost += if object {
                    OBJECT_LEVEL_COST
                } else {
                    ARRAY_LEVEL_COST
                };
                lx.skip_ws();
                if !lx.eat(if object { b'}' } else { b']' }) {
                    if object {
                        push_key(&mut lx, arena, members, tape.len())?;
                    }
                    count_one(open.last_mut().expect("just pushed"), lx.pos)?;
                    continue 'value;
                }
                close(open, tape, members, table, src, arena, &mut cost);
            }
            Some(b'"') => {
                let s = lx.string(arena, Nul::Reject)?;
                tape.push(Tok::Str(s));
            }
            Some(b'-' | b'0'..=b'9') => {
                let n = lx.number()?;
                let num = check_numeric(b, &n, at)?;
                tape.push(Tok::Num {
                    start: at as u32,
                    len: (lx.pos - at) as u32,
                    verbatim: num.verbatim,
                    size: num.size,
                });
            }
            Some(b't') => {
                lx.literal(b"true")?;
                tape.push(Tok::True);
            }
            Some(b'f') => {
                lx.literal(b"false")?;
                tape.push(Tok::False);
            }
            Some(b'n') => {
                lx.literal(b"null")?;
                tape.push(Tok::Null);
            }
            _ => return Err(lx.expected_value()),
        }
        // A value is complete: close containers, or move on to the next value.
        loop {
            lx.skip_ws();
            let Some(top) = open.last_mut() else {
                lx.end()?;
                return Ok(());
            };
            match lx.peek() {
                Some(b',') => {
                    lx.pos += 1;
                    if top.object {
                        lx.skip_ws();
                        push_key(&mut lx, arena, members, tape.len())?;
                    }
                    count_one(top, lx.pos)?;
                    continue 'value;
                }
                Some(b']') if !top.object => {}
                Some(b'}') if top.object => {}
                _ if top.object => return Err(lx.syntax("expected ',' or '}'")),
                _ => return Err(lx.syntax("expected ',' or ']'")),
            }
            lx.pos += 1;
            close(open, tape, members, table, src, arena, &mut cost);
        }
    }
}

fn count_one(top: &mut Open, pos: usize) -> Result<(), JsonError> {
    top.count += 1;
    let (limit, what, items) = if top.object {
        (MAX_OBJECT_MEMBERS, "object", "members")
    } else {
        (MAX_ARRAY_ELEMENTS, "array", "elements")
    };
    if top.count as usize > limit {
        return Err(JsonError::JsonbLimit {
            offset: top.at as usize,
            what,
            message: format!(
                "more than {limit} {items} (at byte {pos}), more than PostgreSQL can allocate"
            ),
        });
    }
    Ok(())
}

fn push_key(
    lx: &mut Lexer<'_>,
    arena: &mut String,
    members: &mut Vec<Member>,
    value: usize,
) -> Result<(), JsonError> {
    if lx.peek() != Some(b'"') {
        return Err(lx.syntax("expected a string key"));
    }
    let key = lx.string(arena, Nul::Reject)?;
    lx.skip_ws();
    if !lx.eat(b':') {
        return Err(lx.syntax("expected ':'"));
    }
    members.push(Member {
        key,
        value: value as u32,
    });
    Ok(())
}

/// Close the innermost container: fill in its tape entry; for an object, sort its members
/// jsonb's way (shorter key first, then bytewise) and keep the last of each key.
fn close(
    open: &mut Vec<Open>,
    tape: &mut [Tok],
    members: &mut Vec<Member>,
    table: &mut Vec<Member>,
    src: &str,
    arena: &str,
    cost: &mut u32,
) {
    let o = open.pop().expect("a container is open");
    let next = tape.len() as u32;
    if !o.object {
        *cost -= ARRAY_LEVEL_COST;
        tape[o.tape as usize] = Tok::Arr {
            next,
            len: o.count,
            at: o.at,
        };
        return;
    }
    *cost -= OBJECT_LEVEL_COST;
    let key = |m: &Member| m.key.as_str(src, arena).as_bytes();
    let order = |a: &Member, b: &Member| {
        let (a, b) = (key(a), key(b));
        a.len().cmp(&b.len()).then_with(|| a.cmp(b))
    };
    let mine = &mut members[o.members as usize..];
    let first = table.len() as u32;
    if mine.windows(2).all(|w| order(&w[0], &w[1]).is_lt()) {
        table.extend_from_slice(mine);
    } else {
        // Stable, so among equal keys the last in the input comes last.
        mine.sort_by(order);
        for (i, m) in mine.iter().enumerate() {
            match mine.get(i + 1) {
                Some(next) if order(m, next).is_eq() => {}
                _ => table.push(*m),
            }
        }
    }
    members.truncate(o.members as usize);
    tape[o.tape as usize] = Tok::Obj {
        next,
        first,
        len: table.len() as u32 - first,
        at: o.at,
    };
}

enum Frame {
    Arr {
        end: u32,
        base: u64,
        at: u32,
    },
    Obj {
        /// Next member to print, and one past the last.
        k: u32,
        end: u32,
        next: u32,
        base: u64,
        at: u32,
    },
}

fn emit(src: &str, s: &Scratch) -> Result<Canonical, JsonError> {
    let Scratch {
        tape, arena, table, ..
    } = s;
    let mut out = String::with_capacity(src.len() + src.len() / 8 + 16);
    let mut frames: Vec<Frame> = Vec::new();
    // Where jsonb's binary form would have got to: it starts after the 4-byte varlena
    // header; a scalar document is stored as a one-element array (header and JEntry).
    let mut off: u64 = match tape[0] {
        Tok::Arr { .. } | Tok::Obj { .. } => 4,
        _ => 12,
    };
    let pad = |off: u64| (off + 3) & !3;
    let mut i: u32 = 0;
    'value: loop {
        // Print the value at tape[i]; `after` is the tape index just past it.
        let mut after = match tape[i as usize] {
            Tok::Null => {
                out.push_str("null");
                i + 1
            }
            Tok::True => {
                out.push_str("true");
                i + 1
            }
            Tok::False => {
                out.push_str("false");
                i + 1
            }
            Tok::Str(st) => {
                write_string(&mut out, st, src, arena);
                off += u64::from(st.len);
                i + 1
            }
            Tok::Num {
                start,
                len,
                verbatim,
                size,
            } => {
                let text = &src[start as usize..(start + len) as usize];
                if verbatim {
                    out.push_str(text);
                } else {
                    write_numeric(&mut out, text);
                    if out.len() > MAX_CANONICAL_BYTES {
                        return Err(JsonError::JsonbLimit {
                            offset: start as usize,
                            what: "document",
                            message: format!(
                                "its jsonb::text form would pass {MAX_CANONICAL_BYTES} bytes"
                            ),
                        });
                    }
                }
                off = pad(off) + u64::from(size);
                i + 1
            }
            Tok::Arr { next, len, at } => {
                let base = off;
                off = pad(off) + 4 + 4 * u64::from(len);
                if len == 0 {
                    out.push_str("[]");
                    next
                } else {
                    out.push('[');
                    frames.push(Frame::Arr {
                        end: next,
                        base,
                        at,
                    });
                    i += 1;
                    continue 'value;
                }
            }
            Tok::Obj {
                next,
                first,
                len,
                at,
            } => {
                let base = off;
                off = pad(off) + 4 + 8 * u64::from(len);
                if len == 0 {
                    out.push_str("{}");
                    next
                } else {
                    let mine = &table[first as usize..(first + len) as usize];
                    off += mine.iter().map(|m| u64::from(m.key.len)).sum::<u64>();
                    out.push('{');
                    write_string(&mut out, mine[0].key, src, arena);
                    out.push_str(": ");
                    frames.push(Frame::Obj {
                        k: first + 1,
                        end: first + len,
                        next,
                        base,
                        at,
                    });
                    i = mine[0].value;
                    continue 'value;
                }
            }
        };
        loop {
            match frames.last_mut() {
                None => break 'value,
                Some(Frame::Arr { end, .. }) if after < *end => {
                    out.push_str(", ");
                    i = after;
                    continue 'value;
                }
                Some(Frame::Obj { k, end, .. }) if *k < *end => {
                    let m = table[*k as usize];
                    *k += 1;
                    out.push_str(", ");
                    write_string(&mut out, m.key, src, arena);
                    out.push_str(": ");
                    i = m.value;
                    continue 'value;
                }
                Some(_) => {}
            }
            let (base, at, what) = match frames.pop().expect("checked above") {
                Frame::Arr { end, base, at } => {
                    out.push(']');
                    after = end;
                    (base, at, "array")
                }
                Frame::Obj { next, base, at, .. } => {
                    out.push('}');
                    after = next;
                    (base, at, "object")
                }
            };
            if off - base > MAX_CONTAINER_BYTES {
                return Err(JsonError::JsonbLimit {
                    offset: at as usize,
                    what,
                    message: format!(
                        "its binary form takes {} bytes, more than {MAX_CONTAINER_BYTES}",
                        off - base
                    ),
                });
            }
        }
    }
    Ok(Canonical {
        text: out,
        jsonb_bytes: off as usize,
    })
}

/// `"` + the string as PostgreSQL's `escape_json` prints it + `"`.
fn write_string(out: &mut String, st: Str, src: &str, arena: &str) {
    out.push('"');
    let text = st.as_str(src, arena);
    if st.decoded {
        escape_json(out, text);
    } else {
        // No escapes in the input means no `"`, `\` or control characters: printed as is.
        out.push_str(text);
    }
    out.push('"');
}

fn escape_json(out: &mut String, text: &str) {
    let b = text.as_bytes();
    let mut run = 0;
    let mut i = 0;
    loop {
        i = scan_plain(b, i);
        let Some(&c) = b.get(i) else { break };
        out.push_str(&text[run..i]);
        match c {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(c >> 4)]));
                out.push(char::from(HEX[usize::from(c & 0xf)]));
            }
        }
        i += 1;
        run = i;
    }
    out.push_str(&text[run..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values in these tests are what PostgreSQL 15.18 printed for
    /// `'<input>'::jsonb::text`.
    fn canon(s: &str) -> String {
        canonicalize(s.as_bytes()).unwrap_or_else(|e| panic!("{:?} refused: {e}", short(s)))
    }

    fn refused(s: &str) -> JsonError {
        match canonicalize(s.as_bytes()) {
            Ok(t) => panic!("{:?} accepted as {:?}", short(s), short(&t)),
            Err(e) => e,
        }
    }

    fn short(s: &str) -> &str {
        s.get(..80).unwrap_or(s)
    }

    #[test]
    fn layout_matches_jsonb_text() {
        assert_eq!(
            canon(r#"{"bb":[1,2],"a":{}}"#),
            r#"{"a": {}, "bb": [1, 2]}"#
        );
        assert_eq!(canon("[]"), "[]");
        assert_eq!(canon("{ }"), "{}");
        assert_eq!(canon(" \t\r\n[ 1 , [ ] , { } ]\n"), "[1, [], {}]");
        assert_eq!(
            canon(r#"[{"a":[{"b":null}]},true,false]"#),
            r#"[{"a": [{"b": null}]}, true, false]"#
        );
    }

    #[test]
    fn any_scalar_may_be_the_document() {
        assert_eq!(canon("  1  "), "1");
        assert_eq!(canon("true"), "true");
        assert_eq!(canon("null"), "null");
        assert_eq!(canon(r#""x""#), r#""x""#);
    }

    #[test]
    fn keys_sort_shorter_first_then_bytewise() {
        assert_eq!(
            canon(r#"{"bb":1,"a":2,"c":3,"aaa":4,"é":5,"B":6}"#),
            r#"{"B": 6, "a": 2, "c": 3, "bb": 1, "é": 5, "aaa": 4}"#
        );
        // Length and order are those of the decoded key.
        assert_eq!(canon(r#"{"\u0062":1,"a":2}"#), r#"{"a": 2, "b": 1}"#);
    }

    #[test]
    fn last_duplicate_key_wins() {
        assert_eq!(canon(r#"{"a":1,"a":2,"b":3,"a":4}"#), r#"{"a": 4, "b": 3}"#);
        assert_eq!(canon(r#"{"a":1,"\u0061":2}"#), r#"{"a": 2}"#);
        assert_eq!(canon(r#"{"a":{"x":1},"a":[2]}"#), r#"{"a": [2]}"#);
        assert_eq!(
            canon(r#"[{"k":1,"k":{"k":2,"k":3}}]"#),
            r#"[{"k": {"k": 3}}]"#
        );
    }

    #[test]
    fn strings_are_printed_as_escape_json_does() {
        assert_eq!(canon(r#""a\/b\u001F\u007f\b""#), "\"a/b\\u001f\u{7f}\\b\"");
        assert_eq!(canon(r#""\"\\\b\f\n\r\t""#), r#""\"\\\b\f\n\r\t""#);
        assert_eq!(canon(r#""\u0001\u001e\u0020""#), r#""\u0001\u001e ""#);
        assert_eq!(canon(r#""\u00e9\u00E9""#), "\"éé\"");
        assert_eq!(canon("\"é/\u{7f}😀\""), "\"é/\u{7f}😀\"");
        assert_eq!(canon(r#""\ud83d\ude00\uD83D\uDE00""#), "\"😀😀\"");
        assert_eq!(canon(r#"{"\n":"\u000b"}"#), r#"{"\n": "\u000b"}"#);
    }

    #[test]
    fn nul_escape_is_refused_in_values_and_keys() {
        assert_eq!(refused(r#""\u0000""#), JsonError::Nul { offset: 1 });
        assert_eq!(refused(r#"{"a\u0000":1}"#), JsonError::Nul { offset: 3 });
        assert_eq!(
            refused(r#"["x", "\u0000"]"#).code(),
            "jsonb_incompatible_nul"
        );
    }

    #[test]
    fn lone_surrogates_are_refused() {
        for s in [
            r#""\ud83d""#,
            r#""\ude00""#,
            r#""\ud83d\u0041""#,
            r#""\ud83dx""#,
            r#""\ud83d\ud83d""#,
            r#""\ud83d\n""#,
            r#"{"\udc00":1}"#,
            r#""\ud83d\u0000""#,
        ] {
            let e = refused(s);
            assert!(matches!(e, JsonError::LoneSurrogate { .. }), "{s}: {e:?}");
            assert_eq!(e.code(), "invalid_json");
        }
    }

    #[test]
    fn syntax_errors() {
        for s in [
            "",
            " ",
            "01",
            "1.",
            ".5",
            "+1",
            "1e",
            "1e+",
            "-",
            "- 1",
            "[1,]",
            "[,1]",
            "{,}",
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{"a" 1}"#,
            "{1:2}",
            "1 2",
            "[1 2]",
            "nul",
            "NaN",
            "Infinity",
            "1abc",
            "truex",
            "[",
            "{",
            "]",
            r#"""#,
            r#""\x""#,
            r#""\u12g4""#,
            "\"a\u{1}\"",
            "\"tab\there\"",
            "\u{feff}1",
            "\u{c}1",
            "'a'",
            "[1]]",
            "/* */1",
        ] {
            let e = refused(s);
            assert!(matches!(e, JsonError::Syntax { .. }), "{s:?}: {e:?}");
            assert_eq!(e.code(), "invalid_json");
        }
    }

    #[test]
    fn syntax_errors_say_where() {
        assert_eq!(
            refused("{\n  \"é\": tru\n}"),
            JsonError::Syntax {
                offset: 10,
                line: 2,
                column: 8,
                message: "invalid literal (expected true, false or null)".into()
            }
        );
    }

    #[test]
    fn invalid_utf8_is_its_own_error() {
        assert_eq!(
            canonicalize(b"\"ab\xff\""),
            Err(JsonError::InvalidUtf8 { offset: 3 })
        );
        // A surrogate encoded in UTF-8 and an overlong form are invalid too.
        assert_eq!(
            canonicalize(b"\"\xed\xa0\x80\"").unwrap_err().code(),
            "invalid_utf8"
        );
        assert_eq!(
            canonicalize(b"\"\xc0\xaf\"").unwrap_err().code(),
            "invalid_utf8"
        );
        // The encoding is checked before the grammar, as PostgreSQL's text input does.
        assert_eq!(
            canonicalize(b"[1,,\xff]").unwrap_err().code(),
            "invalid_utf8"
        );
    }

    #[test]
    fn numbers_are_printed_as_numeric_out_does() {
        for (input, expected) in [
            ("1e2", "100"),
            ("1.0", "1.0"),
            ("1.50", "1.50"),
            ("1E-2", "0.01"),
            ("1.5e1", "15"),
            ("1.55e1", "15.5"),
            ("100e-1", "10.0"),
            ("1000e-2", "10.00"),
            ("100E-2", "1.00"),
            ("-0", "0"),
            ("-0.0", "0.0"),
            ("-0e5", "0"),
            ("0e-3", "0.000"),
            ("-0.000e-2", "0.00000"),
            ("0.0e1", "0"),
            ("1.5e-0", "1.5"),
            ("-1.5E+00", "-1.5"),
            ("1E+2", "100"),
            ("1e02", "100"),
            ("1e0000000000000000000000002", "100"),
            ("1e-0", "1"),
            ("1.23456789e5", "123456.789"),
            ("12345.6789e-10", "0.00000123456789"),
            ("0.00012", "0.00012"),
            ("1e-4", "0.0001"),
            ("-12.5e-3", "-0.0125"),
            ("0.00123e5", "123"),
            ("0.00123e2", "0.123"),
            ("-7", "-7"),
            (
                "123456789012345678901234567890.123456789012345678901234567890",
                "123456789012345678901234567890.123456789012345678901234567890",
            ),
            ("0e1073741822", "0"),
        ] {
            assert_eq!(canon(input), expected, "{input}");
        }
        assert_eq!(canon("1e1000"), format!("1{}", "0".repeat(1000)));
        assert_eq!(canon("1e1001").len(), 1002);
        assert_eq!(canon("1e-1001"), format!("0.{}1", "0".repeat(1000)));
        assert_eq!(canon("1e131071").len(), 131_072);
        assert_eq!(canon("0.00001e131076").len(), 131_072);
        assert_eq!(canon("9.9999e131071").len(), 131_072);
        assert_eq!(canon("0e-16383"), format!("0.{}", "0".repeat(16383)));
        assert_eq!(canon("1e-16383").len(), 16385);
        assert_eq!(canon("12.5e-16382").len(), 16385);
    }

    #[test]
    fn numbers_numeric_cannot_hold_are_refused() {
        for s in [
            "1e131072",
            "10e131071",
            "0e1073741823",
            "0e-1073741822",
            "0e-1073741823",
            "1e99999999999999999999",
            "0e-99999999999999999999",
            "0e-16384",
            "1e-16384",
            "12.5e-16383",
        ] {
            let e = refused(s);
            assert!(
                matches!(e, JsonError::NumberOutOfRange { .. }),
                "{s}: {e:?}"
            );
            assert_eq!(e.code(), "invalid_json");
        }
        // Without an exponent: at most 131072 integer digits and 16383 after the point.
        let digits = |n| "9".repeat(n);
        assert_eq!(canon(&digits(131_072)).len(), 131_072);
        refused(&digits(131_073));
        assert_eq!(canon(&format!("0.{}", digits(16383))).len(), 16385);
        refused(&format!("0.{}", digits(16384)));
        assert_eq!(
            refused(&format!("[1, {}]", digits(131_073))).offset(),
            Some(4)
        );
    }

    #[test]
    fn numeric_size_follows_numeric_layout() {
        let size = |s: &str| {
            let mut lx = Lexer::new(s);
            let n = lx.number().unwrap();
            check_numeric(s.as_bytes(), &n, 0).unwrap().size
        };
        assert_eq!(size("0"), 6);
        assert_eq!(size("1"), 8);
        assert_eq!(size("9999"), 8);
        assert_eq!(size("10000"), 8);
        assert_eq!(size("10001"), 10);
        assert_eq!(size("0.0001"), 8);
        assert_eq!(size("1234.5678"), 10);
        assert_eq!(size("1e252"), 8); // weight 63, short header
        assert_eq!(size("1e256"), 10); // weight 64, long header
        assert_eq!(size(&format!("0.{}", "0".repeat(63))), 6);
        assert_eq!(size(&format!("0.{}", "0".repeat(64))), 8);
    }

    #[test]
    fn long_strings_and_escapes_mixed() {
        let plain = "abcdefghijklmnopqrstuvwxyz".repeat(10);
        let doc = format!("[\"{plain}\", \"{plain}\\n{plain}\\u0007\", \"{plain}\"]");
        assert_eq!(
            canon(&doc),
            format!("[\"{plain}\", \"{plain}\\n{plain}\\u0007\", \"{plain}\"]")
        );
        let doc = format!("\"{plain}\u{1}\"");
        assert!(matches!(
            refused(&doc),
            JsonError::Syntax { offset: 261, .. }
        ));
    }

    fn nest(open: &str, close: &str, n: usize, inner: &str) -> String {
        format!("{}{inner}{}", open.repeat(n), close.repeat(n))
    }

    #[test]
    fn deep_nesting_does_not_use_the_stack() {
        // Run on a small stack to prove nothing recurses.
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let doc = nest("[", "]", 14_400, "1");
                assert_eq!(canon(&doc), doc);
                let doc = nest(r#"{"a":"#, "}", 12_959, "[]");
                assert_eq!(canon(&doc), nest(r#"{"a": "#, "}", 12_959, "[]"));
                let parsed = parse(nest("[", "]", 1_000_000, "").as_bytes()).unwrap();
                drop(parsed);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn depth_past_what_postgres_builds_is_refused() {
        canon(&nest("[", "]", 14_400, "1"));
        canon(&nest("[", "]", 14_401, ""));
        assert!(matches!(
            refused(&nest("[", "]", 14_401, "1")),
            JsonError::TooDeep { depth: 14_401, .. }
        ));
        assert_eq!(refused(&nest("[", "]", 100_000, "")).code(), "too_large");
        // An object level costs 10/9 of an array level; keys are not counted.
        canon(&nest(r#"{"a":"#, "}", 12_960, "1"));
        canon(&nest(r#"{"a":"#, "}", 12_960, "{}"));
        refused(&nest(r#"{"a":"#, "}", 12_961, "1"));
        refused(&nest(r#"{"a":"#, "}", 12_960, r#"{"b":1}"#));
        canon(&nest("[", "]", 1_440, &nest(r#"{"a":"#, "}", 11_664, "1")));
        refused(&nest("[", "]", 1_441, &nest(r#"{"a":"#, "}", 11_664, "1")));
    }

    #[test]
    fn size_limits() {
        assert_eq!(
            canonicalize(&vec![b' '; MAX_STATE_BYTES + 1]),
            Err(JsonError::TooLarge {
                bytes: MAX_STATE_BYTES + 1,
                limit: MAX_STATE_BYTES
            })
        );
    }

    #[test]
    fn errors_have_stable_codes() {
        assert_eq!(JsonError::InvalidUtf8 { offset: 0 }.code(), "invalid_utf8");
        assert_eq!(refused("[").code(), "invalid_json");
        assert_eq!(refused(r#""\u0000""#).code(), "jsonb_incompatible_nul");
        assert_eq!(refused("1e131072").code(), "invalid_json");
        assert_eq!(
            JsonError::TooLarge { bytes: 1, limit: 0 }.code(),
            "too_large"
        );
    }

    #[test]
    fn hash_is_versioned_sha256_of_the_text() {
        assert_eq!(
            hash_canonical(""),
            "v1:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hash_canonical(&canon(r#"{"b":1,"a":2}"#)),
            hash_canonical(r#"{"a": 2, "b": 1}"#)
        );
    }

    #[test]
    fn parse_keeps_spans_members_and_duplicates() {
        let raw = br#" {"version": 1, "sessions": [{"id": "s\u00e9", "state": {"b": [1e2, -0], "a": null}}], "x": 1, "x": 2} "#;
        let doc = parse(raw).unwrap();
        assert_eq!(doc.span, 1..raw.len() - 1);
        let Node::Object(members) = &doc.node else {
            panic!("not an object")
        };
        let keys: Vec<&str> = members.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["version", "sessions", "x", "x"]);
        let one = raw.windows(6).position(|w| w == br#""x": 1"#).unwrap() + 5;
        assert_eq!(
            doc.get("x").unwrap().node,
            Node::Number {
                text_span: one..one + 1
            }
        );
        let Node::Array(sessions) = &doc.get("sessions").unwrap().node else {
            panic!("not an array")
        };
        let record = &sessions[0];
        assert_eq!(record.get("id").unwrap().node, Node::String("sé".into()));
        let state = record.get("state").unwrap();
        assert_eq!(state.text(raw), br#"{"b": [1e2, -0], "a": null}"#);
        assert_eq!(
            canon(std::str::from_utf8(state.text(raw)).unwrap()),
            r#"{"a": null, "b": [100, 0]}"#
        );
        let (node, span) = doc.into_parts();
        assert!(matches!(node, Node::Object(_)));
        assert_eq!(span, 1..raw.len() - 1);
    }

    #[test]
    fn parse_accepts_what_only_jsonb_refuses() {
        let doc = parse(br#"["\u0000", 1e999999999999, {"a": 1, "a": 2}]"#).unwrap();
        let Node::Array(items) = &doc.node else {
            panic!()
        };
        assert_eq!(items[0].node, Node::String("\0".into()));
        assert!(matches!(
            parse(br#""\ud800""#),
            Err(JsonError::LoneSurrogate { offset: 1 })
        ));
        assert!(matches!(parse(b"[1,]"), Err(JsonError::Syntax { .. })));
        assert!(matches!(
            parse(b"\xff"),
            Err(JsonError::InvalidUtf8 { offset: 0 })
        ));
        assert!(matches!(
            parse(b"{} x"),
            Err(JsonError::Syntax { offset: 3, .. })
        ));
    }

    #[test]
    fn parse_and_canonicalize_agree_on_grammar() {
        for s in [
            "",
            "01",
            "[1,]",
            r#"{"a" 1}"#,
            "\"\u{1}\"",
            "1 2",
            r#""\x""#,
            "[[]",
            "{\"a\":1,}",
        ] {
            assert!(parse(s.as_bytes()).is_err(), "{s:?}");
        }
        for s in ["1", " [1, {\"a\": [true, false, null, \"x\"]}] ", "-0.5e-3"] {
            assert!(parse(s.as_bytes()).is_ok(), "{s:?}");
        }
    }
}
