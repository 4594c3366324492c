"""Admin JSON API (and, later, the admin single-page UI)."""
