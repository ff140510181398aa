"""Embedded stand-ins for external services (a local S3-compatible server) used by the default setup."""
