import pytest

from aleph_pipeline.keys import classify, job_id_for, output_prefix, resolve_relative


@pytest.mark.parametrize(
    ("key", "kind", "stem", "extension"),
    [
        ("incoming/a.json", "sidecar", "incoming/a", "json"),
        ("incoming/a.JSON", "sidecar", "incoming/a", "json"),
        ("incoming/shot 1+b.MP4", "video", "incoming/shot 1+b", "mp4"),
        ("incoming/x.MoV", "video", "incoming/x", "mov"),
        ("incoming/x.webm", "video", "incoming/x", "webm"),
        ("incoming/x.avi", "video", "incoming/x", "avi"),
        ("incoming/x.m4v", "video", "incoming/x", "m4v"),
        ("incoming/x.tar.mp4", "video", "incoming/x.tar", "mp4"),
        ("incoming/ref.png", "other", "incoming/ref", "png"),
        ("incoming/noext", "other", "incoming/noext", ""),
        ("incoming/.json", "other", "incoming/.json", ""),
        ("incoming/", "other", "incoming/", ""),
    ],
)
def test_classify(key: str, kind: str, stem: str, extension: str) -> None:
    info = classify(key)
    assert (info.kind, info.stem, info.extension) == (kind, stem, extension)


def test_output_prefix_keeps_subfolders_below_the_input_prefix() -> None:
    assert output_prefix("incoming/team-a/shot1.json", "incoming/", "j1") == "team-a/shot1/j1/"
    assert output_prefix("incoming/shot1.JSON", "incoming/", "j1") == "shot1/j1/"


def test_job_id_is_deterministic_and_version_sensitive() -> None:
    first = job_id_for("b", "incoming/a.json", "etag@t1")
    assert first == job_id_for("b", "incoming/a.json", "etag@t1")
    assert first != job_id_for("b", "incoming/a.json", "etag@t2")
    assert first != job_id_for("b2", "incoming/a.json", "etag@t1")
    assert len(first) == 32
    assert int(first, 16) >= 0


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("clip.mp4", "incoming/team/clip.mp4"),
        ("sub/clip.mp4", "incoming/team/sub/clip.mp4"),
        ("incoming/other/clip.mp4", "incoming/other/clip.mp4"),
        ("../clip.mp4", None),
        ("sub/../../clip.mp4", None),
        ("/etc/passwd", None),
        ("a//b.mp4", None),
        ("a\\b.mp4", None),
        ("", None),
    ],
)
def test_resolve_relative(reference: str, expected: str | None) -> None:
    assert resolve_relative("incoming/team/shot.json", reference, "incoming/") == expected
