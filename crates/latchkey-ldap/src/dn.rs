//! Distinguished names: escaping of values (RFC 4514), parsing, and one normalised form
//! (lower case, no optional spaces, canonical escapes) so DNs compare as strings.

/// One RDN: attribute type (lower case) and unescaped value.
pub type Rdn = (String, String);

/// Escapes an attribute value for use in a DN string.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 4);
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
            out.push(c);
        } else if c == '\0' {
            out.push_str("\\00");
        } else {
            out.push(c);
        }
    }
    out
}

/// Parses a DN into its RDNs, most specific first. `None` when it is not a valid DN.
/// Multi-valued RDNs (`a=1+b=2`) are not used by this directory and are refused.
pub fn parse(dn: &str) -> Option<Vec<Rdn>> {
    let mut rdns = Vec::new();
    if dn.trim().is_empty() {
        return Some(rdns);
    }
    let mut chars = dn.chars().peekable();
    loop {
        let mut attr = String::new();
        let mut has_value = false;
        for c in chars.by_ref() {
            if c == '=' {
                has_value = true;
                break;
            }
            attr.push(c);
        }
        let attr = attr.trim().to_ascii_lowercase();
        if !has_value || attr.is_empty() || !attr.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
            return None;
        }
        let mut value: Vec<u8> = Vec::new();
        let mut trailing_unescaped_spaces = 0usize;
        let mut ended = false;
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    let a = chars.next()?;
                    if a.is_ascii_hexdigit() {
                        let b = chars.next()?;
                        let byte = u8::from_str_radix(&format!("{a}{b}"), 16).ok()?;
                        value.push(byte);
                    } else {
                        let mut buf = [0u8; 4];
                        value.extend_from_slice(a.encode_utf8(&mut buf).as_bytes());
                    }
                    trailing_unescaped_spaces = 0;
                }
                ',' | ';' => {
                    ended = true;
                    break;
                }
                '+' => return None,
                ' ' if value.is_empty() => {}
                _ => {
                    if c == ' ' {
                        trailing_unescaped_spaces += 1;
                    } else {
                        trailing_unescaped_spaces = 0;
                    }
                    let mut buf = [0u8; 4];
                    value.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        value.truncate(value.len() - trailing_unescaped_spaces);
        rdns.push((attr, String::from_utf8(value).ok()?));
        if !ended {
            return Some(rdns);
        }
    }
}

/// The normalised string of parsed RDNs.
pub fn join_normalized(rdns: &[Rdn]) -> String {
    rdns.iter().map(|(a, v)| format!("{a}={}", escape(&v.to_lowercase()))).collect::<Vec<_>>().join(",")
}

/// The normalised form of a DN, or `None` if it does not parse.
pub fn normalize(dn: &str) -> Option<String> {
    parse(dn).map(|r| join_normalized(&r))
}

/// The normalised parent of a normalised DN ("" for a top-level entry).
pub fn parent_of(ndn: &str) -> &str {
    let bytes = ndn.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b',' => return &ndn[i + 1..],
            _ => i += 1,
        }
    }
    ""
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_case_spaces_and_escapes() {
        assert_eq!(
            normalize("CN=Alice, OU=Users,DC=Example,DC=Test").as_deref(),
            Some("cn=alice,ou=users,dc=example,dc=test")
        );
        assert_eq!(normalize("cn=a\\2cb,dc=x").as_deref(), Some("cn=a\\,b,dc=x"));
        assert_eq!(normalize("cn=a\\+b,dc=x").as_deref(), Some("cn=a\\+b,dc=x"));
        assert_eq!(normalize(""), Some(String::new()));
        assert_eq!(normalize("cn=a+uid=b,dc=x"), None);
        assert_eq!(normalize("nonsense"), None);
        assert_eq!(normalize("cn=a\\"), None);
    }

    #[test]
    fn escape_roundtrips() {
        for v in ["plain", "a,b", " lead", "trail ", "#x", "a+b=c\\d", "ünï"] {
            let dn = format!("cn={},dc=x", escape(v));
            let parsed = parse(&dn).unwrap_or_default();
            assert_eq!(parsed[0].1, v, "{dn}");
        }
    }

    #[test]
    fn parents() {
        assert_eq!(parent_of("cn=a\\,b,ou=users,dc=x"), "ou=users,dc=x");
        assert_eq!(parent_of("dc=x"), "");
    }
}
