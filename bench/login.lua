-- wrk script: every request is a password login attempt (argon2id verification).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"uid_field": "bench", "password": "wrong-password-for-the-storm"}'
