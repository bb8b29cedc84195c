"""AK/SK (SDK-HMAC-SHA256) verification, done by re-signing with the SDK's own signer.

A request is rebuilt as an `SdkRequest` holding only the headers the client claims to have
signed (including its `X-Sdk-Date`, which the signer reuses rather than replacing), signed with
the SK that belongs to the claimed AK, and the signatures are compared in constant time. The
SDK canonicalises as follows, so a client that signs anything else will be refused:

- method upper-cased;
- URI: the path percent-decoded, split on '/', each segment re-encoded with only '~' (plus
  unreserved letters, digits, '-', '.', '_') left bare, and a trailing '/' added;
- query: (key, value) pairs sorted, both percent-encoded the same way, joined with '&';
- headers: every signed header as `lower(name):strip(value)`, sorted, one per line;
- payload: hex SHA-256 of the body (empty body -> hash of ""), or the value of
  `X-Sdk-Content-Sha256` (e.g. UNSIGNED-PAYLOAD) when that header is present;
- string to sign: "SDK-HMAC-SHA256\\n<X-Sdk-Date>\\n<hex sha256(canonical request)>".

`Host` and `X-Sdk-Date` must be among the signed headers; the SDK always signs them.
"""

from __future__ import annotations

import calendar
import hmac
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer

ALGORITHM = "SDK-HMAC-SHA256"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"

# The header names as the SDK signer itself spells them; it looks some up case-sensitively.
_SIGNER_SPELLING = {
    "host": "Host",
    "x-sdk-date": "X-Sdk-Date",
    "content-type": "Content-Type",
    "x-sdk-content-sha256": "X-Sdk-Content-Sha256",
}
_AUTH_RE = re.compile(
    r"^(?P<alg>\S+)\s+Access=(?P<ak>[^,\s]+),\s*SignedHeaders=(?P<headers>[^,\s]+),\s*Signature=(?P<sig>[0-9a-fA-F]+)\s*$"
)


class SignatureError(Exception):
    """Refused; `reason` is the text after "Incorrect IAM authentication information: "."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class IncomingRequest:
    method: str
    scheme: str
    path: str  # raw (still percent-encoded) path, without the query
    query_string: str  # raw query string, without '?'
    headers: Mapping[str, str]  # keys lower-cased
    body: bytes


@dataclass(frozen=True)
class Authorization:
    algorithm: str
    access_key: str
    signed_headers: list[str]
    signature: str


def parse_authorization(value: str) -> Authorization:
    match = _AUTH_RE.match(value.strip())
    if not match:
        raise SignatureError("invalid Authorization header")
    return Authorization(
        algorithm=match["alg"],
        access_key=match["ak"],
        signed_headers=match["headers"].split(";"),
        signature=match["sig"].lower(),
    )


def parse_sdk_date(value: str) -> float:
    try:
        return float(calendar.timegm(time.strptime(value, DATE_FORMAT)))
    except ValueError:
        raise SignatureError("invalid X-Sdk-Date format, expected YYYYMMDDTHHMMSSZ") from None


def expected_signature(req: IncomingRequest, signed_headers: list[str], ak: str, sk: str) -> tuple[str, str]:
    """Re-sign with the SDK; returns (signature, SignedHeaders as the signer computed them)."""
    header_params = {_SIGNER_SPELLING.get(name, name): req.headers[name] for name in signed_headers}
    sdk_request = SdkRequest(
        method=req.method.upper(),
        schema=req.scheme,
        host=req.headers.get("host", ""),
        resource_path=req.path or "/",
        query_params=parse_qsl(req.query_string, keep_blank_values=True),
        header_params=header_params,
        body=req.body or None,
    )
    Signer(BasicCredentials(ak, sk)).sign(sdk_request)
    parsed = parse_authorization(str(sdk_request.header_params["Authorization"]))
    return parsed.signature, ";".join(parsed.signed_headers)


def verify(
    req: IncomingRequest,
    lookup_sk: Callable[[str], str | None],
    now: float,
    max_skew_seconds: float,
) -> str:
    """Return the verified access key, or raise `SignatureError`."""
    auth = parse_authorization(req.headers.get("authorization", ""))
    if auth.algorithm != ALGORITHM:
        raise SignatureError(f"unsupported signing algorithm {auth.algorithm}")
    sk = lookup_sk(auth.access_key)
    if sk is None:
        raise SignatureError("ak not found")
    date = req.headers.get("x-sdk-date")
    if date is None:
        raise SignatureError("x-sdk-date not found")
    if abs(parse_sdk_date(date) - now) > max_skew_seconds:
        raise SignatureError("the request date is too far from the server time")
    claimed = auth.signed_headers
    if claimed != sorted(set(claimed)) or "host" not in claimed or "x-sdk-date" not in claimed:
        raise SignatureError("verify aksk signature fail")
    if any(name not in req.headers for name in claimed):
        raise SignatureError("verify aksk signature fail")
    signature, signed = expected_signature(req, claimed, auth.access_key, sk)
    # Both checks always run, so timing does not reveal which part differed.
    ok_headers = hmac.compare_digest(signed, ";".join(claimed))
    ok_sig = hmac.compare_digest(signature, auth.signature)
    if not (ok_headers and ok_sig):
        raise SignatureError("verify aksk signature fail")
    return auth.access_key
