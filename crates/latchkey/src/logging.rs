//! Logging to stderr with tracing-subscriber, as text or JSON.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. `level` is a level or an `EnvFilter`
/// directive list; a non-empty `RUST_LOG` overrides it. Calling it again
/// leaves the first subscriber in place.
pub fn init(level: &str, format: LogFormat) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (filter, rust_log_error) = filter(level, rust_log.as_deref());
    // Colour codes are noise in journald, docker logs and files.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    // An error here means a subscriber is already installed: keep it.
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let (Ok(()), Some(error)) = (installed, rust_log_error) {
        tracing::warn!("RUST_LOG is not a valid filter and is ignored: {error}");
    }
}

/// The filter to use, and why `RUST_LOG` was ignored if it was.
fn filter(level: &str, rust_log: Option<&str>) -> (EnvFilter, Option<String>) {
    let mut rust_log_error = None;
    if let Some(value) = rust_log.filter(|value| !value.trim().is_empty()) {
        match EnvFilter::builder().parse(value) {
            Ok(filter) => return (filter, None),
            Err(error) => rust_log_error = Some(error.to_string()),
        }
    }
    let filter = EnvFilter::builder()
        .parse(level)
        // The configuration has validated `level`; this is only a backstop.
        .unwrap_or_else(|_| EnvFilter::new("info"));
    (filter, rust_log_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_overrides_the_level() {
        let shown = |level, rust_log| {
            let (filter, error) = filter(level, rust_log);
            (filter.to_string(), error.is_some())
        };
        assert_eq!(shown("info", None), ("info".into(), false));
        assert_eq!(shown("warn", Some("debug")), ("debug".into(), false));
        assert_eq!(shown("warn", Some("  ")), ("warn".into(), false));
        assert_eq!(shown("info,latchkey=debug", None), ("latchkey=debug,info".into(), false));
        // An unparseable RUST_LOG falls back to the configured level, and says so.
        assert_eq!(shown("warn", Some("=[")), ("warn".into(), true));
    }

    #[test]
    fn init_twice_is_harmless() {
        init("off", LogFormat::Json);
        init("debug", LogFormat::Text);
        tracing::info!("logging works");
    }
}
