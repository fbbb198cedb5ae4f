"""What moto cannot play: throttling, and the public-IP lookup. A small HTTP server on
loopback answers as AWS would, and the real botocore and urllib code talk to it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ec2_executor import AWSError, ConfigurationError, CredentialsError
from ec2_executor.cloud import aws, network, pacing
from ec2_executor.cloud.aws import AWS
from ec2_executor.options import Options

STS = "https://sts.amazonaws.com/doc/2011-06-15/"
IDENTITY = (
    f'<GetCallerIdentityResponse xmlns="{STS}"><GetCallerIdentityResult>'
    "<Arn>arn:aws:iam::123456789012:user/scientist</Arn><UserId>AIDA</UserId>"
    "<Account>123456789012</Account></GetCallerIdentityResult>"
    "<ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></GetCallerIdentityResponse>"
)


def error(code: str) -> str:
    return (
        f'<ErrorResponse xmlns="{STS}"><Error><Type>Sender</Type><Code>{code}</Code>'
        f"<Message>{code} says no</Message></Error><RequestId>1</RequestId></ErrorResponse>"
    )


class Scripted:
    """Answers requests from a script of (status, body); the last one repeats."""

    def __init__(self, *replies: tuple[int, str]) -> None:
        self.replies = list(replies)
        self.requests = 0

    def next(self) -> tuple[int, str]:
        self.requests += 1
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


@pytest.fixture
def scripted() -> Iterator[tuple[Scripted, str]]:
    script = Scripted((200, ""))

    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            status, body = script.next()
            self.send_response(status)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        do_GET = do_POST = _reply

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield script, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")


def test_throttling_is_retried_with_backoff(
    scripted: tuple[Scripted, str], fake_credentials: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    script, url = scripted
    script.replies = [(400, error("Throttling")), (400, error("Throttling")), (200, IDENTITY)]
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    assert AWS(Options()).check_credentials() == "arn:aws:iam::123456789012:user/scientist"
    assert script.requests == 3


def test_throttling_leaves_botocore_s_retry_quota_to_other_errors(
    scripted: tuple[Scripted, str], fake_credentials: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore's quota (500 units per client, 5 per throttled retry) would be gone after 100
    throttled retries, for every call of the shared client. Throttled retries take nothing from
    it: after 20 calls throttled to the end, a server error is still retried."""
    script, url = scripted
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setattr(pacing, "OTHER", pacing.Rate(per_second=1e6, burst=1e6))  # no waits
    monkeypatch.setattr(pacing, "BACKOFF_BASE", 0.0)
    monkeypatch.setattr(aws, "THROTTLE_PATIENCE", 0.0)  # the default client's 9 tries
    calls, tries = 20, 9
    throttled = [(400, error("Throttling"))] * (calls * tries)
    script.replies = [*throttled, (500, error("InternalError")), (200, IDENTITY)]
    client = AWS(Options())
    for _ in range(calls):
        with pytest.raises(AWSError, match="Throttling"):
            client.check_credentials()
    assert script.requests == calls * tries  # every call had all its tries
    assert client.check_credentials() == "arn:aws:iam::123456789012:user/scientist"
    assert script.requests == calls * tries + 2


def test_a_permanent_refusal_is_not_retried(
    scripted: tuple[Scripted, str], fake_credentials: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    script, url = scripted
    script.replies = [(403, error("InvalidClientTokenId"))]
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    with pytest.raises(CredentialsError, match="STS rejected"):
        AWS(Options()).check_credentials()
    assert script.requests == 1


def test_public_ip_detection_gives_a_slash_32(
    scripted: tuple[Scripted, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    script, url = scripted
    script.replies = [(200, "203.0.113.7\n")]
    monkeypatch.setattr(network, "IP_CHECK_URL", url)
    assert network.ingress_cidr(Options()) == "203.0.113.7/32"


@pytest.mark.parametrize("reply", [(200, "<html>captive portal</html>"), (503, "")])
def test_undetectable_public_ip_says_to_set_the_cidr(
    scripted: tuple[Scripted, str], monkeypatch: pytest.MonkeyPatch, reply: tuple[int, str]
) -> None:
    script, url = scripted
    script.replies = [reply]
    monkeypatch.setattr(network, "IP_CHECK_URL", url)
    with pytest.raises(ConfigurationError, match="set 'ssh_ingress_cidr'"):
        network.ingress_cidr(Options())


def test_unreachable_ip_service_says_to_set_the_cidr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(network, "IP_CHECK_URL", "http://127.0.0.1:9/")
    with pytest.raises(ConfigurationError, match="set 'ssh_ingress_cidr'"):
        network.ingress_cidr(Options())


def test_private_access_defaults_to_the_vpc_range() -> None:
    options = Options(use_private_ip=True)
    assert network.ingress_cidr(options, vpc_cidr=lambda: "10.1.0.0/16") == "10.1.0.0/16"
    asked: list[bool] = []

    def vpc_cidr() -> str:
        asked.append(True)
        return "x"

    given = Options(use_private_ip=True, ssh_ingress_cidr="10.1.2.3/32")
    assert network.ingress_cidr(given, vpc_cidr=vpc_cidr) == "10.1.2.3/32"
    assert asked == []  # the VPC is not looked up when the option answers
