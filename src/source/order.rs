//! A scan's order, kept compactly for a second reader of what the scan read (a backup's
//! dumps, after migrate-state's planning pass): each item either read (the caller keeps
//! those, in order, or reads them again by id) or recognised by its stamp and not read,
//! kept as its id and stamp in one buffer, never as a session. Bounded in memory: past
//! its limit it goes on in a file with no name ([`ScanOrder::spilling`]), or, without
//! one, nothing more is kept.

use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// One item of the scan, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// The next of the items the caller kept, with its id (empty for a record without
    /// one).
    Read { id: String },
    /// A session not read: its stamp was known.
    Known { id: String, stamp: String },
}

/// The order of a scan's items: a tag byte each, an unread session's id and stamp
/// after its tag (each length-prefixed).
#[derive(Debug)]
pub struct ScanOrder {
    /// Everything, or what came after the part written to `spill`.
    buf: Vec<u8>,
    /// The most bytes `buf` holds.
    limit: usize,
    spill: Option<Spill>,
    reads: u64,
    known: u64,
}

/// The part of the order written out, in a file only this process can reach.
#[derive(Debug)]
struct Spill {
    file: File,
    len: u64,
}

const READ: u8 = 0;
const KNOWN: u8 = 1;

impl ScanOrder {
    /// An empty order that holds at most `limit` bytes, room made for `expect` of them
    /// (so that it never grows past what it holds by doubling).
    pub fn new(limit: usize, expect: usize) -> ScanOrder {
        ScanOrder {
            buf: Vec::with_capacity(expect.min(limit)),
            limit,
            spill: None,
            reads: 0,
            known: 0,
        }
    }

    /// An empty order that holds `memory` bytes and writes what comes past them to a
    /// file with no name in the folder `dir` ([`crate::fsutil::anonymous_file_in`]):
    /// bounded by the disk, gone with the process. An error: no such file can be made
    /// there.
    pub fn spilling(dir: &Path, memory: usize) -> io::Result<ScanOrder> {
        let file = crate::fsutil::anonymous_file_in(dir)?;
        Ok(ScanOrder {
            spill: Some(Spill { file, len: 0 }),
            ..ScanOrder::new(memory, memory)
        })
    }

    /// Room for `n` more bytes: what memory holds written out when it is full.
    /// `false`: full, and nowhere to write (or the write failed: the order is then
    /// incomplete, as past a limit).
    fn room(&mut self, n: usize) -> bool {
        if self.buf.len() + n <= self.limit {
            return true;
        }
        let Some(s) = &mut self.spill else {
            return false;
        };
        if (&s.file).write_all(&self.buf).is_err() {
            self.spill = None;
            return false;
        }
        s.len += self.buf.len() as u64;
        self.buf.clear();
        true
    }

    /// An item read, with its id if it has one. `false`: over the limit (the order is
    /// incomplete from here on).
    pub fn read(&mut self, id: Option<&str>) -> bool {
        let id = id.unwrap_or("");
        if !self.room(5 + id.len()) {
            return false;
        }
        self.buf.push(READ);
        self.text(id);
        self.reads += 1;
        true
    }

    fn text(&mut self, s: &str) {
        self.buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(s.as_bytes());
    }

    /// A session not read. `false`: over the limit.
    pub fn known(&mut self, id: &str, stamp: &str) -> bool {
        if !self.room(9 + id.len() + stamp.len()) {
            return false;
        }
        self.buf.push(KNOWN);
        self.text(id);
        self.text(stamp);
        self.known += 1;
        true
    }

    /// The items, in the scan's order: what was written out read back (an error there
    /// ends the order with it), then what memory holds.
    pub fn entries(&self) -> impl Iterator<Item = io::Result<Entry>> + '_ {
        let written = match &self.spill {
            Some(s) => WrittenPart {
                file: Some(&s.file),
                at: 0,
                end: s.len,
            },
            None => WrittenPart {
                file: None,
                at: 0,
                end: 0,
            },
        };
        let mut r = io::BufReader::with_capacity(1 << 16, written.chain(&self.buf[..]));
        let mut failed = false;
        std::iter::from_fn(move || {
            if failed {
                return None;
            }
            let next = next_entry(&mut r).transpose();
            failed = matches!(next, Some(Err(_)));
            next
        })
    }

    /// Items read and sessions not read, so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.reads, self.known)
    }

    /// The bytes it holds in memory and, written out, on disk.
    pub fn bytes(&self) -> (usize, u64) {
        (self.buf.len(), self.spill.as_ref().map_or(0, |s| s.len))
    }
}

/// The written part of an order, read from its start by offset (the file is never
/// read or moved by anything else).
struct WrittenPart<'a> {
    file: Option<&'a File>,
    at: u64,
    end: u64,
}

impl Read for WrittenPart<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let Some(f) = self.file else { return Ok(0) };
        let want = out.len().min((self.end - self.at) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = f.read_at(&mut out[..want], self.at)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the scan's order file is shorter than was written",
            ));
        }
        self.at += n as u64;
        Ok(n)
    }
}

/// The next entry, `None` at the end.
fn next_entry(r: &mut impl BufRead) -> io::Result<Option<Entry>> {
    if r.fill_buf()?.is_empty() {
        return Ok(None);
    }
    let mut tag = [0u8];
    r.read_exact(&mut tag)?;
    match tag[0] {
        READ => Ok(Some(Entry::Read { id: text(r)? })),
        KNOWN => {
            let id = text(r)?;
            let stamp = text(r)?;
            Ok(Some(Entry::Known { id, stamp }))
        }
        t => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the scan's order holds an unknown tag {t}"),
        )),
    }
}

fn text(r: &mut impl BufRead) -> io::Result<String> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let mut b = vec![0u8; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut b)?;
    String::from_utf8(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(id: &str, stamp: &str) -> Entry {
        Entry::Known {
            id: id.into(),
            stamp: stamp.into(),
        }
    }

    #[test]
    fn entries_come_back_in_order_and_the_limit_is_kept() {
        let mut o = ScanOrder::new(64, 16);
        assert!(o.read(Some("a")));
        assert!(o.known("é\u{0}id", "s3:ab"));
        assert!(o.read(None));
        assert_eq!(
            o.entries().collect::<io::Result<Vec<_>>>().unwrap(),
            [
                Entry::Read { id: "a".into() },
                known("é\u{0}id", "s3:ab"),
                Entry::Read { id: "".into() }
            ]
        );
        assert_eq!(o.counts(), (2, 1));
        assert!(!o.known(&"x".repeat(64), "s3:cd"), "past its limit");
    }

    #[test]
    fn an_order_past_its_memory_goes_on_in_a_file_and_comes_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = ScanOrder::spilling(dir.path(), 32).unwrap();
        let mut want = Vec::new();
        for i in 0..500 {
            if i % 7 == 0 {
                assert!(o.read(Some(&i.to_string())));
                want.push(Entry::Read { id: i.to_string() });
            } else {
                let id = format!("id-{i}-{}", "é".repeat(i % 5));
                assert!(o.known(&id, &format!("s3:{i:032x}")));
                want.push(known(&id, &format!("s3:{i:032x}")));
            }
        }
        let (memory, disk) = o.bytes();
        assert!(memory <= 32 + 64 && disk > 10_000, "{memory} {disk}");
        // Read twice: the written part is read by offset, not consumed.
        for _ in 0..2 {
            assert_eq!(o.entries().collect::<io::Result<Vec<_>>>().unwrap(), want);
        }
        // The file has no name: nothing is left in the folder.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn no_file_is_made_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(ScanOrder::spilling(&link, 32).is_err());
    }
}
