"""The only code that imports bcc: load, attach, pin, typed map access."""
