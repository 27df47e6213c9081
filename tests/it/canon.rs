//! `canon` against a real PostgreSQL 15: whatever the server accepts as jsonb, we accept
//! and print the same text (and compute the same datum size); whatever it refuses, we
//! refuse. Documents come from a seeded generator: set `SESSIONDB_CANON_SEED` to explore
//! other seeds and `SESSIONDB_CANON_SCALE` to multiply the number of cases.

use sessiondb::canon::{self, Canonical, JsonError};

/// The one place this file gets its server (swap for the shared test support module).
fn admin_client() -> postgres::Client {
    crate::support::pg::admin()
}

/// What the server makes of a document: `(jsonb::text, pg_column_size)` or its error.
struct Server {
    client: postgres::Client,
    as_text: postgres::Statement,
    as_bytes: postgres::Statement,
}

impl Server {
    fn connect() -> Server {
        let mut client = admin_client();
        let row = client
            .query_one(
                "SELECT current_setting('server_version_num')::int / 10000, current_setting('server_encoding')",
                &[],
            )
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), 15, "these tests pin PostgreSQL 15");
        assert_eq!(
            row.get::<_, String>(1),
            "UTF8",
            "jsonb's \\u handling needs a UTF8 database"
        );
        // OFFSET 0 keeps the cast in one place; the datum is measured before any compression.
        let as_text = client
            .prepare(
                "SELECT j::text, pg_column_size(j) FROM (SELECT $1::text::jsonb AS j OFFSET 0) s",
            )
            .unwrap();
        let as_bytes = client
            .prepare(
                "SELECT j::text, pg_column_size(j) FROM (SELECT convert_from($1::bytea, 'UTF8')::jsonb AS j OFFSET 0) s",
            )
            .unwrap();
        Server {
            client,
            as_text,
            as_bytes,
        }
    }

    /// Each call is its own statement in autocommit mode, so a refusal poisons nothing.
    fn judge(&mut self, doc: &[u8]) -> Result<Canonical, String> {
        let rows = match std::str::from_utf8(doc) {
            Ok(text) => self.client.query(&self.as_text, &[&text]),
            Err(_) => self.client.query(&self.as_bytes, &[&doc]),
        };
        match rows {
            Ok(rows) => Ok(Canonical {
                text: rows[0].get(0),
                jsonb_bytes: rows[0].get::<_, i32>(1) as usize,
            }),
            Err(e) => Err(e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned())),
        }
    }

    fn accepts(&mut self, sql: &str, doc: &str) -> bool {
        self.client.query(sql, &[&doc]).is_ok()
    }
}

/// At most 300 bytes of `text`, cut at a character boundary.
fn clip(text: &str) -> &str {
    let mut end = text.len().min(300);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn preview(doc: &[u8]) -> String {
    let s = String::from_utf8_lossy(&doc[..doc.len().min(300)]).into_owned();
    format!("{s:?} ({} bytes)", doc.len())
}

/// Compare one document; describe the difference if there is one.
fn compare(server: &mut Server, doc: &[u8]) -> Option<String> {
    let ours = canon::canonicalize_with_size(doc);
    let theirs = server.judge(doc);
    match (ours, theirs) {
        (Ok(ours), Ok(theirs)) if ours == theirs => None,
        (Ok(ours), Ok(theirs)) => Some(format!(
            "{}\n  ours:   {:?} ({} bytes as jsonb)\n  server: {:?} ({} bytes as jsonb)",
            preview(doc),
            clip(&ours.text),
            ours.jsonb_bytes,
            clip(&theirs.text),
            theirs.jsonb_bytes
        )),
        (Err(_), Err(_)) => None,
        (Ok(ours), Err(e)) => Some(format!(
            "{}\n  ours:   accepted as {:?}\n  server: {e}",
            preview(doc),
            clip(&ours.text)
        )),
        (Err(ours), Ok(theirs)) => Some(format!(
            "{}\n  ours:   {ours}\n  server: accepted as {:?}",
            preview(doc),
            clip(&theirs.text)
        )),
    }
}

// ---------------------------------------------------------------------------------------
// A small seeded generator of JSON-ish text.

/// SplitMix64: tiny, good enough, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// True with probability `per_mille` / 1000.
    fn odds(&mut self, per_mille: usize) -> bool {
        self.below(1000) < per_mille
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

struct Gen {
    rng: Rng,
    /// How often (per mille, per opportunity) to plant a defect.
    defects: usize,
    out: String,
}

impl Gen {
    fn document(&mut self) -> String {
        self.out.clear();
        self.ws();
        let depth = self.rng.below(6);
        self.value(depth);
        self.ws();
        std::mem::take(&mut self.out)
    }

    fn defect(&mut self) -> bool {
        self.defects > 0 && self.rng.odds(self.defects)
    }

    fn ws(&mut self) {
        if self.defect() {
            let bad = *self.rng.pick(&[
                "\u{c}", "\u{b}", "\u{a0}", "\u{feff}", "\u{2028}", "\0", "/**/",
            ]);
            self.out.push_str(bad);
        }
        let ws = *self.rng.pick(&[
            "", "", "", " ", "  ", "\n", "\n  ", "\t", "\r\n", " \t\r\n ",
        ]);
        self.out.push_str(ws);
    }

    fn value(&mut self, depth: usize) {
        let kind = if depth == 0 {
            2 + self.rng.below(4)
        } else {
            self.rng.below(6)
        };
        match kind {
            0 => self.object(depth - 1),
            1 => self.array(depth - 1),
            2 => self.string(),
            3 | 4 => self.number(),
            _ => self.literal(),
        }
    }

    fn object(&mut self, depth: usize) {
        self.out.push('{');
        self.ws();
        let n = self.rng.below(7);
        for i in 0..n {
            if i > 0 {
                self.out.push(',');
                self.ws();
            }
            self.key();
            self.ws();
            let colon = if self.defect() { '=' } else { ':' };
            self.out.push(colon);
            self.ws();
            self.value(depth);
            self.ws();
        }
        if n > 0 && self.defect() {
            self.out.push(',');
        }
        self.out.push('}');
    }

    fn array(&mut self, depth: usize) {
        self.out.push('[');
        self.ws();
        let n = self.rng.below(7);
        for i in 0..n {
            if i > 0 {
                self.out.push(',');
                self.ws();
            }
            self.value(depth);
            self.ws();
        }
        if self.defect() {
            let close = *self.rng.pick(&[",", "]", ",]"]);
            self.out.push_str(close);
        }
        self.out.push(']');
    }

    fn key(&mut self) {
        // A small pool, so duplicates and keys of equal length are common.
        const KEYS: &[&str] = &[
            "a",
            "a",
            "b",
            "c",
            "B",
            "aa",
            "ab",
            "ba",
            "bb",
            "abc",
            "é",
            "\\u00e9",
            "\\u0061",
            "\\u0062b",
            "",
            "id",
            "state",
            "😀",
            "\\ud83d\\ude00",
            "a\\nb",
            "\\\"",
            "Ω",
            "ä",
        ];
        if self.rng.odds(800) {
            let key = *self.rng.pick(KEYS);
            self.out.push('"');
            self.out.push_str(key);
            self.out.push('"');
        } else {
            self.string();
        }
    }

    fn string(&mut self) {
        self.out.push('"');
        let pieces = if self.rng.odds(50) {
            self.rng.below(200)
        } else {
            self.rng.below(8)
        };
        for _ in 0..pieces {
            self.string_piece();
        }
        self.out.push('"');
    }

    fn string_piece(&mut self) {
        if self.defect() {
            let bad = *self.rng.pick(&[
                "\\u0000",
                "\\ud800",
                "\\udfff",
                "\\ud83d\\u0041",
                "\\ud83d",
                "\\x",
                "\\u12",
                "\\U0041",
                "\u{1}",
                "\t",
                "\n",
                "\\",
                "\\u00G0",
                "\\'",
            ]);
            self.out.push_str(bad);
            return;
        }
        match self.rng.below(10) {
            0..=2 => {
                let plain = *self.rng.pick(&[
                    "a",
                    "hello",
                    " ",
                    "/",
                    "\u{7f}",
                    "é",
                    "中文",
                    "😀",
                    "\u{ffff}",
                    "\u{10ffff}",
                    "\u{80}",
                    "\u{2028}",
                    "'",
                    "{}[],:",
                    "0",
                    "true",
                ]);
                self.out.push_str(plain);
            }
            3 | 4 => {
                let esc = *self
                    .rng
                    .pick(&["\\\"", "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t"]);
                self.out.push_str(esc);
            }
            5..=7 => {
                // \u escape of a non-surrogate BMP code point, in either hex case.
                let cp = match self.rng.below(4) {
                    0 => 1 + self.rng.below(0x1f),
                    1 => 0x20 + self.rng.below(0x60),
                    2 => 0x80 + self.rng.below(0x780),
                    _ => loop {
                        let cp = 0x800 + self.rng.below(0xf800);
                        if !(0xd800..0xe000).contains(&cp) {
                            break cp;
                        }
                    },
                };
                self.unicode_escape(cp as u32);
            }
            _ => {
                // A surrogate pair.
                let cp = 0x10000 + self.rng.below(0x100000) as u32;
                let v = cp - 0x10000;
                self.unicode_escape(0xd800 + (v >> 10));
                self.unicode_escape(0xdc00 + (v & 0x3ff));
            }
        }
    }

    fn unicode_escape(&mut self, unit: u32) {
        let hex = format!("{unit:04x}");
        let hex = if self.rng.odds(500) {
            hex.to_uppercase()
        } else {
            hex
        };
        self.out.push_str("\\u");
        self.out.push_str(&hex);
    }

    fn number(&mut self) {
        if self.defect() {
            let bad = *self.rng.pick(&[
                "01",
                "1.",
                ".5",
                "+1",
                "1e",
                "1e+",
                "-",
                "0x10",
                "1.e5",
                "NaN",
                "Infinity",
                "-Infinity",
                "1_000",
                "--1",
                "1e1.5",
                "0.5.5",
                "00",
            ]);
            self.out.push_str(bad);
            return;
        }
        if self.rng.odds(300) {
            self.out.push('-');
        }
        let digits = |g: &mut Gen, n: usize, zeros: bool| {
            for _ in 0..n {
                let d = if zeros && g.rng.odds(400) {
                    0
                } else {
                    g.rng.below(10)
                };
                g.out.push(char::from(b'0' + d as u8));
            }
        };
        if self.rng.odds(300) {
            self.out.push('0');
        } else {
            self.out.push(char::from(b'1' + self.rng.below(9) as u8));
            let n = if self.rng.odds(100) {
                self.rng.below(60)
            } else {
                self.rng.below(6)
            };
            digits(self, n, true);
        }
        if self.rng.odds(400) {
            self.out.push('.');
            let most = if self.rng.odds(100) { 40 } else { 6 };
            let n = 1 + self.rng.below(most);
            digits(self, n, true);
        }
        if self.rng.odds(300) {
            let e = *self.rng.pick(&["e", "E"]);
            let sign = *self.rng.pick(&["", "+", "-"]);
            self.out.push_str(e);
            self.out.push_str(sign);
            if self.rng.odds(200) {
                self.out.push_str("000");
            }
            let exponent = match self.rng.below(10) {
                0 => *self.rng.pick(&[
                    131_068,
                    131_069,
                    131_070,
                    131_071,
                    131_072,
                    131_073,
                    16_380,
                    16_383,
                    16_384,
                    16_390,
                    1_073_741_822,
                    1_073_741_823,
                    99_999_999_999,
                    2_000,
                    1_000,
                    1_001,
                ]),
                1 | 2 => self.rng.below(2_000),
                _ => self.rng.below(30),
            };
            self.out.push_str(&exponent.to_string());
        }
    }

    fn literal(&mut self) {
        let word = if self.defect() {
            *self
                .rng
                .pick(&["True", "nul", "nulll", "f", "undefined", "None"])
        } else {
            *self.rng.pick(&["true", "false", "null"])
        };
        self.out.push_str(word);
    }
}

/// Small edits of a document, often breaking it, sometimes in the middle of a character.
fn mutate(rng: &mut Rng, doc: &str) -> Vec<u8> {
    let mut b = doc.as_bytes().to_vec();
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(b.len() + 1);
        match rng.below(5) {
            0 if at < b.len() => {
                b.remove(at);
            }
            1 => {
                let byte = *rng.pick(
                    b"{}[],:\"\\u0123456789abcdefeE+-.tn \t\n\x00\x01\x7f\x80\xbf\xc3\xe2\xf0\xff",
                );
                b.insert(at, byte);
            }
            2 if at < b.len() => {
                let end = (at + 1 + rng.below(8)).min(b.len());
                let copy = b[at..end].to_vec();
                b.splice(at..at, copy);
            }
            3 => b.truncate(at),
            _ if at < b.len() => b[at] = rng.below(256) as u8,
            _ => {}
        }
    }
    b
}

fn random_bytes(rng: &mut Rng) -> Vec<u8> {
    const ALPHABET: &[u8] = b"{}[],:\"\\u0123456789aefEntrl+-. \t\n\r\x00\x1f\x7f\x80\xc3\xa9\xed\xa0\xf0\x9f\x98\x80\xff";
    let len = rng.below(24);
    (0..len)
        .map(|_| {
            if rng.odds(100) {
                rng.below(256) as u8
            } else {
                *rng.pick(ALPHABET)
            }
        })
        .collect()
}

/// Inputs picked by hand: every rule in the module documentation, and its edges.
fn edge_cases() -> Vec<Vec<u8>> {
    let mut docs: Vec<String> = [
        "",
        " ",
        "1",
        " 1 ",
        "1 2",
        "-0",
        "-0.0",
        "-0e5",
        "0e-3",
        "1e2",
        "1E+2",
        "1.0",
        "1.50",
        "1E-2",
        "1.5e1",
        "1.55e1",
        "100e-1",
        "1e02",
        "1e0000000000000000000002",
        "1e1000",
        "1e1001",
        "1e-1001",
        "1e131071",
        "1e131072",
        "9.9999e131071",
        "0.00001e131076",
        "0e1073741822",
        "0e1073741823",
        "0e-1073741822",
        "1e99999999999999999999",
        "0e-16383",
        "0e-16384",
        "1e-16383",
        "1e-16384",
        "12.5e-16382",
        "12.5e-16383",
        "01",
        "1.",
        ".5",
        "+1",
        "1e",
        "1e+",
        "-",
        "NaN",
        "Infinity",
        "1abc",
        "truex",
        "true",
        "false",
        "null",
        "[]",
        "{}",
        "[ ]",
        "{ }",
        "[1,]",
        "[,1]",
        "{\"a\"}",
        "{\"a\":}",
        "{1:2}",
        "[1]]",
        "[[]",
        "\"\"",
        r#"{"bb":[1,2],"a":{}}"#,
        r#"{"a":1,"a":2,"b":3,"a":4}"#,
        r#"{"a":1,"\u0061":2}"#,
        r#"{"bb":1,"a":2,"c":3,"aaa":4,"é":5,"B":6}"#,
        r#""a\/b\u001F\u007f\b""#,
        r#""\u0000""#,
        r#"{"\u0000":1}"#,
        r#""\ud83d\ude00""#,
        r#""\uD83D\uDE00""#,
        r#""\ud83d""#,
        r#""\ude00""#,
        r#""\ud83d\u0041""#,
        r#""\ud83d\ud83d""#,
        r#""\x""#,
        r#""\u12g4""#,
        "\"\u{1}\"",
        "\"\u{7f}\"",
        "\u{feff}1",
        "\u{c}1",
        "1\u{0}",
        "\"a\u{0}b\"",
        r#""\"\\\/\b\f\n\r\t""#,
        r#""\u001e\u0020\u007F\u0080""#,
        r#"[1e1, 1e-1, 1.0e+1, -1.0e-1]"#,
        r#"{"a": {"a": {"a": [{"a": null}]}}}"#,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let digits = |n| "9".repeat(n);
    docs.push(digits(131_072));
    docs.push(digits(131_073));
    docs.push(format!("0.{}", digits(16_383)));
    docs.push(format!("0.{}", digits(16_384)));
    docs.push(format!("[{}]", ["1e131071"; 4].join(",")));
    docs.push(format!("\"{}\"", "x".repeat(100_000)));
    let mut docs: Vec<Vec<u8>> = docs.into_iter().map(String::into_bytes).collect();
    for bytes in [
        &b"\"\xff\""[..],
        b"\"\xed\xa0\x80\"",
        b"\"\xc0\xaf\"",
        b"\"\xf4\x90\x80\x80\"",
        b"[1,,\xff]",
        b"\xef\xbb\xbf1",
    ] {
        docs.push(bytes.to_vec());
    }
    docs
}

fn seed() -> u64 {
    std::env::var("SESSIONDB_CANON_SEED").map_or(0x5e55_10db, |s| s.parse().expect("a u64 seed"))
}

fn scale() -> usize {
    std::env::var("SESSIONDB_CANON_SCALE").map_or(1, |s| s.parse().expect("a whole number"))
}

#[test]
fn canonicalize_agrees_with_postgres_on_random_documents() {
    let mut server = Server::connect();
    let seed = seed();
    let mut rng = Rng(seed);
    let mut cases: Vec<(&str, Vec<u8>)> = edge_cases().into_iter().map(|d| ("edge", d)).collect();
    let mut clean = Gen {
        rng: Rng(seed ^ 1),
        defects: 0,
        out: String::new(),
    };
    let mut dirty = Gen {
        rng: Rng(seed ^ 2),
        defects: 15,
        out: String::new(),
    };
    for _ in 0..4_000 * scale() {
        cases.push(("clean", clean.document().into_bytes()));
    }
    for _ in 0..3_000 * scale() {
        cases.push(("defect", dirty.document().into_bytes()));
    }
    for _ in 0..3_000 * scale() {
        let doc = clean.document();
        cases.push(("mutated", mutate(&mut rng, &doc)));
    }
    for _ in 0..2_000 * scale() {
        cases.push(("bytes", random_bytes(&mut rng)));
    }

    let mut differences = Vec::new();
    let mut accepted = std::collections::BTreeMap::<&str, (usize, usize)>::new();
    for (i, (kind, doc)) in cases.iter().enumerate() {
        if let Some(d) = compare(&mut server, doc) {
            differences.push(format!("case {i} ({kind}, seed {seed}): {d}"));
        }
        let tally = accepted.entry(kind).or_default();
        tally.1 += 1;
        if canon::canonicalize(doc).is_ok() {
            tally.0 += 1;
        }
    }
    eprintln!(
        "seed {seed}: {} documents, accepted/total by kind: {accepted:?}",
        cases.len()
    );
    assert!(
        differences.is_empty(),
        "{} of {} documents differ from PostgreSQL:\n{}",
        differences.len(),
        cases.len(),
        differences[..differences.len().min(10)].join("\n")
    );
    // The generator must exercise both outcomes in every kind that can have both.
    for (kind, (ok, total)) in accepted {
        if kind != "clean" {
            assert!(ok > 0 && ok < total, "{kind}: {ok} of {total} accepted");
        } else {
            assert!(ok * 4 > total * 3, "clean: only {ok} of {total} accepted");
        }
    }
}

fn nest(open: &str, close: &str, n: usize, inner: &str) -> String {
    format!("{}{inner}{}", open.repeat(n), close.repeat(n))
}

/// Our depth budget stays within about 1% under the server's limit, on the safe side: the
/// deepest document we accept is accepted by the server in the ways the migration may
/// send it, and one 2% deeper (in stack cost) is refused by both.
#[test]
fn depth_limit_is_just_under_postgres_limit() {
    let mut server = Server::connect();
    server
        .client
        .batch_execute("CREATE TEMP TABLE canon_depth (state jsonb)")
        .unwrap();
    // Each shape grows by one level of a kind whose stack cost is given.
    let (array, object) = (canon::ARRAY_LEVEL_COST, canon::OBJECT_LEVEL_COST);
    type Shape = (&'static str, u32, fn(usize) -> String);
    let shapes: [Shape; 4] = [
        ("arrays", array, |n| nest("[", "]", n, "1")),
        ("objects", object, |n| nest(r#"{"k":"#, "}", n, "1")),
        ("arrays around objects", array, |n| {
            nest("[", "]", n, &nest(r#"{"k":"#, "}", 6_000, "true"))
        }),
        ("alternating", array + object, |n| {
            nest(r#"[{"k":"#, "}]", n, r#""x""#)
        }),
    ];
    let contexts = [
        "SELECT $1::text::jsonb::text",
        "INSERT INTO canon_depth VALUES ($1::text::jsonb)",
        "INSERT INTO canon_depth SELECT unnest(ARRAY[$1::text]::jsonb[])",
    ];
    for (name, cost, shape) in shapes {
        let (mut lo, mut hi) = (0usize, 40_000);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if canon::canonicalize(shape(mid).as_bytes()).is_ok() {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        assert!(matches!(
            canon::canonicalize(shape(lo + 1).as_bytes()),
            Err(JsonError::TooDeep { .. })
        ));
        let deepest = shape(lo);
        let too_deep = shape(lo + (canon::DEPTH_BUDGET / 50 / cost) as usize + 1);
        for sql in contexts {
            assert!(
                server.accepts(sql, &deepest),
                "{name}: server refuses {lo} levels in {sql}"
            );
            assert!(
                !server.accepts(sql, &too_deep),
                "{name}: server accepts 2% more than our {lo} levels in {sql}"
            );
        }
        assert_eq!(compare(&mut server, deepest.as_bytes()), None);
    }
}

/// The limits PostgreSQL's jsonb builder runs into on big documents, each at its edge.
/// These documents are 33 to 45 MB, so the server digests the text it would print (rather
/// than sending it) while we canonicalize the same document on the other core.
#[test]
fn size_limits_match_postgres() {
    let mut server = Server::connect();
    let digest = server
        .client
        .prepare(
            "SELECT 'v1:' || encode(sha256(convert_to(j::text, 'UTF8')), 'hex'), pg_column_size(j) \
             FROM (SELECT $1::text::jsonb AS j OFFSET 0) s",
        )
        .unwrap();
    let mut check = |doc: String, accepted: bool| {
        let (ours, theirs) = std::thread::scope(|scope| {
            let theirs = scope.spawn(|| server.client.query_one(&digest, &[&doc]));
            let ours = canon::canonicalize_with_size(doc.as_bytes());
            (ours, theirs.join().unwrap())
        });
        let what = preview(doc.as_bytes());
        match (ours, theirs) {
            (Ok(ours), Ok(row)) => {
                assert!(accepted, "{what}: accepted by both, expected a refusal");
                assert_eq!(
                    canon::hash_canonical(&ours.text),
                    row.get::<_, String>(0),
                    "{what}"
                );
                assert_eq!(ours.jsonb_bytes, row.get::<_, i32>(1) as usize, "{what}");
            }
            (Err(ours), Err(_)) => {
                assert!(!accepted, "{what}: refused by both: {ours}");
                assert_eq!(ours.code(), "too_large", "{what}: {ours}");
            }
            (ours, theirs) => panic!("{what}: ours {:?}, server {:?}", ours.err(), theirs.err()),
        }
    };
    let list = |open: &str, item: &str, n: usize, close: &str| {
        let mut s = String::with_capacity(open.len() + n * (item.len() + 1) + close.len());
        s.push_str(open);
        for i in 0..n {
            if i > 0 {
                s.push(',');
            }
            s.push_str(item);
        }
        s.push_str(close);
        s
    };
    // At most 2^24 array elements and 2^23 object members (duplicates count).
    let elements = canon::MAX_ARRAY_ELEMENTS;
    check(list("[", "0", elements, "]"), true);
    check(list("[", "0", elements + 1, "]"), false);
    let members = canon::MAX_OBJECT_MEMBERS;
    check(list("{", r#""":0"#, members, "}"), true);
    check(list("{", r#""":0"#, members + 1, "}"), false);
    // A container's binary form may take at most 2^28 - 1 bytes. Two arrays of 1s: each
    // array is a 4-byte header plus 12 bytes an element (a 4-byte JEntry and an 8-byte
    // numeric, all aligned); the outer one adds its header and two JEntries.
    let first = 11_000_000;
    let pair = |n: usize| {
        format!(
            "[{},{}]",
            list("[", "1", first, "]"),
            list("[", "1", n, "]")
        )
    };
    let fits = (canon::MAX_CONTAINER_BYTES as usize - 12 - (4 + 12 * first) - 4) / 12;
    check(pair(fits), true);
    check(pair(fits + 1), false);
}
