"""The only code that imports bcc: load, attach, pin, typed map access. This package
module itself does not, so the CLI can name the defaults without loading BCC."""

from pathlib import Path

DEFAULT_PIN_ROOT = Path("/sys/fs/bpf/bng")
