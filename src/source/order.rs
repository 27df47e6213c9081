//! A scan's order, kept compactly for a second reader of what the scan read (a backup's
//! dumps, after migrate-state's planning pass): each item either read (the caller keeps
//! those, in order) or recognised by its stamp and not read, kept as its id and stamp in
//! one buffer, never as a session. Bounded: past its limit nothing more is kept.

/// One item of the scan, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry<'a> {
    /// The next of the items the caller kept.
    Read,
    /// A session not read: its stamp was known.
    Known { id: &'a str, stamp: &'a str },
}

/// The order of a scan's items: a tag byte each, an unread session's id and stamp
/// after its tag (each length-prefixed).
#[derive(Debug)]
pub struct ScanOrder {
    buf: Vec<u8>,
    limit: usize,
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
        }
    }

    /// An item read. `false`: over the limit (the order is incomplete from here on).
    pub fn read(&mut self) -> bool {
        if self.buf.len() >= self.limit {
            return false;
        }
        self.buf.push(READ);
        true
    }

    /// A session not read. `false`: over the limit.
    pub fn known(&mut self, id: &str, stamp: &str) -> bool {
        if self.buf.len() + 9 + id.len() + stamp.len() > self.limit {
            return false;
        }
        self.buf.push(KNOWN);
        for s in [id, stamp] {
            self.buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
            self.buf.extend_from_slice(s.as_bytes());
        }
        true
    }

    /// The items, in the scan's order.
    pub fn entries(&self) -> impl Iterator<Item = Entry<'_>> {
        let mut at = 0;
        let buf = &self.buf;
        std::iter::from_fn(move || {
            let tag = *buf.get(at)?;
            at += 1;
            if tag == READ {
                return Some(Entry::Read);
            }
            let mut text = || {
                let n = u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
                let s = std::str::from_utf8(&buf[at + 4..at + 4 + n]).expect("written from a str");
                at += 4 + n;
                s
            };
            let id = text();
            let stamp = text();
            Some(Entry::Known { id, stamp })
        })
    }

    /// The bytes it holds.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_back_in_order_and_the_limit_is_kept() {
        let mut o = ScanOrder::new(64, 16);
        assert!(o.read());
        assert!(o.known("é\u{0}id", "s3:ab"));
        assert!(o.read());
        assert_eq!(
            o.entries().collect::<Vec<_>>(),
            [
                Entry::Read,
                Entry::Known {
                    id: "é\u{0}id",
                    stamp: "s3:ab"
                },
                Entry::Read
            ]
        );
        assert!(!o.known(&"x".repeat(64), "s3:cd"), "past its limit");
    }
}
