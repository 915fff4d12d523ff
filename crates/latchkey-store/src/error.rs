//! Mapping sqlx errors onto the core's `StoreError`, in one place.

use latchkey_core::StoreError;
use sqlx::error::{DatabaseError, ErrorKind};

/// The default mapping: connection trouble is `Unavailable` (callers answer 503 and retry),
/// everything else is `Database`.
pub(crate) fn db_err(e: sqlx::Error) -> StoreError {
    let unavailable = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => is_unavailable(d.as_ref()),
        _ => false,
    };
    if unavailable {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Database(e.to_string())
    }
}

fn is_unavailable(d: &dyn DatabaseError) -> bool {
    let Some(code) = d.code() else { return false };
    if d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().is_some() {
        // 08: connection exception, 53: insufficient resources (too many connections, disk full),
        // 57P01-57P03: server shutting down or not accepting connections yet.
        code.starts_with("08") || code.starts_with("53") || code.starts_with("57P")
    } else {
        // SQLite primary codes (the low byte of extended ones): BUSY and LOCKED once busy_timeout ran out.
        code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
    }
}

fn database_error(e: &sqlx::Error) -> Option<&dyn DatabaseError> {
    match e {
        sqlx::Error::Database(d) => Some(d.as_ref()),
        _ => None,
    }
}

/// Whether `e` is a unique violation of a constraint or index whose name (PostgreSQL) or
/// message (SQLite names the columns or the index) contains `needle`.
pub(crate) fn is_unique_violation_on(e: &sqlx::Error, needle: &str) -> bool {
    database_error(e).is_some_and(|d| {
        d.kind() == ErrorKind::UniqueViolation
            && (d.constraint().is_some_and(|c| c.contains(needle)) || d.message().contains(needle))
    })
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    database_error(e).is_some_and(|d| d.kind() == ErrorKind::UniqueViolation)
}

pub(crate) fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    database_error(e).is_some_and(|d| d.kind() == ErrorKind::ForeignKeyViolation)
}

/// A stored value that cannot be read back (corrupt or written by an incompatible version).
pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Database(format!("unreadable stored value: {what}"))
}
