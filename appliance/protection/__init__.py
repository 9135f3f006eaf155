"""Mail protection: DKIM signing and verification (and, beside it, scanning)."""
