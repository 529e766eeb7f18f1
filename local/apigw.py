"""An API Gateway HTTP API (payload format 2.0) in front of a function, on 127.0.0.1.

Requests that match one of the routes become the exact v2.0 event; the function's answer becomes
the HTTP response with API Gateway's rules: a dict with ``statusCode`` is taken as is (headers,
cookies, body, isBase64Encoded); anything else is a 200 with the answer as a JSON body. Unknown
routes get 404 ``{"message":"Not Found"}``, bodies over 10 MB 413, a failing function 500.

A route with the ``AWS_IAM`` authorizer takes only requests signed with SigV4 (service
``execute-api``) by the local credentials, in the Authorization header or a presigned query,
and refuses the rest with 403 like API Gateway (``SigV4Verifier``). ``SigV4HttpxAuth`` signs
requests for such a route.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx
from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials

from local.client import LOCAL_CREDENTIALS
from local.lambda_runtime import LOCAL_ACCOUNT_ID, LambdaFunction

log = logging.getLogger("local.apigw")

MAX_BODY_BYTES = 10 * 1024 * 1024  # HTTP API's payload limit
_TEXT_TYPES = re.compile(r"^(text/.*|application/(json|xml|javascript|x-javascript|ecmascript|graphql)|application/[^;]*\+(json|xml))$")


@dataclass(frozen=True)
class Route:
    """``METHOD /path/{param}/{greedy+}``; method ``ANY`` matches every method."""

    method: str
    path: str
    function: str | None = None  # the function that serves it (None: the emulator's default one)
    authorizer: str | None = None  # "AWS_IAM": SigV4-signed requests only; None: open

    @property
    def route_key(self) -> str:
        return f"{self.method} {self.path}"

    def match(self, method: str, raw_path: str) -> dict[str, str] | None:
        """Path parameters when ``method raw_path`` is this route, else None."""
        if self.method not in ("ANY", method.upper()):
            return None
        wanted = self.path.strip("/").split("/") if self.path.strip("/") else []
        got = raw_path.strip("/").split("/") if raw_path.strip("/") else []
        if raw_path.endswith("/") and raw_path != "/" and not self.path.endswith("/"):
            return None
        params: dict[str, str] = {}
        for index, segment in enumerate(wanted):
            if segment.startswith("{") and segment.endswith("+}"):
                rest = got[index:]
                if not rest:
                    return None
                params[segment[1:-2]] = unquote("/".join(rest))
                return params
            if index >= len(got):
                return None
            if segment.startswith("{") and segment.endswith("}"):
                if not got[index]:
                    return None
                params[segment[1:-1]] = unquote(got[index])
            elif segment != got[index]:
                return None
        return params if len(got) == len(wanted) else None


def find_route(routes: Iterable[Route], method: str, raw_path: str) -> tuple[Route, dict[str, str]] | None:
    """The most specific matching route (literal segments beat parameters, like API Gateway)."""
    found = [(r, p) for r in routes if (p := r.match(method, raw_path)) is not None]
    if not found:
        return None
    return max(found, key=lambda rp: (len(rp[0].path.split("/")) - rp[0].path.count("{"), rp[0].method != "ANY"))


def is_text_content(content_type: str | None) -> bool:
    """Whether HTTP API passes a body with this content type as text (else base64)."""
    if not content_type:
        return False
    return bool(_TEXT_TYPES.match(content_type.split(";", 1)[0].strip().lower()))


def build_http_event(
    *,
    route_key: str,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    source_ip: str,
    path_parameters: Mapping[str, str],
    api_id: str = "local",
    account_id: str = LOCAL_ACCOUNT_ID,
    request_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The API Gateway HTTP API payload format 2.0 event for one request."""
    now = now or datetime.now(UTC)
    joined: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        key = name.lower()
        if key == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        joined[key] = f"{joined[key]},{value}" if key in joined else value
    host = joined.get("host", "localhost")
    domain = host.rsplit(":", 1)[0] if not host.startswith("[") else host
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": raw_path,
        "rawQueryString": raw_query,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = joined
    if raw_query:
        params: dict[str, str] = {}
        for key, value in parse_qsl(raw_query, keep_blank_values=True):
            params[key] = f"{params[key]},{value}" if key in params else value
        event["queryStringParameters"] = params
    event["requestContext"] = {
        "accountId": account_id,
        "apiId": api_id,
        "domainName": domain,
        "domainPrefix": domain.split(".", 1)[0],
        "http": {
            "method": method.upper(),
            "path": raw_path,
            "protocol": "HTTP/1.1",
            "sourceIp": source_ip,
            "userAgent": joined.get("user-agent", ""),
        },
        "requestId": request_id or _request_id(),
        "routeKey": route_key,
        "stage": "$default",
        "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
        "timeEpoch": int(now.timestamp() * 1000),
    }
    if path_parameters:
        event["pathParameters"] = dict(path_parameters)
    binary = not is_text_content(joined.get("content-type"))
    if body:
        event["body"] = base64.b64encode(body).decode("ascii") if binary else body.decode("utf-8", "replace")
    event["isBase64Encoded"] = bool(body) and binary
    return event


def http_response(result: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body API Gateway makes of a v2.0 function answer."""
    if isinstance(result, Mapping) and "statusCode" in result:
        status = int(result["statusCode"])
        headers = [(str(k), str(v)) for k, v in (result.get("headers") or {}).items()]
        headers.extend(("Set-Cookie", str(c)) for c in result.get("cookies") or [])
        body = result.get("body")
        if body is None:
            data = b""
        elif not isinstance(body, str):
            data = json.dumps(body).encode()
        elif result.get("isBase64Encoded"):
            data = base64.b64decode(body)
        else:
            data = body.encode("utf-8")
        return status, headers, data
    return 200, [("Content-Type", "application/json")], json.dumps(result).encode()


def _request_id() -> str:
    return base64.b64encode(secrets.token_bytes(11)).decode("ascii")  # like "JKJaXmPLvHcESHA="


def _trace_id() -> str:
    return f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)}"


# ----------------------------------------------------------------------------------- SigV4

SIGV4_SERVICE = "execute-api"
SIGV4_REGION = "us-east-1"
SIGV4_MAX_SKEW = timedelta(minutes=5)  # how far X-Amz-Date may be from the server's clock
_SIGV4_ALGORITHM = "AWS4-HMAC-SHA256"

# What API Gateway answers (403) to a request for an AWS_IAM route that it refuses. An HTTP API says
# {"message":"Forbidden"} to an unsigned one (a REST API: "Missing Authentication Token"). The others,
# from https://repost.aws/knowledge-center/api-gateway-iam-sigv4-mismatch (unknown access key; a
# signature that does not match) and https://docs.aws.amazon.com/IAM/latest/UserGuide/signature-v4-troubleshooting.html
# (dates and credential scope):
_SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
)
_UNKNOWN_KEY = "The security token included in the request is invalid."


@dataclass(frozen=True)
class SigV4Refusal:
    """Why a request for an ``AWS_IAM`` route is refused, as API Gateway says it."""

    message: str
    error_type: str | None = None  # API Gateway's x-amzn-ErrorType header

    def response(self) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = [("Content-Type", "application/json")]
        if self.error_type:
            headers.append(("x-amzn-ErrorType", self.error_type))
        return 403, headers, json.dumps({"message": self.message}).encode()


_UNSIGNED = SigV4Refusal("Forbidden")


def _invalid(message: str) -> SigV4Refusal:
    return SigV4Refusal(message, "InvalidSignatureException")


def _incomplete(message: str) -> SigV4Refusal:
    return SigV4Refusal(message, "IncompleteSignatureException")


@dataclass(frozen=True)
class _ReceivedSignature:
    credential: str  # access key/date/region/service/aws4_request
    signed_headers: tuple[str, ...]
    signature: str
    amz_date: str
    signed_query: str  # the query string as signed (a presigned one without X-Amz-Signature)
    expires: int | None = None  # X-Amz-Expires of a presigned request


class _ReceivedRequestSigner(SigV4Auth):  # type: ignore[misc]  # botocore has no type hints
    """botocore's SigV4 signer over exactly the headers the client says it signed."""

    def __init__(self, credentials: Credentials, service: str, region: str, signed_headers: Sequence[str]) -> None:
        super().__init__(credentials, service, region)
        self._signed = signed_headers

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        chosen = HTTPHeaders()
        for name in self._signed:
            value = request.headers.get(name)
            if value is not None:
                chosen[name] = value
        return chosen


class SigV4Verifier:
    """Checks a request's SigV4 signature like API Gateway does for an ``AWS_IAM`` route.

    The signature is recomputed with botocore's signer from the received method, path, query,
    signed headers and body, and compared in constant time; the access key must be the known one,
    the credential scope this date, region and service, and X-Amz-Date within 5 minutes (a
    presigned URL: until X-Amz-Date + X-Amz-Expires). Only X-Amz-Date is read (not ``Date``).
    """

    def __init__(
        self,
        access_key: str = LOCAL_CREDENTIALS["aws_access_key_id"],
        secret_key: str = LOCAL_CREDENTIALS["aws_secret_access_key"],
        *,
        region: str = SIGV4_REGION,
        service: str = SIGV4_SERVICE,
        max_skew: timedelta = SIGV4_MAX_SKEW,
    ) -> None:
        self.access_key = access_key
        self._secret_key = secret_key
        self.region = region
        self.service = service
        self.max_skew = max_skew

    def check(self, method: str, target: str, headers: Mapping[str, str], body: bytes, now: datetime | None = None) -> SigV4Refusal | None:
        """None when the request is signed by the known key; else the refusal. ``headers``: lower-case names."""
        parts = urlsplit(target)
        found = _read_signature(parts.query, headers)
        if isinstance(found, SigV4Refusal):
            return found
        scope = found.credential.split("/")
        if len(scope) != 5:
            return _incomplete(f"Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got '{found.credential}'")
        access_key, scope_date, region, service, terminator = scope
        if not hmac.compare_digest(access_key.encode(), self.access_key.encode()):
            return SigV4Refusal(_UNKNOWN_KEY, "UnrecognizedClientException")
        refusal = self._check_date(found, now or datetime.now(UTC))
        if refusal is not None:
            return refusal
        if scope_date != found.amz_date[:8]:
            return _invalid(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
                f"'{scope_date}' != '{found.amz_date[:8]}', from '{found.amz_date}'."
            )
        if region != self.region:
            return _invalid(f"Credential should be scoped to a valid region, not '{region}'. ")
        if service != self.service:
            return _invalid(f"Credential should be scoped to correct service: '{self.service}'. ")
        if terminator != "aws4_request":
            return _invalid(f"Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'. ")
        if "host" not in found.signed_headers:
            return _incomplete("'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")
        declared_hash = headers.get("x-amz-content-sha256")
        if declared_hash is not None and declared_hash != hashlib.sha256(body).hexdigest():
            return _invalid(_SIGNATURE_MISMATCH)  # the body is not the one that was signed
        url = f"http://{headers.get('host', 'localhost')}{parts.path or '/'}" + (f"?{found.signed_query}" if found.signed_query else "")
        request = AWSRequest(method=method.upper(), url=url, data=body, headers={n: headers[n] for n in found.signed_headers if n in headers})
        request.context["timestamp"] = found.amz_date
        signer = _ReceivedRequestSigner(Credentials(self.access_key, self._secret_key), self.service, self.region, found.signed_headers)
        expected = str(signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request))
        if not hmac.compare_digest(expected.encode(), found.signature.encode()):
            return _invalid(_SIGNATURE_MISMATCH)
        return None

    def _check_date(self, found: _ReceivedSignature, now: datetime) -> SigV4Refusal | None:
        try:
            signed_at = datetime.strptime(found.amz_date, SIGV4_TIMESTAMP).replace(tzinfo=UTC)
        except ValueError:
            return _incomplete(f"Date must be in ISO-8601 'basic format'. Got '{found.amz_date}'. See http://en.wikipedia.org/wiki/ISO_8601")
        stamp = now.strftime(SIGV4_TIMESTAMP)
        if signed_at > now + self.max_skew:
            latest = (now + self.max_skew).strftime(SIGV4_TIMESTAMP)
            return _invalid(f"Signature not yet current: {found.amz_date} is still later than {latest} ({stamp} + 5 min.)")
        if found.expires is not None:
            if now > signed_at + timedelta(seconds=found.expires):
                earliest = (now - timedelta(seconds=found.expires)).strftime(SIGV4_TIMESTAMP)
                return _invalid(f"Signature expired: {found.amz_date} is now earlier than {earliest} ({stamp} - {found.expires} sec.)")
        elif signed_at < now - self.max_skew:
            earliest = (now - self.max_skew).strftime(SIGV4_TIMESTAMP)
            return _invalid(f"Signature expired: {found.amz_date} is now earlier than {earliest} ({stamp} - 5 min.)")
        return None


def _read_signature(query: str, headers: Mapping[str, str]) -> _ReceivedSignature | SigV4Refusal:
    """The signature of a request, from its Authorization header or its presigned query."""
    authorization = headers.get("authorization", "")
    if authorization.startswith(f"{_SIGV4_ALGORITHM} "):
        fields = dict(item.strip().partition("=")[::2] for item in authorization[len(_SIGV4_ALGORITHM) + 1 :].split(","))
        amz_date, signed_query, expires = headers.get("x-amz-date", ""), query, None
        where = "Authorization header"
    else:
        params = dict(parse_qsl(query, keep_blank_values=True))
        if "X-Amz-Signature" not in params:
            return _UNSIGNED
        if params.get("X-Amz-Algorithm") != _SIGV4_ALGORITHM:
            return _incomplete(f"X-Amz-Algorithm only supports '{_SIGV4_ALGORITHM}'")
        fields = {
            "Credential": params.get("X-Amz-Credential", ""),
            "SignedHeaders": params.get("X-Amz-SignedHeaders", ""),
            "Signature": params["X-Amz-Signature"],
        }
        amz_date = params.get("X-Amz-Date", "")
        signed_query = "&".join(pair for pair in query.split("&") if pair.partition("=")[0] != "X-Amz-Signature")
        try:
            expires = int(params.get("X-Amz-Expires", ""))
        except ValueError:
            return _incomplete("X-Amz-Expires must be a number of seconds")
        where = "Query string"
    problems = [f"{where} requires '{name}' parameter." for name in ("Credential", "Signature", "SignedHeaders") if not fields.get(name)]
    if not amz_date:
        problems.append(f"{where} requires existence of a 'X-Amz-Date' {'header' if where.startswith('Auth') else 'parameter'}.")
    if problems:
        return _incomplete(" ".join(problems))
    return _ReceivedSignature(
        credential=fields["Credential"],
        signed_headers=tuple(name.strip().lower() for name in fields["SignedHeaders"].split(";") if name.strip()),
        signature=fields["Signature"],
        amz_date=amz_date,
        signed_query=signed_query,
        expires=expires,
    )


def sigv4_headers(
    method: str,
    url: str,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    *,
    access_key: str = LOCAL_CREDENTIALS["aws_access_key_id"],
    secret_key: str = LOCAL_CREDENTIALS["aws_secret_access_key"],
    region: str = SIGV4_REGION,
    service: str = SIGV4_SERVICE,
) -> dict[str, str]:
    """``headers`` plus the SigV4 ones (X-Amz-Date, Authorization) botocore signs this request with.

    Every header given is signed (``host`` is the URL's when not given): give only the ones the
    HTTP client sends unchanged.
    """
    given = {name.lower(): value for name, value in (headers or {}).items()}
    given.setdefault("host", urlsplit(url).netloc)
    request = AWSRequest(method=method.upper(), url=url, data=body, headers=given)
    SigV4Auth(Credentials(access_key, secret_key), service, region).add_auth(request)
    return {str(name): str(value) for name, value in request.headers.items()}


class SigV4HttpxAuth(httpx.Auth):
    """httpx ``auth=`` that signs each request for an ``AWS_IAM`` route (default: the local credentials)."""

    requires_request_body = True

    def __init__(
        self,
        access_key: str = LOCAL_CREDENTIALS["aws_access_key_id"],
        secret_key: str = LOCAL_CREDENTIALS["aws_secret_access_key"],
        *,
        region: str = SIGV4_REGION,
        service: str = SIGV4_SERVICE,
    ) -> None:
        self._keys = {"access_key": access_key, "secret_key": secret_key, "region": region, "service": service}

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        signed = {name: request.headers[name] for name in ("host", "content-type") if name in request.headers}
        request.headers.update(sigv4_headers(request.method, str(request.url), request.content, signed, **self._keys))
        yield request


_Answer = tuple[int, list[tuple[str, str]], bytes]  # status, headers, body
_NOT_FOUND = (404, [("Content-Type", "application/json")], b'{"message":"Not Found"}')
_TOO_LARGE = (413, [("Content-Type", "application/json")], b'{"message":"Request Entity Too Large"}')
_SERVER_ERROR = (500, [("Content-Type", "application/json")], b'{"message":"Internal Server Error"}')


class HttpApiEmulator:
    """ThreadingHTTPServer on ``host:port`` (0: a free port) dispatching to ``function``."""

    def __init__(
        self,
        routes: Sequence[Route],
        function: LambdaFunction | None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_id: str = "local",
        max_body_bytes: int = MAX_BODY_BYTES,
        sigv4: SigV4Verifier | None = None,
    ) -> None:
        self.routes = list(routes)
        self.function = function
        self.functions: Mapping[str, LambdaFunction] = {}  # by name, for routes that name theirs
        self.sigv4 = sigv4 or SigV4Verifier()
        self.api_id = api_id
        self.max_body_bytes = max_body_bytes
        self.host = host
        emulator = self

        class Handler(_RequestHandler):
            api = emulator

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="http-api", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout)
        self._server.server_close()

    def handle(self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes, source_ip: str) -> tuple[int, list[tuple[str, str]], bytes]:
        parts = urlsplit(target)
        raw_path = parts.path or "/"
        found = find_route(self.routes, method, raw_path)
        if found is None:
            return _NOT_FOUND
        route, params = found
        if route.authorizer is not None:
            refusal = self._authorize(route, method, target, headers, body)
            if refusal is not None:
                return refusal
        request_id = _request_id()
        event = build_http_event(
            route_key=route.route_key,
            method=method,
            raw_path=raw_path,
            raw_query=parts.query,
            headers=headers,
            body=body,
            source_ip=source_ip,
            path_parameters=params,
            api_id=self.api_id,
            request_id=request_id,
        )
        function = self.functions.get(route.function) if route.function else self.function
        if function is None:
            log.error("%s: no function to invoke (handler missing)", route.route_key)
            return _SERVER_ERROR
        invocation = function.invoke(event)
        if not invocation.ok:
            status, out_headers, data = _SERVER_ERROR
        else:
            try:
                status, out_headers, data = http_response(invocation.result)
            except (TypeError, ValueError) as exc:
                log.error("%s: the function's answer is not a valid HTTP API response: %s", route.route_key, exc)
                status, out_headers, data = _SERVER_ERROR
        log.info("%s %s -> %s (%s, %.0f ms)", method, raw_path, status, function.name, invocation.duration * 1000)
        return status, [*out_headers, ("apigw-requestid", request_id)], data

    def _authorize(self, route: Route, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes) -> _Answer | None:
        """None when the route's authorizer lets the request through; else API Gateway's answer."""
        if route.authorizer != "AWS_IAM":
            # Never leave a protected route open because the emulator cannot check its authorizer.
            log.error("%s: authorizer %s is not emulated (only AWS_IAM): refusing the request", route.route_key, route.authorizer)
            return _SERVER_ERROR
        joined: dict[str, str] = {}
        for name, value in headers:
            key = name.lower()
            joined[key] = f"{joined[key]},{value}" if key in joined else value
        refusal = self.sigv4.check(method, target, joined, body)
        if refusal is None:
            return None
        log.info("%s %s -> 403 (%s)", method, urlsplit(target).path, refusal.error_type or "unsigned")
        return refusal.response()


class _RequestHandler(BaseHTTPRequestHandler):
    api: HttpApiEmulator
    protocol_version = "HTTP/1.1"
    server_version = "aleph-local-apigw"
    sys_version = ""

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    def _serve(self) -> None:
        length_header = self.headers.get("Content-Length")
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
        if length_header is not None and int(length_header) > self.api.max_body_bytes:
            self._drain(int(length_header))
            self._send(*_TOO_LARGE, close=True)
            return
        if chunked:
            body = self._read_chunked()
            if body is None:
                self._send(*_TOO_LARGE, close=True)
                return
        else:
            body = self.rfile.read(int(length_header)) if length_header else b""
        headers = [(k, v) for k, v in self.headers.items()]
        headers += [
            ("x-forwarded-for", self.client_address[0]),
            ("x-forwarded-port", str(self.api.port)),
            ("x-forwarded-proto", "http"),
            ("x-amzn-trace-id", _trace_id()),
        ]
        try:
            status, out_headers, data = self.api.handle(self.command, self.path, headers, body, self.client_address[0])
        except Exception:
            log.exception("the API emulator failed on %s %s", self.command, self.path)
            status, out_headers, data = _SERVER_ERROR
        self._send(status, out_headers, data)

    def _drain(self, length: int) -> None:
        """Read (and drop) a refused body, so the client sees the answer rather than a reset."""
        left = min(length, 8 * self.api.max_body_bytes)
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                return
            left -= len(chunk)

    def _read_chunked(self) -> bytes | None:
        data = bytearray()
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(data)
            if len(data) + size > self.api.max_body_bytes:
                return None
            data += self.rfile.read(size)
            self.rfile.readline()

    def _send(self, status: int, headers: Sequence[tuple[str, str]], data: bytes, *, close: bool = False) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

    def __getattr__(self, name: str) -> Any:
        # Any other method (TRACE, QUERY, ...) goes through routing too: no route matches it, so it
        # gets API Gateway's 404, not http.server's 501.
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)
