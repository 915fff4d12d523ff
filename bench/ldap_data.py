#!/usr/bin/env python3
"""Writes the same directory for Latchkey (a blueprint) and for slapd (LDIF), for bench/ldap.sh.

ldap_data.py USERS GROUPS PASSWORD_HASH SSHA OUT_DIR
Users user0..user{N-1} (user i in group i % GROUPS), plus `reader`, the account searches bind as
(in the provider's search group for Latchkey; any bound user reads everything in slapd).
"""
import json
import os
import sys

users, groups, argon_hash, ssha, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
base = "dc=example,dc=test"
q = json.dumps  # JSON strings are valid YAML scalars

with open(os.path.join(out, "latchkey.yaml"), "w") as f:
    f.write("groups:\n  - name: ldap-search\n")
    for g in range(groups):
        f.write(f"  - name: group{g}\n")
    f.write("users:\n")
    f.write(f"  - username: reader\n    name: Reader\n    password_hash: {q(argon_hash)}\n    groups: [ldap-search]\n")
    for i in range(users):
        f.write(
            f"  - username: user{i}\n    name: User {i}\n    email: user{i}@example.test\n"
            f"    password_hash: {q(argon_hash)}\n    groups: [group{i % groups}]\n"
        )
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
