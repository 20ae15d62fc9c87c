"""End-to-end tests: the real gateway process (twistd) between real SMTP servers."""
