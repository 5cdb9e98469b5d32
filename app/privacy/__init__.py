"""Privacy: a user's own data export and erasure (`/me`)."""
