import pytest

from aleph_pipeline.errors import JobError
from aleph_pipeline.storage import check_url

HOSTS = ("kie.ai", "aiquickdraw.com")


@pytest.mark.parametrize("url", ["https://kie.ai/v.mp4", "https://tempfile.aiquickdraw.com/k/x.mp4", "https://KIE.AI./v.mp4"])
def test_allowed(url: str) -> None:
    check_url(url, HOSTS, allow_http=False)


@pytest.mark.parametrize(
    "url",
    [
        "http://kie.ai/v.mp4",
        "file:///etc/passwd",
        "ftp://kie.ai/v.mp4",
        "https://evil.test/v.mp4",
        "https://kie.ai.evil.test/v.mp4",
        "https://evilkie.ai/v.mp4",
        "https://169.254.169.254/latest/meta-data",
        "https://user:pw@kie.ai/v.mp4",
        "https:///v.mp4",
        "not a url",
    ],
)
def test_refused(url: str) -> None:
    with pytest.raises(JobError) as caught:
        check_url(url, HOSTS, allow_http=False)
    assert caught.value.code == "result_rejected"


def test_http_only_where_allowed_and_addresses_only_when_listed() -> None:
    check_url("http://127.0.0.1:9000/x.mp4", ("127.0.0.1",), allow_http=True)
    with pytest.raises(JobError):
        check_url("http://127.0.0.1:9000/x.mp4", ("127.0.0.1",), allow_http=False)
    with pytest.raises(JobError):
        check_url("http://10.0.0.1/x.mp4", ("127.0.0.1",), allow_http=True)


@pytest.mark.parametrize(
    "url",
    [
        "https://[kie.ai/v.mp4",  # urlsplit: Invalid IPv6 URL
        "https://kie．ai/v.mp4",  # fullwidth dots: httpx would fetch kie.ai, urlsplit sees another host
        "https://evil＃@kie.ai/v.mp4",  # urlsplit: invalid characters under NFKC normalization
        "https://a\u200d.kie.ai/v.mp4",  # httpx: invalid IDNA host name
        "https://kie.ai:99999/v.mp4",
        "https://kie.ai:port/v.mp4",
        "https://kie.ai/v\x00.mp4",
        "https://kie.ai/\udc80.mp4",
        "https://kie.ai/" + "v" * 10_000,
    ],
)
def test_unreadable_urls_are_refused_with_a_job_error(url: str) -> None:
    with pytest.raises(JobError) as caught:
        check_url(url, HOSTS, allow_http=False)
    assert caught.value.code == "result_rejected"
    assert len(caught.value.message) < 600


@pytest.mark.parametrize(
    "url",
    [
        "https://user:hunter2@kie.ai/v.mp4",
        "https://user:hunter2@evil.test/v.mp4",
        "ftp://user:hunter2@kie.ai/v.mp4",
        "https://user:hunter2@[kie.ai/v.mp4",
        "https://user:hunter2@kie.ai:99999/v.mp4",
        "https://user:hunter2@kie．ai/v.mp4",
        "https://a@b:hunter2@kie.ai/v.mp4",
    ],
)
def test_credentials_in_a_refused_url_never_reach_the_message(url: str) -> None:
    with pytest.raises(JobError) as caught:
        check_url(url, HOSTS, allow_http=False)
    assert "hunter2" not in caught.value.message
    assert "user" not in caught.value.message


def test_the_query_string_is_not_echoed() -> None:
    with pytest.raises(JobError) as caught:
        check_url("ftp://kie.ai/v.mp4?X-Amz-Signature=abc123", HOSTS, allow_http=False)
    assert "ftp://kie.ai/v.mp4" in caught.value.message
    assert "abc123" not in caught.value.message
