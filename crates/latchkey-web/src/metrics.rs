//! Request metrics by route and status (the recorder is installed by the binary).

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics::{Counter, Histogram};
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Instant;

/// A route's handles per (method, status).
type RouteHandles = HashMap<(&'static str, u16), (Counter, Histogram)>;

thread_local! {
    /// Handles by route pattern: looking a labelled metric up in the recorder allocates and
    /// hashes its labels, so each worker thread does it once per combination, not per request.
    static HANDLES: RefCell<HashMap<String, RouteHandles>> = RefCell::new(HashMap::new());
}

/// The method as a label: the standard ones by name, any other as `other`, so that clients
/// inventing methods cannot grow the number of series.
fn method_label(method: &Method) -> &'static str {
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

fn record(route: &str, method: &'static str, status: u16, seconds: f64) {
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

pub async fn middleware(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_label(req.method());
    // The route pattern, never the raw path: unbounded label values would grow memory.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let response = next.run(req).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    record(route, method, response.status().as_u16(), start.elapsed().as_secs_f64());
    response
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
