"""Pure converters between Matrix event content and GIP message content (no I/O)."""
