//! Raising segments-core's errors as Postgres errors. The error type and
//! each kind's SQLSTATE live in segments-core (`SegmentsError::code`); this
//! room only turns them into an ERROR with that SQLSTATE and the hint.

use pgrx::pg_sys::errcodes::PgSqlErrorCode;

pub use segments_core::error::*;

/// PostgreSQL's packed form of a five-character SQLSTATE (MAKE_SQLSTATE).
fn packed_sqlstate(code: &str) -> PgSqlErrorCode {
    let packed = code.bytes().enumerate().fold(0i32, |acc, (i, c)| {
        acc + ((((c as i32) - ('0' as i32)) & 0x3F) << (6 * i))
    });
    PgSqlErrorCode::from(packed)
}

/// PostgreSQL's five-character form of a packed SQLSTATE (PGUNSIXBIT).
pub fn unpacked_sqlstate(packed: i32) -> String {
    (0..5)
        .map(|i| char::from((((packed >> (6 * i)) & 0x3F) as u8) + b'0'))
        .collect()
}

/// Why a segment's refresh (or live application) failed, with the
/// SQLSTATE of the error, as `segments.refresh_run` records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub sqlstate: String,
    pub message: String,
}

impl Failure {
    /// A failure of ours, not of the segment (XX000, internal_error).
    pub fn internal(message: &str) -> Failure {
        Failure {
            sqlstate: "XX000".into(),
            message: format!("segments: internal error: {message}"),
        }
    }
}

impl From<Reported> for Failure {
    fn from(reported: Reported) -> Failure {
        Failure {
            sqlstate: reported.error.code().into(),
            message: reported.error.to_string(),
        }
    }
}

impl From<SegmentsError> for Failure {
    fn from(error: SegmentsError) -> Failure {
        Reported::from(error).into()
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// `error.raise()` aborts the current transaction with the error's
/// SQLSTATE, message and hint.
pub trait Raise {
    fn raise(self) -> !;
}

impl Raise for Reported {
    fn raise(self) -> ! {
        let mut report = pgrx::pg_sys::panic::ErrorReport::new(
            packed_sqlstate(self.error.code()),
            self.error.to_string(),
            "segments",
        );
        if let Some(hint) = self.hint {
            report = report.set_hint(hint);
        }
        report.report(pgrx::pg_sys::elog::PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }
}

impl Raise for SegmentsError {
    fn raise(self) -> ! {
        Reported::from(self).raise()
    }
}

/// `result.or_raise()` turns an error into a Postgres ERROR.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T, E: Into<Reported>> OrRaise<T> for std::result::Result<T, E> {
    fn or_raise(self) -> T {
        match self {
            Ok(value) => value,
            Err(error) => error.into().raise(),
        }
    }
}

/// Raises 22P03 (invalid_binary_representation) for an unreadable bitmap.
pub fn corrupt(error: std::io::Error) -> ! {
    pgrx::pg_sys::panic::ErrorReport::new(
        PgSqlErrorCode::ERRCODE_INVALID_BINARY_REPRESENTATION,
        format!("segments: corrupt membership bitmap: {error}"),
        "segments",
    )
    .report(pgrx::pg_sys::elog::PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_pack_as_postgres_does() {
        use PgSqlErrorCode::*;
        assert_eq!(packed_sqlstate("22023"), ERRCODE_INVALID_PARAMETER_VALUE);
        assert_eq!(packed_sqlstate("42P01"), ERRCODE_UNDEFINED_TABLE);
        assert_eq!(
            packed_sqlstate("2BP01"),
            ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST
        );
        assert_eq!(packed_sqlstate("0A000"), ERRCODE_FEATURE_NOT_SUPPORTED);
        assert_eq!(packed_sqlstate("55006"), ERRCODE_OBJECT_IN_USE);
        for code in ["22023", "42P01", "2BP01", "0A000", "57014", "XX000"] {
            assert_eq!(unpacked_sqlstate(packed_sqlstate(code) as i32), code);
        }
    }
}
