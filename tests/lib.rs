//! Integration tests live beside this file; the harness is `tests/harness`.
