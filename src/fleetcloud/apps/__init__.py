"""The server side of cloud apps: schedules, ingestion checks, dispatch and workers."""
