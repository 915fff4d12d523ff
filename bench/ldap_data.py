#!/usr/bin/env python3
"""Writes the same directory for Latchkey and for slapd (LDIF), for bench/ldap.sh.

ldap_data.py USERS GROUPS PASSWORD_HASH SSHA OUT_DIR
    Users user0..user{N-1} (user i in group i % GROUPS), plus `reader`, the account searches
    bind as (in the provider's search group for Latchkey; any bound user reads everything in
    slapd). Latchkey gets a blueprint with the groups, `reader` and the provider;
ldap_data.py --load-sqlite DB USERS GROUPS PASSWORD_HASH
    then adds the users and memberships to its SQLite store in one transaction (a blueprint of
    100,000 users would spend minutes on one commit per user; what is served is the same).
"""
import json
import os
import sqlite3
import sys
import time
import uuid

if sys.argv[1] == "--load-sqlite":
    db, users, groups, argon_hash = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    c = sqlite3.connect(db)
    gid = {name: i for name, i in c.execute("SELECT name, id FROM groups")}
    uid = (c.execute("SELECT max(uid_number) FROM users").fetchone()[0] or 1999) + 1
    now = int(time.time() * 1000)
    with c:
        for i in range(users):
            user_id = str(uuid.uuid4())
            c.execute(
                "INSERT INTO users (id, username, name, email, is_active, kind, attributes, password_hash, "
                "password_changed_at, uid_number, created_at) VALUES (?, ?, ?, ?, 1, 'internal', '{}', ?, ?, ?, ?)",
                (user_id, f"user{i}", f"User {i}", f"user{i}@example.test", argon_hash, now, uid + i, now),
            )
            c.execute("INSERT INTO group_members (group_id, user_id) VALUES (?, ?)", (gid[f"group{i % groups}"], user_id))
    sys.exit(0)

users, groups, argon_hash, ssha, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
base = "dc=example,dc=test"
q = json.dumps  # JSON strings are valid YAML scalars

with open(os.path.join(out, "latchkey.yaml"), "w") as f:
    f.write("groups:\n  - name: ldap-search\n")
    for g in range(groups):
        f.write(f"  - name: group{g}\n")
    f.write("users:\n")
    f.write(f"  - username: reader\n    name: Reader\n    password_hash: {q(argon_hash)}\n    groups: [ldap-search]\n")
    f.write(
        "providers:\n  - name: Directory\n    type: ldap\n    base_dn: " + base + "\n"
        "    search_group: ldap-search\noutposts:\n  - name: embedded\n    providers: [Directory]\n"
    )

with open(os.path.join(out, "slapd.ldif"), "w") as f:
    f.write(f"dn: {base}\nobjectClass: top\nobjectClass: domain\ndc: example\n\n")
    for ou in ("users", "groups"):
        f.write(f"dn: ou={ou},{base}\nobjectClass: top\nobjectClass: organizationalUnit\nou: {ou}\n\n")

    def person(name, number, group):
        lines = [
            f"dn: cn={name},ou=users,{base}",
            "objectClass: top", "objectClass: person", "objectClass: organizationalPerson",
            "objectClass: inetOrgPerson", "objectClass: posixAccount",
            f"cn: {name}", f"uid: {name}", f"sn: {name}", f"displayName: {name}",
            f"mail: {name}@example.test", f"uidNumber: {number}", f"gidNumber: {number}",
            f"homeDirectory: /home/{name}", "loginShell: /bin/bash", f"userPassword: {ssha}",
        ]
        if group is not None:
            lines.append(f"memberOf: cn={group},ou=groups,{base}")
        f.write("\n".join(lines) + "\n\n")

    person("reader", 1999, None)
    for i in range(users):
        person(f"user{i}", 2000 + i, f"group{i % groups}")
    for g in range(groups):
        f.write(f"dn: cn=group{g},ou=groups,{base}\nobjectClass: top\nobjectClass: groupOfNames\ncn: group{g}\n")
        for i in range(g, users, groups):
            f.write(f"member: cn=user{i},ou=users,{base}\n")
        f.write("\n")
