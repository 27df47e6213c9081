//! The static compatibility table: can a target column of type [`PgType`] hold the
//! values of a source column of kind [`SourceKind`]? `Ok` (as they are), `Convert` (each
//! value converted, and a value that does not convert is an invalid record of its
//! session), or `Mismatch` (`schema_mismatch`: no value could go there without loss).
//! The per-value check is [`super::convert`]; this table is what preflight, `init` and the
//! planning pass say before reading a single row.

use serde::Serialize;

use super::PgType;

/// What a source column holds, as its declared type and a scan of its values say
/// (`source::shape` decides it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Integers (any but only 0/1 ones).
    Integer,
    /// Reals, or a mix of reals and integers.
    Real,
    /// Booleans: BOOLEAN declared, or only 0/1.
    Boolean,
    Text,
    /// Timestamps without a zone (SQLAlchemy's text).
    NaiveTimestamp,
    /// Timestamps with a zone, or epoch numbers.
    AwareTimestamp,
    Date,
    Json,
    Blob,
    /// No value at all (every row NULL, or no row): anything fits.
    Empty,
}

/// The verdict for one source kind and one target type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "snake_case")]
pub enum Compat {
    Ok,
    /// Fits with each value converted; the reason says how and what may be refused.
    Convert(&'static str),
    /// Cannot hold these values: the reason names why (for `schema_mismatch`).
    Mismatch(&'static str),
}

impl Compat {
    pub fn fits(&self) -> bool {
        !matches!(self, Compat::Mismatch(_))
    }
}

/// Whether a target column of type `ty` can hold the values of a `kind` source column.
pub fn compat(kind: SourceKind, ty: &PgType) -> Compat {
    use Compat::*;
    use PgType as T;
    use SourceKind as K;
    match (kind, ty) {
        (K::Empty, _) => Ok,
        // Text columns hold anything that is text or a number's text.
        (K::Text, T::Text) => Ok,
        (K::Text, T::Varchar(_) | T::Char(_)) => Convert("each value must fit the column's length"),
        (K::Blob, t) if t.is_text() => {
            Convert("each value must be UTF-8 text (and fit the column's length)")
        }
        // A text column where a number lives: the application's two schemas disagree
        // (it would read back strings where it wrote numbers).
        (K::Integer | K::Real, t) if t.is_text() => {
            Mismatch("the source column holds numbers (the application's two schemas disagree)")
        }
        (K::Boolean, t) if t.is_text() => {
            Mismatch("the source column holds booleans (the application's two schemas disagree)")
        }
        (_, T::Text) => Convert("written as the source's text"),
        (_, T::Varchar(_) | T::Char(_)) => {
            Convert("written as the source's text; each value must fit the column's length")
        }

        (K::Integer, T::BigInt) => Ok,
        (K::Integer | K::Boolean, T::SmallInt | T::Integer) => {
            Convert("each value must be within the column's range")
        }
        (K::Boolean, T::BigInt) => Ok,
        (K::Real, T::SmallInt | T::Integer | T::BigInt) => {
            Convert("each value must be a whole number within the column's range")
        }
        (K::Text, T::SmallInt | T::Integer | T::BigInt) => {
            Convert("each value must be a whole number's text")
        }

        (K::Real, T::Double) => Ok,
        (K::Integer | K::Boolean, T::Double) => {
            Convert("each integer must be exact in double precision (at most 2^53)")
        }
        (K::Integer | K::Boolean | K::Real, T::Real) => {
            Convert("rounded to single precision, as PostgreSQL stores it")
        }
        (K::Integer | K::Boolean | K::Real, T::Numeric(_)) => {
            Convert("rounded to the column's scale; each value must fit its precision")
        }
        (K::Text, T::Double | T::Real | T::Numeric(_)) => {
            Convert("each value must be a number's text")
        }

        (K::Boolean, T::Boolean) => Ok,
        (K::Integer | K::Text, T::Boolean) => Convert("each value must be 0/1 or true/false"),

        (K::NaiveTimestamp, T::Timestamp(_)) | (K::AwareTimestamp, T::TimestampTz(_)) => Ok,
        (K::AwareTimestamp, T::Timestamp(_)) => Convert("written as its UTC wall clock (SPEC §9)"),
        (K::NaiveTimestamp, T::TimestampTz(_)) => Convert("taken as UTC (SPEC §1)"),
        (K::Date, T::Timestamp(_) | T::TimestampTz(_)) => Convert("at midnight (UTC)"),
        (K::Text | K::Integer | K::Real, T::Timestamp(_) | T::TimestampTz(_)) => {
            Convert("each value must be a timestamp (text, or epoch seconds / milliseconds)")
        }
        (K::Date, T::Date) => Ok,
        (K::Text | K::NaiveTimestamp | K::AwareTimestamp, T::Date) => {
            Convert("each value must be a date, or a timestamp at midnight exactly")
        }

        (K::Json, T::Json | T::Jsonb) => Ok,
        (K::Text, T::Json | T::Jsonb) => Convert("each value must be valid JSON text"),
        (K::Integer | K::Real, T::Json | T::Jsonb) => Convert("written as a JSON number"),

        (K::Blob, T::Bytea) => Ok,
        (K::Text, T::Bytea) => Convert("written as its UTF-8 bytes"),
        (K::Text | K::Blob, T::Uuid) => Convert("each value must be a UUID"),

        (_, T::Bytea) => Mismatch("only blobs and text can go into bytea"),
        (_, T::Uuid) => Mismatch("only UUID text can go into uuid"),
        (_, T::Json | T::Jsonb) => Mismatch("these values are not JSON documents"),
        (_, T::Date) => Mismatch("these values are not dates"),
        (_, T::Timestamp(_) | T::TimestampTz(_)) => Mismatch("these values are not timestamps"),
        (_, T::Boolean) => Mismatch("these values are not booleans"),
        (_, T::SmallInt | T::Integer | T::BigInt) => Mismatch("these values are not whole numbers"),
        (_, T::Real | T::Double | T::Numeric(_)) => Mismatch("these values are not numbers"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(kind: SourceKind, ty: &str) -> Compat {
        compat(kind, &PgType::parse(ty).unwrap())
    }

    #[test]
    fn the_application_schema_fits_its_own_postgres_tables() {
        use SourceKind::*;
        // agent_council's columns against what its ORM makes on PostgreSQL.
        assert_eq!(
            v(Text, "character varying"),
            Compat::Convert("each value must fit the column's length")
        );
        assert!(v(Text, "text").fits());
        assert_eq!(v(NaiveTimestamp, "timestamp without time zone"), Compat::Ok);
        assert_eq!(v(Boolean, "boolean"), Compat::Ok);
        assert_eq!(v(Real, "double precision"), Compat::Ok);
        assert!(v(Integer, "integer").fits());
        assert_eq!(v(Json, "jsonb"), Compat::Ok);
    }

    #[test]
    fn mismatches_say_why() {
        use SourceKind::*;
        for (k, t) in [
            (Real, "boolean"),
            (Blob, "integer"),
            (Json, "integer"),
            (NaiveTimestamp, "integer"),
            (Integer, "bytea"),
            (Boolean, "timestamp with time zone"),
            (Real, "uuid"),
            (Json, "date"),
        ] {
            assert!(matches!(v(k, t), Compat::Mismatch(_)), "{k:?} → {t}");
        }
        // A text column where a number lives: the two schemas disagree (issue 17 (d)).
        assert!(matches!(v(Real, "text"), Compat::Mismatch(_)));
        assert!(matches!(
            v(Integer, "character varying(20)"),
            Compat::Mismatch(_)
        ));
        assert!(v(NaiveTimestamp, "text").fits());
        // Text into a number column converts value by value.
        assert!(matches!(v(Text, "double precision"), Compat::Convert(_)));
        assert_eq!(v(Empty, "uuid"), Compat::Ok);
    }
}
