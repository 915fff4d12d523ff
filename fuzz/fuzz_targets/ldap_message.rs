//! Untrusted LDAP bytes: message decoding, DN normalisation and filter evaluation against a
//! small directory must never panic, whatever arrives on port 3389.
#![no_main]

use bytes::BytesMut;
use latchkey_core::model::{Group, User, UserKind};
use latchkey_ldap::tree::{LdapProvider, Snapshot};
use latchkey_ldap::{dn, filter};
use ldap3_proto::proto::LdapOp;
use ldap3_proto::LdapCodec;
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::sync::OnceLock;
use tokio_util::codec::Decoder;
use uuid::Uuid;

fn snapshot() -> &'static Snapshot {
    static SNAP: OnceLock<Snapshot> = OnceLock::new();
    SNAP.get_or_init(|| {
        let now = chrono::Utc::now();
        let user = |name: &str, uid: i64| User {
            id: Uuid::new_v4(),
            username: name.into(),
            name: format!("{name} Example"),
            email: Some(format!("{name}@example.test")),
            is_active: true,
            kind: UserKind::Internal,
            attributes: serde_json::json!({ "givenName": name }),
            password_hash: None,
            password_changed_at: None,
            uid_number: uid,
            created_at: now,
            last_login: None,
        };
        let (alice, bob) = (user("alice", 2000), user("bob", 2001));
        let family = Group {
            id: Uuid::new_v4(),
            name: "family".into(),
            parent_id: None,
            is_superuser: false,
            attributes: serde_json::json!({}),
            gid_number: 2000,
            created_at: now,
        };
        let members = HashMap::from([(family.id, vec![alice.id, bob.id])]);
        let provider = LdapProvider {
            id: Uuid::nil(),
            name: "fuzz".into(),
            bind_flow_id: None,
            anonymous_search: false,
            base_dn: "dc=example,dc=test".into(),
            base_ndn: "dc=example,dc=test".into(),
            search_group_id: None,
            search_group_name: None,
            mfa_support: false,
        };
        Snapshot::assemble(provider, vec![alice, bob], vec![family], members)
    })
}

fuzz_target!(|data: &[u8]| {
    let mut codec = LdapCodec::default();
    let mut buf = BytesMut::from(data);
    // Decode as many messages as the bytes hold; a decode error ends the connection in the server.
    while let Ok(Some(msg)) = codec.decode(&mut buf) {
        if let LdapOp::SearchRequest(req) = msg.op {
            let _ = dn::normalize(&req.base);
            if filter::depth(&req.filter) <= 32 {
                let snap = snapshot();
                let _ = filter::candidates(&req.filter, snap);
                for e in &snap.entries {
                    let _ = filter::matches(&req.filter, e);
                }
            }
        }
    }
});
