"""Pure domain code: ids, merge-patch, errors and types. Nothing here does I/O."""
