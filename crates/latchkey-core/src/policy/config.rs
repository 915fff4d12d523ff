//! Reading a policy's JSON config with errors that name the offending field.

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::{CoreError, Result};

pub(super) struct Fields<'a> {
    map: Option<&'a Map<String, Value>>,
}

fn wrong(field: &str, what: &str) -> CoreError {
    CoreError::invalid_field(field, format!("{field} must be {what}."))
}

impl<'a> Fields<'a> {
    /// `null` is an empty config (every field at its default).
    pub fn new(config: &'a Value) -> Result<Self> {
        match config {
            Value::Null => Ok(Fields { map: None }),
            Value::Object(map) => Ok(Fields { map: Some(map) }),
            _ => Err(CoreError::invalid_field("config", "The policy's config must be a JSON object.")),
        }
    }

    /// Refuses keys outside `allowed`: a typo must not silently become a default.
    pub fn only(&self, allowed: &[&str]) -> Result<()> {
        if let Some(key) = self.map.into_iter().flat_map(|m| m.keys()).find(|k| !allowed.contains(&k.as_str())) {
            return Err(CoreError::invalid_field(
                key,
                format!("Unknown field {key:?}; expected one of: {}.", allowed.join(", ")),
            ));
        }
        Ok(())
    }

    fn get(&self, field: &str) -> Option<&'a Value> {
        self.map.and_then(|m| m.get(field)).filter(|v| !v.is_null())
    }

    pub fn bool_or(&self, field: &str, default: bool) -> Result<bool> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| wrong(field, "true or false")),
        }
    }

    pub fn opt_u64(&self, field: &str) -> Result<Option<u64>> {
        self.get(field).map(|v| v.as_u64().ok_or_else(|| wrong(field, "a non-negative integer"))).transpose()
    }

    pub fn usize_or(&self, field: &str, default: usize) -> Result<usize> {
        match self.opt_u64(field)? {
            None => Ok(default),
            Some(n) => usize::try_from(n).ok().filter(|n| *n <= 4096).ok_or_else(|| wrong(field, "at most 4096")),
        }
    }

    pub fn i64_or(&self, field: &str, default: i64) -> Result<i64> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v.as_i64().ok_or_else(|| wrong(field, "an integer")),
        }
    }

    pub fn opt_str(&self, field: &str) -> Result<Option<String>> {
        self.get(field).map(|v| v.as_str().map(str::to_string).ok_or_else(|| wrong(field, "a string"))).transpose()
    }

    pub fn required_str(&self, field: &str) -> Result<String> {
        self.opt_str(field)?.ok_or_else(|| CoreError::invalid_field(field, format!("{field} is required.")))
    }

    pub fn required_uuid(&self, field: &str) -> Result<Uuid> {
        let s = self.required_str(field)?;
        Uuid::parse_str(&s).map_err(|_| wrong(field, "a UUID"))
    }

    pub fn required_uuid_list(&self, field: &str) -> Result<Vec<Uuid>> {
        let Some(v) = self.get(field) else {
            return Err(CoreError::invalid_field(field, format!("{field} is required.")));
        };
        let items = v.as_array().ok_or_else(|| wrong(field, "a list of UUIDs"))?;
        items
            .iter()
            .map(|i| i.as_str().and_then(|s| Uuid::parse_str(s).ok()).ok_or_else(|| wrong(field, "a list of UUIDs")))
            .collect()
    }
}
