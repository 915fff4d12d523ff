//! Request metrics by route and status, recorded by the `meta` middleware (the recorder is
//! installed by the binary).

use axum::http::Method;
use metrics::{Counter, Histogram};
use std::cell::RefCell;
use std::collections::HashMap;

/// A route's handles per (method, status).
type RouteHandles = HashMap<(&'static str, u16), (Counter, Histogram)>;

thread_local! {
    /// Handles by route pattern: looking a labelled metric up in the recorder allocates and
    /// hashes its labels, so each worker thread does it once per combination, not per request.
    static HANDLES: RefCell<HashMap<String, RouteHandles>> = RefCell::new(HashMap::new());
}

/// The method as a label: the standard ones by name, any other as `other`, so that clients
/// inventing methods cannot grow the number of series.
pub(crate) fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

pub(crate) fn record(route: &str, method: &'static str, status: u16, seconds: f64) {
    HANDLES.with_borrow_mut(|by_route| {
        if !by_route.contains_key(route) {
            by_route.insert(route.to_owned(), HashMap::new());
        }
        let Some(per_route) = by_route.get_mut(route) else { return };
        let (counter, histogram) = per_route.entry((method, status)).or_insert_with(|| {
            let counter = metrics::counter!("http_requests_total", "route" => route.to_owned(), "method" => method, "status" => status.to_string());
            let histogram = metrics::histogram!("http_request_duration_seconds", "route" => route.to_owned());
            (counter, histogram)
        });
        counter.increment(1);
        histogram.record(seconds);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invented_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"FROB").unwrap()), "other");
        assert_eq!(method_label(&Method::from_bytes(b"FROB2").unwrap()), "other");
    }
}
