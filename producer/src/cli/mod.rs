//! The `tandem` command-line tool.
