"""Fixtures of the tests/common tests: a SeaweedFS S3 server shared by the whole session."""

from __future__ import annotations

import pytest

from tests.s3_server import seaweedfs_session

s3_server = pytest.fixture(scope="session", name="s3_server")(seaweedfs_session)
