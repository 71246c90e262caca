"""The rules searches and enrolments follow: policies, the audit log, and authorising a search."""
