//! Search filters evaluated against snapshot entries: attribute names and values match
//! case-insensitively (every attribute served here has a case-ignoring syntax), DN-valued
//! attributes in normalised form.

use ldap3_proto::proto::{LdapFilter, LdapSubstringFilter};

use crate::dn;
use crate::tree::{Attr, Entry, Snapshot, DN_ATTRS, INDEXED};

/// Deepest filter nesting accepted.
pub const MAX_DEPTH: usize = 32;

/// Nesting depth of a filter (a leaf is 1).
pub fn depth(f: &LdapFilter) -> usize {
    match f {
        LdapFilter::And(v) | LdapFilter::Or(v) => 1 + v.iter().map(depth).max().unwrap_or(0),
        LdapFilter::Not(inner) => 1 + depth(inner),
        _ => 1,
    }
}

/// The attribute name without options (`cn;lang-en` → `cn`), lower case.
fn attr_name(a: &str) -> String {
    a.split(';').next().unwrap_or(a).to_ascii_lowercase()
}

/// An assertion value in the form the entry's matching values are kept in.
fn assertion(attr: &str, value: &str) -> String {
    if DN_ATTRS.contains(&attr) {
        dn::normalize(value).unwrap_or_else(|| value.to_lowercase())
    } else {
        value.to_lowercase()
    }
}

fn values<'a>(e: &'a Entry, attr: &str) -> &'a [String] {
    e.get(attr).map(Attr::matching).unwrap_or(&[])
}

fn numeric_cmp(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    Some(a.parse::<i64>().ok()?.cmp(&b.parse::<i64>().ok()?))
}

fn substring_match(value: &str, f: &LdapSubstringFilter) -> bool {
    let mut rest = value;
    if let Some(init) = &f.initial {
        match rest.strip_prefix(init.to_lowercase().as_str()) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    for any in &f.any {
        let any = any.to_lowercase();
        match rest.find(any.as_str()) {
            Some(pos) => rest = &rest[pos + any.len()..],
            None => return false,
        }
    }
    match &f.final_ {
        Some(fin) => rest.ends_with(fin.to_lowercase().as_str()),
        None => true,
    }
}

/// Does the entry match? Unknown attributes and extensible matches are simply false.
pub fn matches(f: &LdapFilter, e: &Entry) -> bool {
    match f {
        LdapFilter::And(v) => v.iter().all(|f| matches(f, e)),
        LdapFilter::Or(v) => v.iter().any(|f| matches(f, e)),
        LdapFilter::Not(inner) => !matches(inner, e),
        LdapFilter::Equality(a, v) | LdapFilter::Approx(a, v) => {
            let a = attr_name(a);
            let v = assertion(&a, v);
            values(e, &a).contains(&v)
        }
        LdapFilter::Present(a) => {
            let a = attr_name(a);
            // objectClass is present on every entry, by definition.
            a == "objectclass" || e.get(&a).is_some_and(|x| !x.vals.is_empty())
        }
        LdapFilter::Substring(a, sub) => values(e, &attr_name(a)).iter().any(|v| substring_match(v, sub)),
        LdapFilter::GreaterOrEqual(a, v) => {
            let v = v.to_lowercase();
            values(e, &attr_name(a)).iter().any(|x| numeric_cmp(x, &v).unwrap_or_else(|| x.as_str().cmp(&v)).is_ge())
        }
        LdapFilter::LessOrEqual(a, v) => {
            let v = v.to_lowercase();
            values(e, &attr_name(a)).iter().any(|x| numeric_cmp(x, &v).unwrap_or_else(|| x.as_str().cmp(&v)).is_le())
        }
        LdapFilter::Extensible(_) => false,
    }
}

/// Entries that may match, from the equality index, when the filter allows it; `None`
/// means every entry must be checked. Candidates are in entry order, without duplicates.
pub fn candidates(f: &LdapFilter, snap: &Snapshot) -> Option<Vec<usize>> {
    match f {
        LdapFilter::Equality(a, v) | LdapFilter::Approx(a, v) => {
            let a = attr_name(a);
            let key = INDEXED.iter().find(|k| **k == a)?;
            Some(snap.index.get(&(*key, assertion(&a, v))).cloned().unwrap_or_default())
        }
        LdapFilter::And(v) => v.iter().filter_map(|f| candidates(f, snap)).min_by_key(|c| c.len()),
        LdapFilter::Or(v) => {
            let mut all = Vec::new();
            for f in v {
                all.extend(candidates(f, snap)?);
            }
            all.sort_unstable();
            all.dedup();
            Some(all)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldap3_proto::parse_ldap_filter_str;

    fn entry() -> Entry {
        let p = crate::tree::LdapProvider {
            id: uuid::Uuid::nil(),
            name: "d".into(),
            bind_flow_id: None,
            anonymous_search: false,
            base_dn: "dc=example,dc=test".into(),
            base_ndn: "dc=example,dc=test".into(),
            search_group_id: None,
            search_group_name: None,
            mfa_support: false,
        };
        let snap = crate::tree::tests::sample(p);
        snap.entries.iter().find(|e| e.ndn.starts_with("cn=alice,")).cloned().unwrap_or_else(|| unreachable!())
    }

    fn check(filter: &str) -> bool {
        let f = parse_ldap_filter_str(filter).unwrap_or_else(|e| panic!("{filter}: {e:?}"));
        matches(&f, &entry())
    }

    #[test]
    fn filter_types() {
        assert!(check("(uid=ALICE)"));
        assert!(check("(|(uid=nobody)(mail=alice@example.test))"));
        assert!(check("(&(objectClass=person)(!(uid=bob)))"));
        assert!(!check("(!(objectclass=inetorgperson))"));
        let member_of = LdapFilter::Equality("memberOf".into(), "CN=Family, OU=groups,dc=example,dc=test".into());
        assert!(matches(&member_of, &entry()));
        assert!(check("(uid=al*)"));
        assert!(check("(uid=*li*e)"));
        assert!(!check("(uid=*x*)"));
        assert!(check("(mail=*)"));
        assert!(check("(uidNumber>=2000)"));
        assert!(check("(uidNumber<=2000)"));
        assert!(!check("(uidNumber>=10000)"));
        assert!(check("(uid~=alice)"));
        assert!(!check("(nosuchattr=*)"));
    }

    #[test]
    fn depth_counts_nesting() {
        let f = parse_ldap_filter_str("(&(|(a=b)(!(c=d))))").unwrap_or_else(|_| unreachable!());
        assert_eq!(depth(&f), 4);
    }
}
