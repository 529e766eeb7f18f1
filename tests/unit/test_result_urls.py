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
