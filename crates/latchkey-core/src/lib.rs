//! Latchkey's core: the domain model and the services every protocol adapter calls.
//! It knows no web framework, no LDAP codec and no SQL.

pub mod clock;
pub mod error;
pub mod model;
pub mod store;

pub use error::{CoreError, Result, StoreError};
