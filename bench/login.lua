-- wrk script: every request is a complete password login (argon2id verification and a new
-- session). Correct credentials, so brute-force throttling does not short-circuit the hash.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"uid_field": "bench", "password": "bench-password"}'
