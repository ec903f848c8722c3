"""Sync: published model versions from S3/Bucketeer (or the export folder) into the model
server's repository and its models.config; `sync.publish` puts exported versions into the bucket.
No TensorFlow here: both run in the gateway's virtualenv (docs/sync.md)."""
