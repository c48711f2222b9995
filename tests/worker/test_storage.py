"""Fetch and publish against real servers on loopback: S3 (moto server mode) and plain HTTP."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.worker.conftest import S3, HttpFiles
from trtrefit.worker.errors import WorkerError
from trtrefit.worker.storage import Retry, check_digest_format, fetch, publish

FAST_RETRY = Retry(attempts=3, first_delay_s=0.01)
BODY = bytes(range(256)) * 4096  # 1 MiB


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "artifact.bin"
    path.write_bytes(BODY)
    return path


class TestS3:
    def test_fetch_streams_and_checks_the_pinned_digest(self, s3: S3, artifact: Path, tmp_path: Path) -> None:
        uri = s3.put("dir/artifact.safetensors", artifact)
        got = fetch(uri, tmp_path, sha(BODY), FAST_RETRY)
        assert got.path.read_bytes() == BODY
        assert got.path.name == "artifact.safetensors"
        assert (got.sha256, got.size) == (sha(BODY), len(BODY))

    def test_digest_mismatch_fails_naming_the_uri_and_keeps_nothing(
        self, s3: S3, artifact: Path, tmp_path: Path
    ) -> None:
        uri = s3.put("artifact.bin", artifact)
        work = tmp_path / "work"
        work.mkdir()
        with pytest.raises(
            WorkerError, match=rf"^{uri}: sha256 {sha(BODY)} does not match the pinned 0{{64}}$"
        ):
            fetch(uri, work, "0" * 64, FAST_RETRY)
        assert [p for p in work.rglob("*") if p.is_file()] == []

    def test_missing_key_is_one_clear_line(self, s3: S3, tmp_path: Path) -> None:
        with pytest.raises(WorkerError, match=rf"^s3://{s3.bucket}/nope.safetensors: not found$"):
            fetch(f"s3://{s3.bucket}/nope.safetensors", tmp_path, None, FAST_RETRY)

    def test_publish_is_content_addressed_with_a_manifest_and_no_leftovers(
        self, s3: S3, artifact: Path
    ) -> None:
        published = publish(artifact, f"s3://{s3.bucket}/refits/", {"backend": "exported"}, FAST_RETRY)
        assert published.sha256 == sha(BODY)
        assert published.uri == f"s3://{s3.bucket}/refits/{sha(BODY)}.ep"
        assert s3.keys() == [f"refits/{sha(BODY)}.ep", f"refits/{sha(BODY)}.json"]
        body = s3.client().get_object(Bucket=s3.bucket, Key=f"refits/{sha(BODY)}.json")["Body"].read()
        manifest = json.loads(body)
        assert manifest["backend"] == "exported"
        assert (manifest["sha256"], manifest["size"]) == (sha(BODY), len(BODY))

    def test_publishing_the_same_engine_twice_is_harmless(self, s3: S3, artifact: Path) -> None:
        first = publish(artifact, f"s3://{s3.bucket}/refits", {}, FAST_RETRY)
        second = publish(artifact, f"s3://{s3.bucket}/refits", {}, FAST_RETRY)
        assert first == second
        assert len(s3.keys("refits/")) == 2


class TestHttp:
    def test_fetch(self, http_files: HttpFiles, tmp_path: Path) -> None:
        got = fetch(http_files.add("ckpt.safetensors", BODY), tmp_path, sha(BODY), FAST_RETRY)
        assert got.path.read_bytes() == BODY

    def test_a_truncated_body_is_retried(self, http_files: HttpFiles, tmp_path: Path) -> None:
        uri = http_files.add("flaky.bin", BODY, mode="flaky")
        got = fetch(uri, tmp_path, sha(BODY), FAST_RETRY)
        assert got.path.read_bytes() == BODY
        assert http_files.files["flaky.bin"].gets == 2

    def test_a_body_that_stays_truncated_fails_after_the_retries(
        self, http_files: HttpFiles, tmp_path: Path
    ) -> None:
        uri = http_files.add("short.bin", BODY, mode="truncate")
        with pytest.raises(WorkerError, match=rf"^{uri}: download failed after 3 attempts: "):
            fetch(uri, tmp_path, None, FAST_RETRY)
        assert http_files.files["short.bin"].gets == 3

    def test_not_found(self, http_files: HttpFiles, tmp_path: Path) -> None:
        with pytest.raises(WorkerError, match=r": not found$"):
            fetch(f"{http_files.base}/missing.bin", tmp_path, None, FAST_RETRY)

    def test_digest_mismatch(self, http_files: HttpFiles, tmp_path: Path) -> None:
        uri = http_files.add("ckpt.bin", BODY)
        with pytest.raises(WorkerError, match="does not match the pinned"):
            fetch(uri, tmp_path, "f" * 64, FAST_RETRY)

    def test_publishing_to_http_is_refused(self, http_files: HttpFiles, artifact: Path) -> None:
        with pytest.raises(WorkerError, match="read-only"):
            publish(artifact, f"{http_files.base}/refits/", {}, FAST_RETRY)


class TestLocal:
    @pytest.mark.parametrize("scheme", ["", "file://"])
    def test_local_files_are_hashed_in_place(self, scheme: str, artifact: Path, tmp_path: Path) -> None:
        got = fetch(f"{scheme}{artifact}", tmp_path / "unused", sha(BODY))
        assert got.path == artifact
        assert got.sha256 == sha(BODY)

    def test_missing_local_file(self, tmp_path: Path) -> None:
        with pytest.raises(WorkerError, match=r"/nope.pt2: not found$"):
            fetch(str(tmp_path / "nope.pt2"), tmp_path)

    def test_publish_creates_the_prefix_and_leaves_no_temporary_file(
        self, artifact: Path, tmp_path: Path
    ) -> None:
        prefix = tmp_path / "out" / "refits"
        published = publish(artifact, f"file://{prefix}/", {"a": 1})
        assert published.uri == f"file://{prefix}/{sha(BODY)}.ep"
        assert sorted(p.name for p in prefix.iterdir()) == [f"{sha(BODY)}.ep", f"{sha(BODY)}.json"]
        assert (prefix / f"{sha(BODY)}.ep").read_bytes() == BODY


class TestDigestOption:
    def test_accepts_plain_and_prefixed_hex(self) -> None:
        assert check_digest_format("--engine-sha256", "sha256:" + "AB" * 32) == "ab" * 32
        assert check_digest_format("--engine-sha256", None) is None

    def test_rejects_anything_else(self) -> None:
        with pytest.raises(WorkerError, match=r"^--checkpoint-sha256 'xyz': not a sha256 hex digest"):
            check_digest_format("--checkpoint-sha256", "xyz")


def test_gs_without_gcsfs_says_what_to_install(tmp_path: Path) -> None:
    pytest.importorskip("fsspec")
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(WorkerError, match=r"^gs://bucket/k: no filesystem driver .*trtrefit\[gcs\]"):
            fetch("gs://bucket/k", tmp_path)
    else:
        pytest.skip("gcsfs is installed here")
