//! `numeric` without a decimal crate: decimal text parsed into digits and a scale,
//! rounded to a column's scale as PostgreSQL rounds (half away from zero), checked
//! against its precision, normalised for hashing, and the binary wire format both ways
//! (base-10000 digit groups), so that a `numeric` is decoded by its type rather than
//! cast to text by the server.

/// A finite decimal: `digits` (no leading zeros; empty for zero) × 10^-`scale`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal {
    pub negative: bool,
    pub digits: Vec<u8>,
    /// Digits after the point; the display scale.
    pub scale: usize,
}

impl Decimal {
    /// Parse `[+-]digits[.digits][e[+-]digits]` (spaces around ignored). The display
    /// scale is PostgreSQL's: digits after the point minus the exponent, at least 0.
    pub fn parse(s: &str) -> Option<Decimal> {
        let s = s.trim();
        let (negative, s) = match s.as_bytes().first()? {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let (mantissa, exp) = match s.find(['e', 'E']) {
            Some(i) => (&s[..i], s[i + 1..].parse::<i64>().ok()?),
            None => (s, 0),
        };
        if !(-100_000..=100_000).contains(&exp) {
            return None;
        }
        let (int, frac) = match mantissa.split_once('.') {
            Some((i, f)) => (i, f),
            None => (mantissa, ""),
        };
        if int.is_empty() && frac.is_empty()
            || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let mut digits: Vec<u8> = int.bytes().chain(frac.bytes()).map(|b| b - b'0').collect();
        let mut scale = frac.len() as i64 - exp;
        if scale < 0 {
            digits.extend(std::iter::repeat_n(0, (-scale) as usize));
            scale = 0;
        }
        let mut d = Decimal {
            negative,
            digits,
            scale: scale as usize,
        };
        d.trim_leading();
        Some(d)
    }

    fn trim_leading(&mut self) {
        let keep = self.digits.len() - self.scale.min(self.digits.len());
        let lead = self.digits[..keep].iter().take_while(|d| **d == 0).count();
        self.digits.drain(..lead);
        if self.digits.iter().all(|d| *d == 0) {
            self.negative = false;
        }
    }

    fn is_zero(&self) -> bool {
        self.digits.iter().all(|d| *d == 0)
    }

    /// Digits before the point, leading zeros not counted.
    pub fn integer_digits(&self) -> usize {
        let int = self.digits.len().saturating_sub(self.scale);
        self.digits[..int].iter().skip_while(|d| **d == 0).count()
    }

    /// Round to `scale` digits after the point (negative: to tens, hundreds...), half
    /// away from zero as `numeric` does; the display scale becomes `max(scale, 0)`.
    pub fn round(&self, scale: i32) -> Decimal {
        let mut digits = self.digits.clone();
        // Pad so that there are at least `scale` fraction digits.
        let mut cur = self.scale as i64;
        let want = i64::from(scale);
        if want > cur {
            digits.extend(std::iter::repeat_n(0, (want - cur) as usize));
            cur = want;
        }
        let drop = (cur - want) as usize;
        if drop > 0 {
            if drop > digits.len() {
                digits = vec![0];
            } else {
                let cut = digits.len() - drop;
                let up = digits[cut] >= 5;
                digits.truncate(cut);
                if up {
                    let mut i = digits.len();
                    loop {
                        if i == 0 {
                            digits.insert(0, 1);
                            break;
                        }
                        i -= 1;
                        if digits[i] == 9 {
                            digits[i] = 0;
                        } else {
                            digits[i] += 1;
                            break;
                        }
                    }
                }
            }
            // A negative scale: the dropped places are zeros again.
            if want < 0 {
                digits.extend(std::iter::repeat_n(0, (-want) as usize));
            }
        }
        let mut d = Decimal {
            negative: self.negative,
            digits,
            scale: want.max(0) as usize,
        };
        d.trim_leading();
        d
    }

    /// The text `numeric_out` prints: every digit of the display scale, no exponent.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(self.digits.len() + 3);
        if self.negative && !self.is_zero() {
            out.push('-');
        }
        let n = self.digits.len();
        let int = n.saturating_sub(self.scale);
        if int == 0 {
            out.push('0');
        } else {
            out.extend(self.digits[..int].iter().map(|d| (b'0' + d) as char));
        }
        if self.scale > 0 {
            out.push('.');
            for _ in n..self.scale {
                out.push('0');
            }
            let from = n.saturating_sub(self.scale);
            out.extend(self.digits[from..].iter().map(|d| (b'0' + d) as char));
        }
        out
    }
}

/// The canonical text of a numeric: no trailing fractional zeros, no `-0`.
/// `NaN`, `Infinity` and `-Infinity` are themselves.
pub fn normalize(text: &str) -> String {
    match Decimal::parse(text) {
        None => text.to_owned(),
        Some(mut d) => {
            while d.scale > 0 && d.digits.last() == Some(&0) {
                d.digits.pop();
                d.scale -= 1;
            }
            if d.is_zero() {
                d.negative = false;
            }
            d.to_text()
        }
    }
}

const POS: u16 = 0x0000;
const NEG: u16 = 0x4000;
const NAN: u16 = 0xC000;
const PINF: u16 = 0xD000;
const NINF: u16 = 0xF000;

/// Decode `numeric`'s binary wire format into the text `numeric_out` prints.
pub fn decode_binary(raw: &[u8]) -> Result<String, String> {
    let u16_at = |i: usize| -> Result<u16, String> {
        raw.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "numeric: truncated".to_owned())
    };
    let ndigits = u16_at(0)? as usize;
    let weight = u16_at(2)? as i16 as i64;
    let sign = u16_at(4)?;
    let dscale = u16_at(6)? as usize;
    match sign {
        NAN => return Ok("NaN".into()),
        PINF => return Ok("Infinity".into()),
        NINF => return Ok("-Infinity".into()),
        POS | NEG => {}
        other => return Err(format!("numeric: unknown sign {other:#x}")),
    }
    let mut groups = Vec::with_capacity(ndigits);
    for k in 0..ndigits {
        let g = u16_at(8 + 2 * k)?;
        if g >= 10_000 {
            return Err(format!("numeric: digit group {g} out of range"));
        }
        groups.push(g);
    }
    // Group k stands at 10000^(weight - k). Build the integer and fraction digits.
    let mut int = String::new();
    let mut frac = String::new();
    let group_at = |e: i64| -> u16 {
        let k = weight - e;
        if k >= 0 && (k as usize) < groups.len() {
            groups[k as usize]
        } else {
            0
        }
    };
    if weight >= 0 {
        for e in (0..=weight).rev() {
            let g = group_at(e);
            if int.is_empty() {
                if g != 0 {
                    int.push_str(&g.to_string());
                }
            } else {
                int.push_str(&format!("{g:04}"));
            }
        }
    }
    if int.is_empty() {
        int.push('0');
    }
    let mut e = -1i64;
    while frac.len() < dscale {
        frac.push_str(&format!("{:04}", group_at(e)));
        e -= 1;
    }
    frac.truncate(dscale);
    let zero = int == "0" && frac.bytes().all(|b| b == b'0');
    let mut out = String::new();
    if sign == NEG && !zero {
        out.push('-');
    }
    out.push_str(&int);
    if dscale > 0 {
        out.push('.');
        out.push_str(&frac);
    }
    Ok(out)
}

/// Encode decimal text (or `NaN`, `Infinity`, `-Infinity`) as `numeric`'s binary wire
/// format.
pub fn encode_binary(text: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let special = match text.trim() {
        "NaN" => Some(NAN),
        "Infinity" => Some(PINF),
        "-Infinity" => Some(NINF),
        _ => None,
    };
    if let Some(sign) = special {
        for v in [0u16, 0, sign, 0] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        return Ok(());
    }
    let d = Decimal::parse(text).ok_or_else(|| format!("{text:?} is not a decimal"))?;
    if d.scale > 0x3FFF {
        return Err(format!("{text:?}: too many digits after the point"));
    }
    // Align the digits on base-10000 groups around the point.
    let int_len = d.digits.len().saturating_sub(d.scale);
    let int_digits = &d.digits[..int_len];
    let frac_digits = &d.digits[int_len..];
    let mut padded_int = vec![0u8; (4 - int_len % 4) % 4];
    padded_int.extend_from_slice(int_digits);
    let mut padded_frac = vec![0u8; d.scale - frac_digits.len()];
    padded_frac.extend_from_slice(frac_digits);
    padded_frac.extend(std::iter::repeat_n(0, (4 - d.scale % 4) % 4));
    let group = |c: &[u8]| c.iter().fold(0u16, |a, d| a * 10 + u16::from(*d));
    let mut groups: Vec<u16> = padded_int.chunks(4).map(group).collect();
    let int_groups = groups.len() as i64;
    groups.extend(padded_frac.chunks(4).map(group));
    let mut weight = int_groups - 1;
    // Strip leading and trailing zero groups.
    let lead = groups.iter().take_while(|g| **g == 0).count();
    groups.drain(..lead);
    weight -= lead as i64;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    if !(i64::from(i16::MIN)..=i64::from(i16::MAX)).contains(&weight) || groups.len() > 0xFFFF {
        return Err(format!("{text:?} is out of numeric's range"));
    }
    let sign = if d.negative && !groups.is_empty() {
        NEG
    } else {
        POS
    };
    for v in [
        groups.len() as u16,
        weight as i16 as u16,
        sign,
        d.scale as u16,
    ] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    for g in groups {
        out.extend_from_slice(&g.to_be_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> String {
        Decimal::parse(s).unwrap().to_text()
    }

    #[test]
    fn parses_with_postgres_display_scale() {
        assert_eq!(t("1.50"), "1.50");
        assert_eq!(t("1e2"), "100");
        assert_eq!(t("1.5e1"), "15");
        assert_eq!(t("100e-1"), "10.0");
        assert_eq!(t("-0.0"), "0.0");
        assert_eq!(t("007.5"), "7.5");
        assert_eq!(t(".5"), "0.5");
        assert_eq!(t("5."), "5");
        assert_eq!(t(" +3 "), "3");
        for bad in ["", ".", "1.2.3", "abc", "1e", "--1", "1 2", "NaN"] {
            assert!(Decimal::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn rounds_half_away_from_zero() {
        let r = |s: &str, scale: i32| Decimal::parse(s).unwrap().round(scale).to_text();
        assert_eq!(r("1.005", 2), "1.01");
        assert_eq!(r("1.004", 2), "1.00");
        assert_eq!(r("-1.005", 2), "-1.01");
        assert_eq!(r("2.5", 0), "3");
        assert_eq!(r("-2.5", 0), "-3");
        assert_eq!(r("9.995", 2), "10.00");
        assert_eq!(r("1.5", 3), "1.500");
        assert_eq!(r("1234", -2), "1200");
        assert_eq!(r("1250", -2), "1300");
        assert_eq!(r("0.0004", 3), "0.000");
        assert_eq!(r("-0.0004", 3), "0.000");
        assert_eq!(Decimal::parse("12.345").unwrap().integer_digits(), 2);
        assert_eq!(Decimal::parse("0.5").unwrap().integer_digits(), 0);
    }

    #[test]
    fn normalizes() {
        assert_eq!(normalize("1.50"), "1.5");
        assert_eq!(normalize("1.000"), "1");
        assert_eq!(normalize("-0.00"), "0");
        assert_eq!(normalize("100"), "100");
        assert_eq!(normalize("NaN"), "NaN");
    }

    #[test]
    fn binary_round_trip() {
        for s in [
            "0",
            "0.00",
            "1",
            "-1",
            "12345678.9",
            "0.0001",
            "0.00001",
            "-123.4500",
            "10000",
            "99999999999999999999.000000000000000001",
            "1.5",
            "NaN",
            "Infinity",
            "-Infinity",
        ] {
            let mut buf = Vec::new();
            encode_binary(s, &mut buf).unwrap();
            let back = decode_binary(&buf).unwrap();
            let expect = if s.starts_with(['N', 'I', '-']) && Decimal::parse(s).is_none() {
                s.to_owned()
            } else {
                t(s)
            };
            assert_eq!(back, expect, "{s}");
        }
    }
}
