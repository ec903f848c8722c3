"""S3 on loopback for tests and benchmarks: a boto3 client for a moto server."""

from __future__ import annotations

from typing import Any

import boto3


def s3_client(endpoint: str, key: str = "testing", secret: str = "testing") -> Any:  # noqa: S107
    """A client for the S3 API at `endpoint` (a moto server), with throwaway credentials."""
    return boto3.session.Session(
        aws_access_key_id=key, aws_secret_access_key=secret, region_name="us-east-1"
    ).client("s3", endpoint_url=endpoint)
