//! Validation of redirect targets (`next`, `rd`): only this instance's own pages.

use url::Url;

/// `next` if it is safe to send the browser there: a relative path on this host, or an
/// absolute http(s) URL with exactly the `origin` (`scheme://host[:port]`) of this instance.
pub fn safe_next(next: &str, origin: &str) -> Option<String> {
    let next = next.trim();
    if next.is_empty() || next.len() > 2048 || next.chars().any(|c| c.is_control()) {
        return None;
    }
    if let Some(rest) = next.strip_prefix('/') {
        // `//host` and `/\host` are protocol-relative in browsers: another site.
        if rest.starts_with('/') || rest.starts_with('\\') || next.contains('\\') {
            return None;
        }
        return Some(next.to_string());
    }
    let url = Url::parse(next).ok()?;
    let own = Url::parse(origin).ok()?;
    let same = matches!(url.scheme(), "http" | "https")
        && url.scheme() == own.scheme()
        && url.host_str() == own.host_str()
        && url.port_or_known_default() == own.port_or_known_default()
        && url.username().is_empty()
        && url.password().is_none();
    same.then(|| url.to_string())
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn accepts_own_pages_only() {
        let o = "https://auth.example.test";
        assert_eq!(safe_next("/if/user/", o).as_deref(), Some("/if/user/"));
        assert_eq!(safe_next("/a?b=c#d", o).as_deref(), Some("/a?b=c#d"));
        assert_eq!(safe_next("https://auth.example.test/x", o).as_deref(), Some("https://auth.example.test/x"));
        assert_eq!(safe_next("https://auth.example.test:443/x", o).as_deref(), Some("https://auth.example.test/x"));
        for bad in [
            "//evil.test/",
            "/\\evil.test",
            "https://evil.test/",
            "http://auth.example.test/",
            "https://auth.example.test.evil.test/",
            "https://auth.example.test:8443/",
            "https://user@auth.example.test/",
            "javascript:alert(1)",
            "",
            "/a\nb",
        ] {
            assert_eq!(safe_next(bad, o), None, "{bad}");
        }
    }
}
