"""A service account binding with its API token, as an application would, with python-ldap3.

Usage: ldap3_token_bind.py HOST PORT BIND_DN TOKEN BASE
Prints one JSON line: whether the bind worked, WhoAmI's answer, the uids a search found, and
the subschema's object class names (ldap3 reads the schema the root DSE points to).
"""
import json
import sys

from ldap3 import ALL, Connection, Server, SUBTREE

host, port, bind_dn, token, base = sys.argv[1:6]
server = Server(host, port=int(port), get_info=ALL)
conn = Connection(server, user=bind_dn, password=token)
bound = conn.bind()
out = {"bound": bound, "result": conn.result.get("result")}
if bound:
    out["whoami"] = conn.extend.standard.who_am_i()
    conn.search(base, "(&(objectClass=inetOrgPerson)(uid=alice))", search_scope=SUBTREE, attributes=["uid"])
    out["uids"] = [str(e.uid) for e in conn.entries]
    schema = server.schema
    out["object_classes"] = sorted(schema.object_classes.keys()) if schema else []
print(json.dumps(out))
