//! Small helpers shared by the trait implementations: typed arguments for dynamic SQL, reading
//! portable column types back into model types, and list queries (search, ordering, paging).

use chrono::{DateTime, Utc};
use latchkey_core::model::{ListQuery, Page};
use latchkey_core::StoreError;
use serde_json::Value;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{Any, AnyPool, Row};
use uuid::Uuid;

use crate::error::{corrupt, db_err};

pub(crate) type AnyQuery<'q> = sqlx::query::Query<'q, Any, AnyArguments<'q>>;
pub(crate) type StoreResult<T> = Result<T, StoreError>;

/// A bind value for SQL assembled at run time. Nulls keep their type: PostgreSQL needs to know it.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Text(Option<String>),
    Int(Option<i64>),
    Bool(Option<bool>),
}

impl Arg {
    pub fn text(s: impl Into<String>) -> Arg {
        Arg::Text(Some(s.into()))
    }

    pub fn bind(self, q: AnyQuery<'_>) -> AnyQuery<'_> {
        match self {
            Arg::Text(v) => q.bind(v),
            Arg::Int(v) => q.bind(v),
            Arg::Bool(v) => q.bind(v),
        }
    }
}

pub(crate) fn bind_all(mut q: AnyQuery<'_>, args: Vec<Arg>) -> AnyQuery<'_> {
    for a in args {
        q = a.bind(q);
    }
    q
}

/// Times are stored as unix milliseconds.
pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn opt_ms(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(ms)
}

/// What a time reads back as after a round trip through the store.
pub(crate) fn stored_time(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

pub(crate) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

pub(crate) fn to_json_text(v: &Value) -> String {
    // Serialising a `Value` cannot fail (its map keys are strings).
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_string())
}

/// Typed reads from a row, with errors naming the column.
pub(crate) trait RowExt {
    fn text(&self, col: &str) -> StoreResult<String>;
    fn opt_text(&self, col: &str) -> StoreResult<Option<String>>;
    fn int(&self, col: &str) -> StoreResult<i64>;
    fn opt_int(&self, col: &str) -> StoreResult<Option<i64>>;
    fn flag(&self, col: &str) -> StoreResult<bool>;
    fn opt_flag(&self, col: &str) -> StoreResult<Option<bool>>;
    fn uuid(&self, col: &str) -> StoreResult<Uuid>;
    fn opt_uuid(&self, col: &str) -> StoreResult<Option<Uuid>>;
    fn time(&self, col: &str) -> StoreResult<DateTime<Utc>>;
    fn opt_time(&self, col: &str) -> StoreResult<Option<DateTime<Utc>>>;
    fn json(&self, col: &str) -> StoreResult<Value>;
}

fn read_err(col: &str, e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::ColumnNotFound(_) | sqlx::Error::Decode(_) => {
            corrupt(format!("column {col}: {e}"))
        }
        other => db_err(other),
    }
}

fn required<T>(col: &str, v: Option<T>) -> StoreResult<T> {
    v.ok_or_else(|| corrupt(format!("column {col} is NULL")))
}

fn time_from_ms(col: &str, v: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_millis(v).ok_or_else(|| corrupt(format!("column {col}: time {v} out of range")))
}

impl RowExt for AnyRow {
    fn text(&self, col: &str) -> StoreResult<String> {
        required(col, self.opt_text(col)?)
    }

    fn opt_text(&self, col: &str) -> StoreResult<Option<String>> {
        self.try_get::<Option<String>, _>(col).map_err(|e| read_err(col, e))
    }

    fn int(&self, col: &str) -> StoreResult<i64> {
        required(col, self.opt_int(col)?)
    }

    fn opt_int(&self, col: &str) -> StoreResult<Option<i64>> {
        self.try_get::<Option<i64>, _>(col).map_err(|e| read_err(col, e))
    }

    fn flag(&self, col: &str) -> StoreResult<bool> {
        required(col, self.opt_flag(col)?)
    }

    fn opt_flag(&self, col: &str) -> StoreResult<Option<bool>> {
        // PostgreSQL has BOOLEAN; SQLite stores 0/1 in an INTEGER column (the Any driver cannot
        // read SQLite's BOOLEAN declaration).
        match self.try_get::<Option<bool>, _>(col) {
            Ok(v) => Ok(v),
            Err(_) => Ok(self.opt_int(col)?.map(|i| i != 0)),
        }
    }

    fn uuid(&self, col: &str) -> StoreResult<Uuid> {
        required(col, self.opt_uuid(col)?)
    }

    fn opt_uuid(&self, col: &str) -> StoreResult<Option<Uuid>> {
        self.opt_text(col)?.map(|s| Uuid::parse_str(&s).map_err(|e| corrupt(format!("column {col}: {e}")))).transpose()
    }

    fn time(&self, col: &str) -> StoreResult<DateTime<Utc>> {
        time_from_ms(col, self.int(col)?)
    }

    fn opt_time(&self, col: &str) -> StoreResult<Option<DateTime<Utc>>> {
        self.opt_int(col)?.map(|v| time_from_ms(col, v)).transpose()
    }

    fn json(&self, col: &str) -> StoreResult<Value> {
        let s = self.text(col)?;
        serde_json::from_str(&s).map_err(|e| corrupt(format!("column {col}: {e}")))
    }
}

/// Escapes `%`, `_` and the escape character itself for `LIKE … ESCAPE '\'`.
pub(crate) fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A WHERE clause under construction; placeholders are numbered in the order arguments are added.
#[derive(Default)]
pub(crate) struct Filter {
    clauses: Vec<String>,
    pub args: Vec<Arg>,
}

impl Filter {
    pub fn new() -> Filter {
        Filter::default()
    }

    /// Adds `template` with `?` replaced by this argument's placeholder (every `?` refers to it).
    pub fn add(&mut self, template: &str, arg: Arg) {
        self.args.push(arg);
        let placeholder = format!("${}", self.args.len());
        self.clauses.push(template.replace('?', &placeholder));
    }

    /// Case-insensitive substring match on any of `columns`.
    pub fn search(&mut self, columns: &[&str], term: Option<&str>) {
        let Some(term) = term.map(str::trim).filter(|t| !t.is_empty()) else { return };
        let any = columns.iter().map(|c| format!("lower({c}) LIKE lower(?) ESCAPE '\\'")).collect::<Vec<_>>();
        self.add(&format!("({})", any.join(" OR ")), Arg::text(format!("%{}%", like_escape(term))));
    }

    pub fn where_sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }
}

/// A column a list may be ordered by.
pub(crate) struct SortField {
    /// The name clients use (`?ordering=name`, `-name`).
    pub name: &'static str,
    pub column: &'static str,
    /// Text sorts case-insensitively first, so "bob" sits next to "Bob".
    pub text: bool,
    pub nullable: bool,
}

/// Builds ORDER BY from a client's `ordering`. An unknown field falls back to `default`
/// (a typo in a query string should not turn a list into an error). NULLs sort last either way,
/// on both engines; `tiebreak` keeps pages stable.
pub(crate) fn order_by(fields: &[SortField], ordering: Option<&str>, default: &str, tiebreak: &str) -> String {
    let requested = ordering.map(str::trim).filter(|s| !s.is_empty()).unwrap_or(default);
    let (desc, name) = match requested.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, requested),
    };
    let (field, desc) = match fields.iter().find(|f| f.name == name) {
        Some(f) => (f, desc),
        None => {
            let (d, n) = match default.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, default),
            };
            match fields.iter().find(|f| f.name == n) {
                Some(f) => (f, d),
                None => return tiebreak.to_string(),
            }
        }
    };
    let dir = if desc { "DESC" } else { "ASC" };
    let mut parts = Vec::new();
    if field.nullable {
        parts.push(format!("({} IS NULL) ASC", field.column));
    }
    if field.text {
        parts.push(format!("lower({}) {dir}", field.column));
    }
    parts.push(format!("{} {dir}", field.column));
    parts.push(tiebreak.to_string());
    parts.join(", ")
}

/// Runs a paged list query: `select` is `SELECT cols FROM table`, `from` is `FROM table`.
pub(crate) async fn list_page<T>(
    pool: &AnyPool,
    select: &str,
    from: &str,
    filter: Filter,
    order: &str,
    query: &ListQuery,
    map: impl Fn(&AnyRow) -> StoreResult<T>,
) -> StoreResult<Page<T>> {
    let where_sql = filter.where_sql();
    let n = filter.args.len();
    let count_sql = format!("SELECT COUNT(*) AS n {from}{where_sql}");
    let total =
        bind_all(sqlx::query(&count_sql), filter.args.clone()).fetch_one(pool).await.map_err(db_err)?.int("n")?;
    let list_sql = format!("{select}{where_sql} ORDER BY {order} LIMIT ${} OFFSET ${}", n + 1, n + 2);
    let limit = i64::from(query.page_size);
    let offset = i64::try_from(query.offset()).unwrap_or(i64::MAX);
    let rows =
        bind_all(sqlx::query(&list_sql), filter.args).bind(limit).bind(offset).fetch_all(pool).await.map_err(db_err)?;
    let items = rows.iter().map(map).collect::<StoreResult<Vec<T>>>()?;
    Ok(Page { items, total: u64::try_from(total).unwrap_or(0) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: &[SortField] = &[
        SortField { name: "name", column: "name", text: true, nullable: false },
        SortField { name: "created_at", column: "created_at", text: false, nullable: false },
        SortField { name: "email", column: "email", text: true, nullable: true },
    ];

    #[test]
    fn ordering_from_allow_list() {
        assert_eq!(order_by(FIELDS, None, "name", "id ASC"), "lower(name) ASC, name ASC, id ASC");
        assert_eq!(order_by(FIELDS, Some("-created_at"), "name", "id ASC"), "created_at DESC, id ASC");
        assert_eq!(
            order_by(FIELDS, Some("-email"), "name", "id ASC"),
            "(email IS NULL) ASC, lower(email) DESC, email DESC, id ASC"
        );
        // Unknown fields (and injection attempts) fall back to the default.
        assert_eq!(order_by(FIELDS, Some("password_hash"), "-created_at", "id"), "created_at DESC, id");
        assert_eq!(order_by(FIELDS, Some("name; DROP TABLE users"), "name", "id"), "lower(name) ASC, name ASC, id");
    }

    #[test]
    fn like_patterns_are_escaped() {
        assert_eq!(like_escape(r"50%_a\b"), r"50\%\_a\\b");
    }

    #[test]
    fn filter_numbers_placeholders() {
        let mut f = Filter::new();
        f.add("a = ?", Arg::Int(Some(1)));
        f.search(&["x", "y"], Some("q"));
        f.search(&["x"], Some("  "));
        assert_eq!(
            f.where_sql(),
            " WHERE a = $1 AND (lower(x) LIKE lower($2) ESCAPE '\\' OR lower(y) LIKE lower($2) ESCAPE '\\')"
        );
        assert_eq!(f.args.len(), 2);
    }
}
