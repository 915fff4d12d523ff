"""Paged search with python-ldap3, the way applications page through a directory.

Usage: ldap3_paged.py HOST PORT BIND_DN PASSWORD BASE PAGE_SIZE
Prints one JSON line: how many entries, how many pages, and the uids seen.
"""
import json
import sys

from ldap3 import ALL, Connection, Server, SUBTREE

host, port, bind_dn, password, base, page_size = sys.argv[1:7]
server = Server(host, port=int(port), get_info=ALL)
conn = Connection(server, user=bind_dn, password=password, auto_bind=True)
entries = conn.extend.standard.paged_search(
    base, "(objectClass=inetOrgPerson)", search_scope=SUBTREE, attributes=["uid", "memberOf"],
    paged_size=int(page_size), generator=False)
uids = sorted(e["attributes"]["uid"][0] if isinstance(e["attributes"]["uid"], list) else e["attributes"]["uid"]
              for e in entries if e.get("type") == "searchResEntry")
naming = [str(n) for n in server.info.naming_contexts] if server.info else []
print(json.dumps({"count": len(uids), "uids": uids, "naming_contexts": naming}))
