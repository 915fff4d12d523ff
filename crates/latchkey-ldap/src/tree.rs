//! The directory as an LDAP tree: an in-memory snapshot of the provider, users and groups,
//! built from the core and rebuilt when the store's change feed says something changed.
//! Searches then cost no store round trip.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use chrono::{DateTime, Utc};
use latchkey_core::model::{Group, Provider, User};
use latchkey_core::{Core, CoreError, StoreError};
use uuid::Uuid;

use crate::dn;

/// Attributes whose values are DNs: matched in normalised form.
pub const DN_ATTRS: &[&str] = &["member", "uniquemember", "memberof", "namingcontexts"];

/// One attribute with its values as sent and in matching form.
#[derive(Debug, Clone)]
pub struct Attr {
    pub name: &'static str,
    /// Lower-case name, for case-insensitive lookups.
    pub lname: &'static str,
    pub vals: Vec<String>,
    /// Lower-case values (normalised DNs for DN attributes); empty when they equal `vals`,
    /// as most do (uids, mail, numbers), which halves the snapshot of a large directory.
    lvals: Vec<String>,
}

impl Attr {
    pub(crate) fn new(name: &'static str, lname: &'static str, vals: Vec<String>) -> Attr {
        let is_dn = DN_ATTRS.contains(&lname);
        let lvals: Vec<String> = vals
            .iter()
            .map(|v| if is_dn { dn::normalize(v).unwrap_or_else(|| v.to_lowercase()) } else { v.to_lowercase() })
            .collect();
        let lvals = if lvals == vals { Vec::new() } else { lvals };
        Attr { name, lname, vals, lvals }
    }

    /// The values in matching form.
    pub fn matching(&self) -> &[String] {
        if self.lvals.is_empty() {
            &self.vals
        } else {
            &self.lvals
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Container,
    /// Index into `Snapshot::users`.
    User(usize),
    /// Index into `Snapshot::groups`.
    Group(usize),
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub dn: String,
    pub ndn: String,
    pub parent: String,
    pub kind: Kind,
    pub attrs: Vec<Attr>,
    /// Operational attributes: returned for `+` or by name.
    pub op_attrs: Vec<Attr>,
}

impl Entry {
    pub(crate) fn new(dn: String, kind: Kind, attrs: Vec<Attr>, op_attrs: Vec<Attr>) -> Entry {
        let ndn = dn::normalize(&dn).unwrap_or_else(|| dn.to_lowercase());
        let parent = dn::parent_of(&ndn).to_string();
        Entry { dn, ndn, parent, kind, attrs, op_attrs }
    }

    /// The attribute by lower-case name, user or operational.
    pub fn get(&self, lname: &str) -> Option<&Attr> {
        self.attrs.iter().chain(self.op_attrs.iter()).find(|a| a.lname == lname)
    }
}

pub struct UserInfo {
    pub id: Uuid,
    pub username: String,
    pub dn: String,
    pub entry: usize,
    /// Effective groups, as indexes into `Snapshot::groups`.
    pub groups: Vec<usize>,
    pub is_superuser: bool,
}

pub struct GroupInfo {
    pub id: Uuid,
    pub entry: usize,
    /// Direct member users, as indexes into `Snapshot::users`.
    pub members: Vec<usize>,
}

/// The provider's settings that matter here.
#[derive(Debug, Clone)]
pub struct LdapProvider {
    pub id: Uuid,
    pub name: String,
    /// The flow whose policies decide who may bind (authentik's bind flow).
    pub bind_flow_id: Option<Uuid>,
    /// Unbound clients may search the whole tree (off by default).
    pub anonymous_search: bool,
    pub base_dn: String,
    pub base_ndn: String,
    pub search_group_id: Option<Uuid>,
    pub search_group_name: Option<String>,
    /// Users with an authenticator bind with `password;code` (authentik's code-based MFA).
    pub mfa_support: bool,
}

pub struct Snapshot {
    pub built: Instant,
    pub provider: Option<LdapProvider>,
    pub entries: Vec<Entry>,
    pub users: Vec<UserInfo>,
    pub groups: Vec<GroupInfo>,
    pub by_ndn: HashMap<String, usize>,
    /// Lower-case username → index into `users`.
    pub by_username: HashMap<String, usize>,
    pub by_user_id: HashMap<Uuid, usize>,
    /// (lower-case attribute, matching value) → entries, for the attributes applications
    /// look up by equality (uid, cn, mail, memberOf, objectClass is not indexed).
    pub index: HashMap<(&'static str, String), Vec<usize>>,
    pub search_group: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("cannot read the directory: {0}")]
    Store(#[from] StoreError),
    #[error("cannot read the directory: {0}")]
    Core(#[from] CoreError),
}

/// Attributes indexed for equality lookups.
pub const INDEXED: &[&str] = &["uid", "cn", "mail", "memberof", "entryuuid"];

fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y%m%d%H%M%SZ").to_string()
}

fn s(v: &str) -> Vec<String> {
    vec![v.to_string()]
}

/// Finds the LDAP provider served by the embedded outpost (or the only one there is).
pub async fn find_provider(core: &Core) -> Result<Option<Provider>, StoreError> {
    if let Some(outpost) = core.store.get_outpost_by_name("embedded").await? {
        for id in &outpost.provider_ids {
            if let Some(p) = core.store.get_provider(*id).await? {
                if p.kind == "ldap" {
                    return Ok(Some(p));
                }
            }
        }
    }
    let mut ldap: Vec<Provider> = core.store.list_providers().await?.into_iter().filter(|p| p.kind == "ldap").collect();
    Ok(if ldap.len() == 1 { ldap.pop() } else { None })
}

impl Snapshot {
    pub fn empty() -> Snapshot {
        Snapshot {
            built: Instant::now(),
            provider: None,
            entries: Vec::new(),
            users: Vec::new(),
            groups: Vec::new(),
            by_ndn: HashMap::new(),
            by_username: HashMap::new(),
            by_user_id: HashMap::new(),
            index: HashMap::new(),
            search_group: None,
        }
    }

    pub async fn build(core: &Core) -> Result<Snapshot, TreeError> {
        let provider = find_provider(core).await?;
        let Some(provider) = provider else {
            return Ok(Snapshot::empty());
        };
        let base_dn = provider.config.get("base_dn").and_then(|v| v.as_str()).unwrap_or("").trim().to_string();
        let Some(base_ndn) = dn::normalize(&base_dn).filter(|n| !n.is_empty()) else {
            tracing::warn!(provider = %provider.name, "the LDAP provider has no valid base_dn");
            return Ok(Snapshot::empty());
        };
        let mut users: Vec<User> = core.store.all_active_users().await?;
        // Entry order is the order searches return: by username, as before.
        users.sort_unstable_by(|a, b| a.username.cmp(&b.username));
        let groups: Vec<Group> = core.store.all_groups().await?;
        // Three reads whatever the size of the directory: users, groups, memberships.
        let mut members: HashMap<Uuid, Vec<Uuid>> = HashMap::with_capacity(groups.len());
        for (group, user) in core.store.all_memberships().await? {
            members.entry(group).or_default().push(user);
        }
        let search_group_id = provider
            .config
            .get("search_group_id")
            .and_then(|v| v.as_str())
            .and_then(|s| Uuid::parse_str(s).ok())
            .filter(|id| groups.iter().any(|g| g.id == *id));
        let search_group_name = provider.config.get("search_group").and_then(|v| v.as_str()).map(String::from);
        let search_group_id = search_group_id.or_else(|| {
            let name = search_group_name.as_deref()?.to_lowercase();
            groups.iter().find(|g| g.name.to_lowercase() == name).map(|g| g.id)
        });
        let info = LdapProvider {
            id: provider.id,
            name: provider.name.clone(),
            bind_flow_id: provider
                .config
                .get("bind_flow_id")
                .and_then(|v| v.as_str())
                .and_then(|s| Uuid::parse_str(s).ok()),
            anonymous_search: provider.config.get("anonymous_search").and_then(|v| v.as_bool()).unwrap_or(false),
            base_dn: base_dn.clone(),
            base_ndn,
            search_group_id,
            search_group_name,
            mfa_support: provider.config.get("mfa_support").and_then(|v| v.as_bool()).unwrap_or(false),
        };
        Ok(Self::assemble(info, users, groups, members))
    }

    /// Builds the tree from plain data (also used by unit tests).
    pub fn assemble(
        provider: LdapProvider,
        users: Vec<User>,
        groups: Vec<Group>,
        direct_members: HashMap<Uuid, Vec<Uuid>>,
    ) -> Snapshot {
        let base = provider.base_dn.clone();
        let user_dn = |name: &str| format!("cn={},ou=users,{base}", dn::escape(name));
        let group_dn = |name: &str| format!("cn={},ou=groups,{base}", dn::escape(name));
        let group_pos: HashMap<Uuid, usize> = groups.iter().enumerate().map(|(i, g)| (g.id, i)).collect();
        let user_pos: HashMap<Uuid, usize> = users.iter().enumerate().map(|(i, u)| (u.id, i)).collect();

        // Effective groups per user: direct memberships and every ancestor.
        let mut direct_of_user: Vec<Vec<usize>> = vec![Vec::new(); users.len()];
        let mut members_of_group: Vec<Vec<usize>> = vec![Vec::new(); groups.len()];
        for (gid, uids) in &direct_members {
            let Some(&gi) = group_pos.get(gid) else { continue };
            for uid in uids {
                if let Some(&ui) = user_pos.get(uid) {
                    direct_of_user[ui].push(gi);
                    members_of_group[gi].push(ui);
                }
            }
        }
        let ancestors = |gi: usize| -> Vec<usize> {
            let mut out = Vec::new();
            let mut seen = HashSet::new();
            let mut cursor = Some(gi);
            // Cycles are refused on write; `seen` also stops a corrupt loop.
            while let Some(i) = cursor {
                if !seen.insert(i) {
                    break;
                }
                out.push(i);
                cursor = groups[i].parent_id.and_then(|p| group_pos.get(&p).copied());
            }
            out
        };
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); groups.len()];
        for (i, g) in groups.iter().enumerate() {
            if let Some(&p) = g.parent_id.as_ref().and_then(|p| group_pos.get(p)) {
                children[p].push(i);
            }
        }

        let mut entries = Vec::with_capacity(users.len() + groups.len() + 3);
        let base_rdn = dn::parse(&base).and_then(|r| r.into_iter().next());
        let mut base_attrs = vec![Attr::new("objectClass", "objectclass", vec!["top".into(), "domain".into()])];
        if let Some((attr, value)) = base_rdn {
            if attr == "dc" {
                base_attrs.push(Attr::new("dc", "dc", vec![value]));
            }
        }
        entries.push(Entry::new(base.clone(), Kind::Container, base_attrs, Vec::new()));
        for ou in ["users", "groups"] {
            entries.push(Entry::new(
                format!("ou={ou},{base}"),
                Kind::Container,
                vec![
                    Attr::new("objectClass", "objectclass", vec!["top".into(), "organizationalUnit".into()]),
                    Attr::new("ou", "ou", s(ou)),
                ],
                Vec::new(),
            ));
        }

        let mut user_infos = Vec::with_capacity(users.len());
        let mut effective_all: Vec<Vec<usize>> = Vec::with_capacity(users.len());
        for (ui, u) in users.iter().enumerate() {
            let mut effective: Vec<usize> = Vec::new();
            let mut seen = HashSet::new();
            for &gi in &direct_of_user[ui] {
                for a in ancestors(gi) {
                    if seen.insert(a) {
                        effective.push(a);
                    }
                }
            }
            effective.sort_by(|a, b| groups[*a].name.cmp(&groups[*b].name));
            let is_superuser = effective.iter().any(|&g| groups[g].is_superuser);
            let dn = user_dn(&u.username);
            let mut attrs = vec![
                Attr::new(
                    "objectClass",
                    "objectclass",
                    ["top", "person", "organizationalPerson", "inetOrgPerson", "posixAccount"]
                        .iter()
                        .map(|s| s.to_string())
                        .collect(),
                ),
                Attr::new("cn", "cn", s(&u.username)),
                Attr::new("uid", "uid", s(&u.username)),
                Attr::new("name", "name", s(&u.name)),
                Attr::new("displayName", "displayname", s(&u.name)),
            ];
            let attr_str = |k: &str| u.attributes.get(k).and_then(|v| v.as_str()).map(String::from);
            if let Some(v) = attr_str("given_name").or_else(|| attr_str("givenName")) {
                attrs.push(Attr::new("givenName", "givenname", vec![v]));
            }
            if let Some(v) = attr_str("family_name").or_else(|| attr_str("sn")) {
                attrs.push(Attr::new("sn", "sn", vec![v]));
            }
            if let Some(mail) = &u.email {
                attrs.push(Attr::new("mail", "mail", s(mail)));
            }
            attrs.push(Attr::new(
                "memberOf",
                "memberof",
                effective.iter().map(|&g| group_dn(&groups[g].name)).collect(),
            ));
            attrs.extend([
                Attr::new("uidNumber", "uidnumber", s(&u.uid_number.to_string())),
                Attr::new("gidNumber", "gidnumber", s(&u.uid_number.to_string())),
                Attr::new("homeDirectory", "homedirectory", vec![format!("/home/{}", u.username)]),
                Attr::new("loginShell", "loginshell", s("/bin/bash")),
            ]);
            let op = vec![
                Attr::new("entryUUID", "entryuuid", s(&u.id.to_string())),
                Attr::new("createTimestamp", "createtimestamp", s(&ts(u.created_at))),
                Attr::new("modifyTimestamp", "modifytimestamp", s(&ts(u.password_changed_at.unwrap_or(u.created_at)))),
            ];
            user_infos.push(UserInfo {
                id: u.id,
                username: u.username.clone(),
                dn: dn.clone(),
                entry: entries.len(),
                groups: Vec::new(),
                is_superuser,
            });
            entries.push(Entry::new(dn, Kind::User(ui), attrs, op));
            effective_all.push(effective);
        }
        for (info, eff) in user_infos.iter_mut().zip(effective_all) {
            info.groups = eff;
        }

        let mut group_infos = Vec::with_capacity(groups.len());
        for (gi, g) in groups.iter().enumerate() {
            let mut member_dns: Vec<String> = members_of_group[gi].iter().map(|&u| user_infos[u].dn.clone()).collect();
            member_dns.extend(children[gi].iter().map(|&c| group_dn(&groups[c].name)));
            let member_uids: Vec<String> = members_of_group[gi].iter().map(|&u| users[u].username.clone()).collect();
            let attrs = vec![
                Attr::new(
                    "objectClass",
                    "objectclass",
                    ["top", "groupOfNames", "groupOfUniqueNames", "posixGroup"].iter().map(|s| s.to_string()).collect(),
                ),
                Attr::new("cn", "cn", s(&g.name)),
                Attr::new("member", "member", member_dns.clone()),
                Attr::new("uniqueMember", "uniquemember", member_dns),
                Attr::new("memberUid", "memberuid", member_uids),
                Attr::new("gidNumber", "gidnumber", s(&g.gid_number.to_string())),
            ];
            // No memberOf on groups: applications filter `(memberOf=…)` expecting users only.
            let op = vec![
                Attr::new("entryUUID", "entryuuid", s(&g.id.to_string())),
                Attr::new("createTimestamp", "createtimestamp", s(&ts(g.created_at))),
            ];
            group_infos.push(GroupInfo { id: g.id, entry: entries.len(), members: members_of_group[gi].clone() });
            entries.push(Entry::new(group_dn(&g.name), Kind::Group(gi), attrs, op));
        }

        let mut by_ndn = HashMap::with_capacity(entries.len());
        let mut index: HashMap<(&'static str, String), Vec<usize>> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            by_ndn.insert(e.ndn.clone(), i);
            for a in e.attrs.iter().chain(e.op_attrs.iter()) {
                if let Some(key) = INDEXED.iter().find(|k| **k == a.lname) {
                    for v in a.matching() {
                        let list = index.entry((key, v.clone())).or_default();
                        if list.last() != Some(&i) {
                            list.push(i);
                        }
                    }
                }
            }
        }
        let by_username = user_infos.iter().enumerate().map(|(i, u)| (u.username.to_lowercase(), i)).collect();
        let by_user_id = user_infos.iter().enumerate().map(|(i, u)| (u.id, i)).collect();
        let search_group = provider.search_group_id.and_then(|id| group_pos.get(&id).copied());
        Snapshot {
            built: Instant::now(),
            provider: Some(provider),
            entries,
            users: user_infos,
            groups: group_infos,
            by_ndn,
            by_username,
            by_user_id,
            index,
            search_group,
        }
    }

    /// May this user read the whole tree (superuser or member of the search group)?
    pub fn sees_everything(&self, user: usize) -> bool {
        let Some(u) = self.users.get(user) else { return false };
        u.is_superuser || self.search_group.is_some_and(|sg| u.groups.contains(&sg))
    }

    /// Is entry `e` visible to `user` (an index into `users`; `None` for an anonymous reader,
    /// who sees the containers only unless `everything`)?
    pub fn visible(&self, user: Option<usize>, everything: bool, e: &Entry) -> bool {
        if everything {
            return true;
        }
        match e.kind {
            Kind::Container => true,
            Kind::User(u) => user == Some(u),
            Kind::Group(g) => user.and_then(|u| self.users.get(u)).is_some_and(|u| u.groups.contains(&g)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use latchkey_core::model::UserKind;

    fn user(name: &str, uid: i64) -> User {
        User {
            id: Uuid::new_v4(),
            username: name.into(),
            name: name.to_uppercase(),
            email: Some(format!("{name}@example.test")),
            is_active: true,
            kind: UserKind::Internal,
            attributes: serde_json::json!({}),
            password_hash: None,
            password_changed_at: None,
            uid_number: uid,
            created_at: Utc::now(),
            last_login: None,
        }
    }

    fn group(name: &str, parent: Option<Uuid>, gid: i64) -> Group {
        Group {
            id: Uuid::new_v4(),
            name: name.into(),
            parent_id: parent,
            is_superuser: false,
            attributes: serde_json::json!({}),
            gid_number: gid,
            created_at: Utc::now(),
        }
    }

    /// alice in kids (child of family); bob in ldap-search.
    pub(crate) fn sample(provider: LdapProvider) -> Snapshot {
        let (alice, bob) = (user("alice", 2000), user("bob", 2001));
        let family = group("family", None, 2000);
        let kids = group("kids", Some(family.id), 2001);
        let search = group("ldap-search", None, 2002);
        let members = HashMap::from([(kids.id, vec![alice.id]), (search.id, vec![bob.id])]);
        let provider = LdapProvider { search_group_id: Some(search.id), ..provider };
        Snapshot::assemble(provider, vec![alice, bob], vec![family, kids, search], members)
    }

    pub(crate) fn provider() -> LdapProvider {
        LdapProvider {
            id: Uuid::nil(),
            name: "d".into(),
            bind_flow_id: None,
            anonymous_search: false,
            base_dn: "dc=example,dc=test".into(),
            base_ndn: "dc=example,dc=test".into(),
            search_group_id: None,
            search_group_name: None,
            mfa_support: false,
        }
    }

    #[test]
    fn tree_layout_memberships_and_access() {
        let snap = sample(provider());
        let alice = &snap.entries[snap.by_ndn["cn=alice,ou=users,dc=example,dc=test"]];
        let member_of = &alice.get("memberof").map(|a| a.vals.clone()).unwrap_or_default();
        assert_eq!(
            member_of,
            &vec![
                "cn=family,ou=groups,dc=example,dc=test".to_string(),
                "cn=kids,ou=groups,dc=example,dc=test".to_string()
            ]
        );
        let family = &snap.entries[snap.by_ndn["cn=family,ou=groups,dc=example,dc=test"]];
        assert_eq!(
            family.get("member").map(|a| a.vals.clone()),
            Some(vec!["cn=kids,ou=groups,dc=example,dc=test".into()])
        );
        let a = snap.by_username["alice"];
        let b = snap.by_username["bob"];
        assert!(!snap.sees_everything(a));
        assert!(snap.sees_everything(b));
        let bob_entry = &snap.entries[snap.users[b].entry];
        assert!(!snap.visible(Some(a), false, bob_entry));
        assert!(snap.visible(Some(a), false, family));
        assert!(!snap.visible(None, false, family));
        assert!(snap.visible(None, true, bob_entry));
        assert_eq!(snap.index[&("uid", "alice".to_string())], vec![snap.users[a].entry]);
    }
}
