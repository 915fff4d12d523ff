//! Errors of the core layer. Adapters map them to their own status codes in one place.

use std::collections::BTreeMap;

/// An error raised by a store implementation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object asked for does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A uniqueness or integrity rule refused the write (e.g. a username taken).
    #[error("{0}")]
    Conflict(String),
    /// The database cannot be reached right now; callers should answer 503 and retry later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Anything else the database reported.
    #[error("database error: {0}")]
    Database(String),
}

/// Field-level validation errors, keyed by field name (`non_field_errors` for the whole form).
pub type FieldErrors = BTreeMap<String, Vec<String>>;

/// The error type of core services.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Input was refused; the message is safe to show to the user.
    #[error("{message}")]
    Invalid { message: String, fields: FieldErrors },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The caller is not allowed to do this.
    #[error("{0}")]
    Forbidden(String),
    /// Something that should not happen (e.g. a corrupt stored value).
    #[error("internal error: {0}")]
    Internal(String),
}

impl CoreError {
    pub fn invalid(message: impl Into<String>) -> Self {
        CoreError::Invalid { message: message.into(), fields: FieldErrors::new() }
    }

    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut fields = FieldErrors::new();
        fields.insert(field.to_string(), vec![message.clone()]);
        CoreError::Invalid { message, fields }
    }

    /// Store NotFound/Conflict become the core's own variants so adapters see one shape.
    pub fn from_store(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => CoreError::NotFound(what),
            StoreError::Conflict(what) => CoreError::Conflict(what),
            other => CoreError::Store(other),
        }
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;
pub type StoreResult<T> = std::result::Result<T, StoreError>;
