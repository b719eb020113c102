#!/usr/bin/env python3
"""Writes tests/fixtures/<format>.log: one attack scenario, written as each gateway logs it.

The fixtures are committed; this script documents how they were made and remakes them
(python3 scripts/make-fixtures.py). Every format carries the same requests, so the golden
decisions of every format must agree (tests/it/golden.rs checks that too).
"""
import base64, json, os
from datetime import datetime, timezone

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

T0 = 1795910400  # 2026-11-29T00:00:00Z
ISS = "https://idp.example.com"
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
# The test key `k1` of tests/fixtures/keys/ (public half in jwks.json): the fixtures' tokens are
# genuinely signed, so that replaying them with `--jwks tests/fixtures/keys/jwks.json` makes
# them `verified` (and able to revoke), and without it they cannot revoke anything.
with open(os.path.join(OUT, "keys", "rsa.pem"), "rb") as f:
    KEY = serialization.load_pem_private_key(f.read(), None)


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(claims, alg="RS256", sig=True):
    h = b64(json.dumps({"alg": alg, "typ": "JWT", "kid": "k1"}, separators=(",", ":")).encode())
    p = b64(json.dumps(claims, separators=(",", ":")).encode())
    s = b64(KEY.sign(f"{h}.{p}".encode(), padding.PKCS1v15(), hashes.SHA256())) if sig else ""
    return f"{h}.{p}.{s}"


def tok(sub, jti, iat, life=900, **extra):
    c = {"iss": ISS, "sub": sub, "aud": "api", "iat": iat, "exp": iat + life, "jti": jti}
    c.update(extra)
    return c


BOB = jwt(tok("bob", "tok-bob-1", T0))
CAROL = jwt(tok("carol", "tok-carol-1", T0, life=3600))
DAVE = jwt(tok("dave", "tok-dave-old", T0 - 7200))           # expired an hour before T0
ERIN = jwt(tok("erin", "tok-erin-old", T0 - 7200))
FRANK = jwt(tok("frank", "tok-frank-1", T0), alg="none", sig=False)
GRACE = jwt(tok("grace", "tok-grace-1", T0))
HEIDI = jwt(tok("heidi", "tok-heidi-1", T0, life=7 * 86400))
IVAN = jwt(tok("ivan", "tok-ivan-1", T0))
NOJTI = jwt({"iss": ISS, "sub": "judy", "iat": T0, "exp": T0 + 900, "aud": ["api", "web"]})
UA = "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"

# (seconds after T0, client ip, method, path, status, token or None)
REQS = [
    # token-replay: bob's token from three networks (none of them geolocated) in 4 minutes
    (10, "198.51.100.7", "GET", "/api/v1/orders", 200, BOB),
    (70, "203.0.113.9", "GET", "/api/v1/orders/17", 200, BOB),
    (130, "198.51.100.8", "GET", "/api/v1/profile", 200, BOB),   # same /24 as the first
    (250, "192.0.2.44", "POST", "/api/v1/transfer", 201, BOB),   # third network: revoke
    (320, "198.51.100.7", "GET", "/api/v1/orders", 200, BOB),    # revoked token accepted
    # ivan's token rejected by the gateway (401) does not count
    (15, "100.64.1.1", "GET", "/api/v1/orders", 401, IVAN),
    (16, "100.65.1.1", "GET", "/api/v1/orders", 401, IVAN),
    # ivan from two networks only: near miss
    (20, "81.2.69.142", "GET", "/api/v1/cart", 200, IVAN),
    (80, "100.66.0.9", "GET", "/api/v1/cart", 200, IVAN),
    # impossible travel: carol in London, then Changchun 20 minutes later
    (30, "81.2.69.142", "GET", "/api/v1/me", 200, CAROL),
    (1230, "175.16.199.5", "GET", "/api/v1/me", 200, CAROL),
    (1300, "81.2.69.143", "GET", "/api/v1/me", 200, CAROL),      # revoked subject still used
    # expired-token attempts: dave retries an expired token, rejected 5 times in 2 minutes
    (40, "89.160.20.115", "GET", "/api/v1/mail", 401, DAVE),
    (70, "89.160.20.115", "GET", "/api/v1/mail", 401, DAVE),
    (100, "89.160.20.115", "GET", "/api/v1/mail", 401, DAVE),
    (130, "89.160.20.115", "GET", "/api/v1/mail", 403, DAVE),
    (160, "89.160.20.115", "GET", "/api/v1/mail", 401, DAVE),
    # a gateway accepted erin's expired token
    (50, "216.160.83.57", "GET", "/api/v1/files", 200, ERIN),
    # unsigned token, rejected: still an alert
    (60, "202.196.224.10", "GET", "/api/v1/admin", 401, FRANK),
    # token in the URL
    (90, "214.78.1.20", "GET", "/api/v1/export?format=csv&access_token=" + GRACE, 200, None),
    # a seven-day token
    (95, "2.125.160.217", "GET", "/api/v1/reports", 200, HEIDI),
    # no jti: token_id is sha256 of the token
    (99, "2001:218::1", "GET", "/api/v1/search?q=x", 304, NOJTI),
]


def iso(ts, frac=3):
    d = datetime.fromtimestamp(ts, timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S") + (".000" if frac == 3 else ".000000000") + "Z"


def line(fmt, t, ip, method, path, status, token, scheme=None):
    ts = T0 + t
    auth = "Bearer " + token if token else None
    if fmt == "canonical":
        o = {"ts": iso(ts), "client_ip": ip, "method": method, "path": path, "status": status, "user_agent": UA}
        if auth:
            o["authorization"] = auth
    elif fmt == "traefik":
        o = {"ClientAddr": f"{ip}:51234" if ":" not in ip else f"[{ip}]:51234", "ClientHost": ip,
             "DownstreamStatus": status, "Duration": 1234567, "OriginStatus": status,
             "RequestHost": "api.example.com", "RequestMethod": method, "RequestPath": path,
             "RequestProtocol": "HTTP/2.0", "RouterName": "api@docker", "StartUTC": iso(ts, 9),
             "request_User-Agent": UA, "level": "info", "msg": "", "time": iso(ts)}
        o["request_Authorization"] = auth if auth else "REDACTED"
    elif fmt == "kong":
        headers = {"host": "api.example.com", "user-agent": UA}
        if auth:
            headers["authorization"] = auth
        o = {"started_at": ts * 1000, "client_ip": ip,
             "request": {"method": method, "uri": path, "url": "https://api.example.com" + path, "size": 312, "headers": headers},
             "response": {"status": status, "size": 1024}, "latencies": {"request": 12, "kong": 1, "proxy": 11},
             "service": {"name": "api"}}
    elif fmt == "envoy":
        o = {"start_time": iso(ts), "client_ip": ip, "method": method, "path": path, "response_code": status, "user_agent": UA}
        if auth:
            o["authorization"] = auth
    elif fmt == "nginx":
        o = {"msec": ts + 0.0, "time_iso8601": datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+00:00"),
             "remote_addr": ip, "request_method": method, "request_uri": path, "status": status,
             "http_user_agent": UA, "http_authorization": auth or ""}
    if scheme:
        if fmt == "traefik":
            o["RequestScheme"] = scheme
        elif fmt == "kong":
            o["request"]["url"] = f"{scheme}://api.example.com{path}"
        else:  # canonical `scheme`, nginx `$scheme`, envoy `%REQ(:SCHEME)%` named `scheme`
            o["scheme"] = scheme
    return json.dumps(o, separators=(",", ":"))


def hs256(claims):
    """An HS256 token (the shared secret of tests/it/support/keys.rs): a downgrade for an issuer
    whose keys are public."""
    import hmac
    h = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}, separators=(",", ":")).encode())
    p = b64(json.dumps(claims, separators=(",", ":")).encode())
    s = b64(hmac.new(b"a shared secret", f"{h}.{p}".encode(), "sha256").digest())
    return f"{h}.{p}.{s}"


def forged(claims):
    """A k1 RS256 header and claims with the signature of other claims: it never verifies."""
    real = jwt(claims)
    other = jwt(dict(claims, jti=claims["jti"] + "-other"))
    return real.rsplit(".", 1)[0] + "." + other.rsplit(".", 1)[1]


DAY = 86400
# The posture scenario (tests/fixtures/posture/, tests/it/golden.rs): replayed with
# tests/fixtures/posture/tokenwatch.toml, each posture rule fires once and its near miss does not.
POSTURE = [
    # (seconds after T0, client ip, path, status, token, scheme)
    (10, "198.51.100.7", "/api/v1/orders", 200, jwt(tok("olga", "tok-olga-1", T0)), "https"),  # k1 first seen
    (20, "198.51.100.7", "/api/v1/orders", 200, hs256(tok("ivan", "tok-hs-1", T0)), "https"),  # weak-algorithm
    (30, "198.51.100.7", "/api/v1/orders", 200,
     jwt(dict(tok("judy", "tok-partner-1", T0), iss="https://partner-idp.example.net")), "https"),  # unknown issuer
    (31, "198.51.100.7", "/api/v1/orders", 401,
     jwt(dict(tok("judy", "tok-partner-2", T0), iss="https://partner-idp.example.net")), "https"),  # near miss: rejected
    (40, "198.51.100.7", "/billing/invoices", 200, jwt(tok("ken", "tok-aud-1", T0)), "https"),  # audience-mismatch
    (41, "198.51.100.7", "/billing/invoices", 200, jwt(tok("ken", "tok-aud-2", T0, aud="billing-api")), "https"),
    (50, "198.51.100.7", "/api/v1/orders", 200, forged(tok("leo", "tok-forged-1", T0)), "https"),  # invalid signature
    (51, "198.51.100.7", "/api/v1/orders", 401, forged(tok("leo", "tok-forged-2", T0)), "https"),  # near miss: rejected
    (60, "198.51.100.7", "/api/v1/me", 200, jwt(tok("mia", "tok-pii-1", T0, email="mia@example.com")), "https"),
    (70, "198.51.100.7", "/api/v1/me", 200, jwt(tok("nick", "tok-http-1", T0)), "http"),  # token-over-http
    (91 * DAY, "198.51.100.7", "/api/v1/orders", 200,
     jwt(tok("olga", "tok-olga-2", T0 + 91 * DAY)), "https"),  # stale-signing-key: k1 91 days on
]


def posture_main():
    os.makedirs(os.path.join(OUT, "posture"), exist_ok=True)
    for fmt in ["canonical", "traefik", "kong", "envoy", "nginx"]:
        lines = [line(fmt, t, ip, "GET", path, st, token, scheme) for (t, ip, path, st, token, scheme) in POSTURE]
        with open(os.path.join(OUT, "posture", f"{fmt}.log"), "w") as f:
            f.write("\n".join(lines) + "\n")


def main():
    reqs = sorted(REQS, key=lambda r: r[0])
    for fmt in ["canonical", "traefik", "kong", "envoy", "nginx"]:
        lines = [line(fmt, *r) for r in reqs]
        # bad input, each skipped with a counted reason
        lines.insert(3, '{"ts": "2026-11-29T00:00:01Z", "client_ip": "1.2.3.4"')       # invalid JSON
        lines.insert(5, "this is not json at all")
        lines.insert(7, '{"unrelated": true}')                                           # unknown format
        bad_tok = line(fmt, 5, "198.51.100.99", "GET", "/api", 200, "eyJhbGciOiJSUzI1NiJ9.only-two")
        lines.insert(9, bad_tok)                                                         # undecodable token
        with open(os.path.join(OUT, f"{fmt}.log"), "w") as f:
            f.write("\n".join(lines) + "\n")
    # Gateways that log decoded claims instead of tokens
    claims = {"iss": ISS, "sub": "mallory", "iat": T0 - 7200, "exp": T0 - 6300}  # expired, no jti
    kong_claims = {"started_at": (T0 + 200) * 1000, "client_ip": "198.51.100.50",
                   "request": {"method": "GET", "uri": "/api/v1/x", "headers": {"authorization": "REDACTED"}},
                   "response": {"status": 200}, "jwt_claims": claims}
    envoy_claims = {"start_time": iso(T0 + 200), "client_ip": "198.51.100.50", "method": "GET", "path": "/api/v1/x",
                    "response_code": 200, "jwt_payload": claims}
    with open(os.path.join(OUT, "claims-only.log"), "w") as f:
        f.write(json.dumps(kong_claims) + "\n" + json.dumps(envoy_claims) + "\n")


if __name__ == "__main__":
    main()
    posture_main()
