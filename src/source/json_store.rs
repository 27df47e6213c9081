//! The deprecated JSON SessionDB: `{"version": 1, "sessions": [...]}`, a bare array, or
//! `{"sessions": [...], ...}` with other keys. Read-only.
//!
//! [`load`] streams: it reads the file once, in chunks, through a small envelope parser
//! that knows the accepted top-level shapes and a value skipper (strings, escapes,
//! bracket depth) that cuts out one record at a time. Each record alone is then parsed
//! with [`canon::parse`]; what is kept is small (id, metadata, where the record and its
//! state are in the file), so memory is flat in the size of the store. A record's bytes
//! and its state are read again on demand ([`JsonRecord::raw`], [`JsonRecord::state`])
//! with positioned reads on the handle opened by [`load`], after checking that the file
//! is still the one that was loaded (device, inode, size, modification time).

use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::fields::{self, FieldError, Raw};
use super::{Meta, parse_meta};
use crate::canon::{self, JsonError, Node, Spanned};
use crate::error::{Error, Result};
use crate::report::Finding;

/// Bytes read from the file at a time while loading.
const CHUNK: usize = 64 * 1024;

/// One record of the JSON store, parsed as far as it goes. It holds no copy of the
/// record's bytes: [`JsonRecord::raw`] and [`JsonRecord::state`] read them from the file.
#[derive(Debug, Clone)]
pub struct JsonRecord {
    pub id: std::result::Result<String, FieldError>,
    pub meta: std::result::Result<Meta, FieldError>,
    /// The record's number in the `sessions` array, from 0.
    pub index: usize,
    /// Where the record's bytes start in the file.
    pub offset: u64,
    /// How many bytes the record takes.
    pub len: usize,
    /// The span of `state` within the record, when present and not null.
    state_span: Option<Range<usize>>,
    file: Arc<StoreFile>,
}

impl JsonRecord {
    /// The file this record is in.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// The record's original bytes, read from the file.
    pub fn raw(&self) -> Result<Vec<u8>> {
        self.file.read_at(self, 0..self.len)
    }

    /// The original text of `state`, read from the file; `None` when absent or null.
    pub fn state(&self) -> Result<Option<Vec<u8>>> {
        match &self.state_span {
            None => Ok(None),
            Some(span) => self.file.read_at(self, span.clone()).map(Some),
        }
    }

    /// Whether the record has a `state` that is not null.
    pub fn has_state(&self) -> bool {
        self.state_span.is_some()
    }
}

/// What identifies the file as it was loaded: any write or replacement changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Identity {
    fn of(m: &std::fs::Metadata) -> Identity {
        Identity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        }
    }

    /// How `now` differs from `self`, in words.
    fn difference(&self, now: &Identity) -> String {
        if (self.dev, self.ino) != (now.dev, now.ino) {
            "another file now has its name".into()
        } else if self.size != now.size {
            format!("its size went from {} to {} bytes", self.size, now.size)
        } else {
            "its modification time changed".into()
        }
    }
}

/// The JSON store's file, opened once by [`load`] and shared by its records.
#[derive(Debug)]
struct StoreFile {
    path: PathBuf,
    file: File,
    identity: Identity,
}

impl StoreFile {
    fn unreadable(&self, e: io::Error) -> Error {
        Error::Unreadable {
            path: self.path.clone(),
            source: e,
        }
    }

    /// Fail unless the file at `path` is still the one loaded, unchanged; `when` says
    /// what was being done, for the message.
    fn check_unchanged(&self, when: &str) -> Result<()> {
        let changed = |what: String| Error::SourceChanged {
            path: self.path.clone(),
            what: format!("{what}; noticed {when}"),
        };
        match std::fs::metadata(&self.path) {
            Ok(m) if Identity::of(&m) == self.identity => Ok(()),
            Ok(m) => Err(changed(self.identity.difference(&Identity::of(&m)))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(changed("it is gone".into())),
            Err(e) => Err(self.unreadable(e)),
        }
    }

    /// `span` of `rec`'s bytes, read from the file.
    fn read_at(&self, rec: &JsonRecord, span: Range<usize>) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; span.len()];
        let read = self
            .file
            .read_exact_at(&mut buf, rec.offset + span.start as u64);
        // After the read: a change before or during it shows here, and a file cut short
        // is reported as changed, not as an I/O error.
        self.check_unchanged(&format!(
            "when reading record {} (at byte {}) again",
            rec.index, rec.offset
        ))?;
        read.map_err(|e| self.unreadable(e))?;
        Ok(buf)
    }

    /// The 1-based line and column (in characters, as [`canon`] counts them) of byte
    /// `offset`, for error messages.
    fn line_col(&self, offset: u64) -> io::Result<(usize, usize)> {
        let (mut line, mut column) = (1, 1);
        let mut buf = vec![0u8; CHUNK];
        let mut at = 0u64;
        while at < offset {
            let want = (offset - at).min(CHUNK as u64) as usize;
            let n = self.file.read_at(&mut buf[..want], at)?;
            if n == 0 {
                break;
            }
            for &c in &buf[..n] {
                if c == b'\n' {
                    line += 1;
                    column = 1;
                } else if (c as i8) >= -0x40 {
                    column += 1;
                }
            }
            at += n as u64;
        }
        Ok((line, column))
    }
}

fn invalid(path: &Path, code: &'static str, message: String) -> Error {
    Error::InvalidSource {
        code,
        message: format!("JSON store {}: {message}", path.display()),
    }
}

/// Load the store's index: every record's id, metadata and place in the file, and the
/// warnings about them. Any syntax error, in the envelope or in a record, fails the
/// whole store.
pub fn load(path: &Path) -> Result<(Vec<JsonRecord>, Vec<Finding>)> {
    load_in_chunks(path, CHUNK)
}

fn load_in_chunks(path: &Path, chunk: usize) -> Result<(Vec<JsonRecord>, Vec<Finding>)> {
    let unreadable = |e| Error::Unreadable {
        path: path.to_path_buf(),
        source: e,
    };
    let file = File::open(path).map_err(unreadable)?;
    let identity = Identity::of(&file.metadata().map_err(unreadable)?);
    let file = Arc::new(StoreFile {
        path: path.to_path_buf(),
        file,
        identity,
    });
    let mut loader = Loader {
        file: &file,
        records: Vec::new(),
        warnings: Vec::new(),
        record_warnings: Vec::new(),
        buf: Vec::new(),
    };
    let mut sc = Scanner::new(&file.file, chunk);
    let envelope = loader.envelope(&mut sc).map_err(|f| loader.error(f))?;
    file.check_unchanged("at the end of the load")?;
    let Loader {
        records,
        mut warnings,
        record_warnings,
        ..
    } = loader;
    warnings.extend(record_warnings);
    match envelope {
        Envelope::Array => {}
        Envelope::Object { version, sessions } => {
            if let Some(v) = version {
                if !(v.number && v.text == b"1") {
                    return Err(invalid(
                        path,
                        "unsupported_version",
                        format!(
                            "version {} is not supported (expected 1)",
                            String::from_utf8_lossy(&v.text)
                        ),
                    ));
                }
            }
            match sessions {
                Sessions::Array => {}
                Sessions::NotArray => {
                    return Err(invalid(
                        path,
                        "invalid_json",
                        "`sessions` is not an array".into(),
                    ));
                }
                Sessions::Missing => {
                    return Err(invalid(
                        path,
                        "invalid_json",
                        "no `sessions` array (expected {\"version\": 1, \"sessions\": [...]})"
                            .into(),
                    ));
                }
            }
        }
        Envelope::Other => {
            return Err(invalid(
                path,
                "invalid_json",
                "expected an object with `sessions` or an array of records".into(),
            ));
        }
    }
    Ok((records, warnings))
}

/// The top-level value, as far as it matters.
enum Envelope {
    /// A bare array of records.
    Array,
    /// An object: its last `version` and what its last `sessions` was.
    Object {
        version: Option<Version>,
        sessions: Sessions,
    },
    /// Any other valid JSON value.
    Other,
}

/// The value of `version`: its text, and whether it is a number.
struct Version {
    text: Vec<u8>,
    number: bool,
}

enum Sessions {
    Array,
    NotArray,
    Missing,
}

/// Why loading stopped, before it is turned into an [`Error`] naming the file.
enum Fail {
    Io(io::Error),
    /// A syntax error the envelope parser or the skipper found, at a file offset.
    Syntax {
        offset: u64,
        message: String,
    },
    /// [`canon::parse`] refused a value that starts at `base` in the file: record
    /// `record`, or an envelope key or value when `None`.
    Json {
        record: Option<usize>,
        base: u64,
        err: JsonError,
    },
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Fail {
        Fail::Io(e)
    }
}

fn syntax(offset: u64, message: impl Into<String>) -> Fail {
    Fail::Syntax {
        offset,
        message: message.into(),
    }
}

/// A forward reader over the file, in chunks, that knows its offset in the file.
struct Scanner<R> {
    inner: R,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    /// The file offset of `buf[0]`.
    base: u64,
}

impl<R: Read> Scanner<R> {
    fn new(inner: R, chunk: usize) -> Scanner<R> {
        Scanner {
            inner,
            buf: vec![0u8; chunk.max(1)].into_boxed_slice(),
            pos: 0,
            end: 0,
            base: 0,
        }
    }

    /// The file offset of the next byte.
    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Make the next byte available; false at the end of the file.
    fn fill(&mut self) -> io::Result<bool> {
        if self.pos < self.end {
            return Ok(true);
        }
        self.base += self.end as u64;
        self.pos = 0;
        self.end = 0;
        loop {
            match self.inner.read(&mut self.buf) {
                Ok(n) => {
                    self.end = n;
                    return Ok(n > 0);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn peek(&mut self) -> io::Result<Option<u8>> {
        Ok(if self.fill()? {
            Some(self.buf[self.pos])
        } else {
            None
        })
    }

    /// Take the next byte if it is `c`.
    fn eat(&mut self, c: u8) -> io::Result<bool> {
        if self.peek()? == Some(c) {
            self.pos += 1;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Skip JSON whitespace (space, tab, LF, CR).
    fn skip_ws(&mut self) -> io::Result<()> {
        while self.fill()? {
            match self.buf[self.pos..self.end]
                .iter()
                .position(|c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
            {
                Some(i) => {
                    self.pos += i;
                    return Ok(());
                }
                None => self.pos = self.end,
            }
        }
        Ok(())
    }

    /// Copy the JSON value that starts at the next byte into `out` (cleared first)
    /// without checking it: strings, their escapes and the bracket depth are followed
    /// just far enough to find where the value ends ([`canon::parse`] judges the copy).
    /// A scalar ends at the next whitespace, `,`, `:`, `]` or `}`.
    fn value(&mut self, out: &mut Vec<u8>) -> Result<(), Fail> {
        out.clear();
        let start = self.offset();
        match self.peek()? {
            None => Err(syntax(
                start,
                "unexpected end of input, expected a JSON value",
            )),
            Some(b',' | b':' | b']' | b'}') => Err(syntax(start, "expected a JSON value")),
            Some(b'{' | b'[' | b'"') => {
                let mut depth = 0u64;
                let mut in_string = false;
                let mut escaped = false;
                loop {
                    if !self.fill()? {
                        return Err(syntax(
                            self.offset(),
                            format!(
                                "unexpected end of input in the value that starts at byte {start}"
                            ),
                        ));
                    }
                    let chunk = &self.buf[self.pos..self.end];
                    let mut end = None;
                    for (i, &c) in chunk.iter().enumerate() {
                        if in_string {
                            if escaped {
                                escaped = false;
                            } else if c == b'\\' {
                                escaped = true;
                            } else if c == b'"' {
                                in_string = false;
                                if depth == 0 {
                                    end = Some(i + 1);
                                    break;
                                }
                            }
                        } else {
                            match c {
                                b'"' => in_string = true,
                                b'{' | b'[' => depth += 1,
                                b'}' | b']' => {
                                    depth -= 1;
                                    if depth == 0 {
                                        end = Some(i + 1);
                                        break;
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                    let n = end.unwrap_or(chunk.len());
                    out.extend_from_slice(&chunk[..n]);
                    self.pos += n;
                    if end.is_some() {
                        return Ok(());
                    }
                }
            }
            Some(_) => {
                while self.fill()? {
                    let chunk = &self.buf[self.pos..self.end];
                    let n = chunk
                        .iter()
                        .position(|c| {
                            matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b',' | b':' | b']' | b'}')
                        })
                        .unwrap_or(chunk.len());
                    out.extend_from_slice(&chunk[..n]);
                    self.pos += n;
                    if self.pos < self.end {
                        break;
                    }
                }
                Ok(())
            }
        }
    }
}

/// The envelope parser's state: the records so far and the warnings.
struct Loader<'a> {
    file: &'a Arc<StoreFile>,
    records: Vec<JsonRecord>,
    /// About the envelope.
    warnings: Vec<Finding>,
    /// About the records (dropped with them when a later `sessions` replaces them).
    record_warnings: Vec<Finding>,
    /// The current record's bytes (reused).
    buf: Vec<u8>,
}

impl Loader<'_> {
    fn path(&self) -> &Path {
        &self.file.path
    }

    /// Parse the whole file: one JSON value and nothing after it.
    fn envelope<R: Read>(&mut self, sc: &mut Scanner<R>) -> Result<Envelope, Fail> {
        sc.skip_ws()?;
        let envelope = match sc.peek()? {
            Some(b'[') => {
                sc.eat(b'[')?;
                self.records(sc)?;
                Envelope::Array
            }
            Some(b'{') => {
                sc.eat(b'{')?;
                self.object(sc)?
            }
            _ => {
                let base = sc.offset();
                let mut v = Vec::new();
                sc.value(&mut v)?;
                parse_value(&v, base)?;
                Envelope::Other
            }
        };
        sc.skip_ws()?;
        if sc.peek()?.is_some() {
            return Err(syntax(sc.offset(), "unexpected text after the JSON value"));
        }
        Ok(envelope)
    }

    /// The members of the top-level object, after its `{`. The last of a duplicated key
    /// wins, as in jsonb; a duplicated `sessions` is warned about.
    fn object<R: Read>(&mut self, sc: &mut Scanner<R>) -> Result<Envelope, Fail> {
        let mut version = None;
        let mut sessions = Sessions::Missing;
        let mut seen_sessions = false;
        let mut scratch = Vec::new();
        sc.skip_ws()?;
        if sc.eat(b'}')? {
            return Ok(Envelope::Object { version, sessions });
        }
        loop {
            sc.skip_ws()?;
            let base = sc.offset();
            if sc.peek()? != Some(b'"') {
                return Err(syntax(base, "expected a string key"));
            }
            sc.value(&mut scratch)?;
            let key = match parse_value(&scratch, base)?.into_parts().0 {
                Node::String(k) => k,
                _ => return Err(syntax(base, "expected a string key")),
            };
            sc.skip_ws()?;
            if !sc.eat(b':')? {
                return Err(syntax(sc.offset(), "expected ':'"));
            }
            sc.skip_ws()?;
            if key == "sessions" {
                if seen_sessions {
                    self.warnings.push(
                        Finding::new(
                            "duplicate_key",
                            format!(
                                "JSON store {} has `sessions` more than once; the last is used",
                                self.path().display()
                            ),
                        )
                        .path(self.path()),
                    );
                }
                seen_sessions = true;
                self.records.clear();
                self.record_warnings.clear();
            }
            if key == "sessions" && sc.peek()? == Some(b'[') {
                sc.eat(b'[')?;
                self.records(sc)?;
                sessions = Sessions::Array;
            } else {
                let base = sc.offset();
                sc.value(&mut scratch)?;
                let v = parse_value(&scratch, base)?;
                if key == "sessions" {
                    sessions = Sessions::NotArray;
                } else if key == "version" {
                    version = Some(Version {
                        number: matches!(v.node, Node::Number { .. }),
                        text: scratch.clone(),
                    });
                }
            }
            sc.skip_ws()?;
            if sc.eat(b',')? {
                continue;
            }
            if sc.eat(b'}')? {
                return Ok(Envelope::Object { version, sessions });
            }
            return Err(syntax(sc.offset(), "expected ',' or '}'"));
        }
    }

    /// The records of a `sessions` array, after its `[`.
    fn records<R: Read>(&mut self, sc: &mut Scanner<R>) -> Result<(), Fail> {
        sc.skip_ws()?;
        if sc.eat(b']')? {
            return Ok(());
        }
        let mut buf = std::mem::take(&mut self.buf);
        loop {
            sc.skip_ws()?;
            let offset = sc.offset();
            sc.value(&mut buf)?;
            self.record(offset, &buf)?;
            sc.skip_ws()?;
            if sc.eat(b',')? {
                continue;
            }
            if sc.eat(b']')? {
                break;
            }
            return Err(syntax(sc.offset(), "expected ',' or ']'"));
        }
        self.buf = buf;
        Ok(())
    }

    /// Parse one record, at `offset` in the file, and keep what it says.
    fn record(&mut self, offset: u64, bytes: &[u8]) -> Result<(), Fail> {
        let n = self.records.len();
        let file = self.file;
        let path = &file.path;
        let rec = canon::parse(bytes).map_err(|err| Fail::Json {
            record: Some(n),
            base: offset,
            err,
        })?;
        let mut out = JsonRecord {
            id: Ok(String::new()),
            meta: Ok(Meta::default()),
            index: n,
            offset,
            len: bytes.len(),
            state_span: None,
            file: self.file.clone(),
        };
        let Node::Object(members) = &rec.node else {
            out.id = Err(FieldError {
                code: "invalid_id",
                message: format!("JSON store {} record {n} is not an object", path.display()),
            });
            self.records.push(out);
            return Ok(());
        };
        let get = |k: &str| {
            members
                .iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v)
        };
        let field = |k: &str| get(k).map(|v| to_raw(v, bytes)).unwrap_or(Raw::Null);
        out.id = fields::id(&field("id")).map_err(|e| FieldError {
            code: e.code,
            message: format!("JSON store {} record {n}: {}", path.display(), e.message),
        });
        out.meta = parse_meta(
            &field("user_id"),
            &field("status"),
            &field("current_step"),
            &field("cost"),
            &field("created_at"),
            &field("updated_at"),
        );
        out.state_span = match get("state") {
            None => None,
            Some(Spanned {
                node: Node::Null, ..
            }) => None,
            Some(v) => Some(v.span.clone()),
        };
        if members.iter().filter(|(k, _)| k == "id").count() > 1 {
            self.record_warnings.push(Finding::new(
                "duplicate_key",
                format!(
                    "JSON store {} record {n} has `id` more than once; the last is used",
                    path.display()
                ),
            ));
        }
        self.records.push(out);
        Ok(())
    }

    /// The error that names the file (and the record, and where in the file).
    fn error(&self, f: Fail) -> Error {
        let path = self.path();
        let at = |offset: u64| {
            self.file
                .line_col(offset)
                .map_err(|e| self.file.unreadable(e))
        };
        match f {
            Fail::Io(e) => self.file.unreadable(e),
            Fail::Syntax { offset, message } => match at(offset) {
                Ok((line, column)) => invalid(
                    path,
                    "invalid_json",
                    JsonError::Syntax {
                        offset: offset as usize,
                        line,
                        column,
                        message,
                    }
                    .to_string(),
                ),
                Err(e) => e,
            },
            Fail::Json { record, base, err } => {
                let err = match relocate(err, base, at) {
                    Ok(e) => e,
                    Err(e) => return e,
                };
                let message = match record {
                    Some(n) => format!("record {n} (at byte {base}): {err}"),
                    None => err.to_string(),
                };
                invalid(path, err.code(), message)
            }
        }
    }
}

/// Parse a value cut out of the envelope (a key, `version`, another member), which
/// starts at `base` in the file.
fn parse_value(bytes: &[u8], base: u64) -> Result<Spanned, Fail> {
    canon::parse(bytes).map_err(|err| Fail::Json {
        record: None,
        base,
        err,
    })
}

/// `err`, found in a value that starts at `base`, with its offsets (and its line and
/// column) counted from the start of the file.
fn relocate(
    err: JsonError,
    base: u64,
    line_col: impl FnOnce(u64) -> Result<(usize, usize)>,
) -> Result<JsonError> {
    let shift = |o: usize| o + base as usize;
    Ok(match err {
        JsonError::Syntax {
            offset, message, ..
        } => {
            let offset = shift(offset);
            let (line, column) = line_col(offset as u64)?;
            JsonError::Syntax {
                offset,
                line,
                column,
                message,
            }
        }
        JsonError::InvalidUtf8 { offset } => JsonError::InvalidUtf8 {
            offset: shift(offset),
        },
        JsonError::Nul { offset } => JsonError::Nul {
            offset: shift(offset),
        },
        JsonError::LoneSurrogate { offset } => JsonError::LoneSurrogate {
            offset: shift(offset),
        },
        JsonError::NumberOutOfRange { offset, message } => JsonError::NumberOutOfRange {
            offset: shift(offset),
            message,
        },
        JsonError::TooDeep { offset, depth } => JsonError::TooDeep {
            offset: shift(offset),
            depth,
        },
        JsonError::JsonbLimit {
            offset,
            what,
            message,
        } => JsonError::JsonbLimit {
            offset: shift(offset),
            what,
            message,
        },
        e @ JsonError::TooLarge { .. } => e,
    })
}

fn to_raw(v: &Spanned, bytes: &[u8]) -> Raw {
    match &v.node {
        Node::Null => Raw::Null,
        Node::Bool(b) => Raw::Text(b.to_string()),
        Node::String(s) => Raw::Text(s.clone()),
        Node::Number { text_span } => {
            let t = String::from_utf8_lossy(&bytes[text_span.clone()]).into_owned();
            if let Ok(i) = t.parse::<i64>() {
                Raw::Integer(i)
            } else if let Ok(f) = t.parse::<f64>() {
                Raw::Real(f)
            } else {
                Raw::Text(t)
            }
        }
        Node::Array(_) | Node::Object(_) => Raw::Blob(bytes[v.span.clone()].to_vec()),
    }
}
