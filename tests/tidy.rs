//! Rules that check themselves, in the spirit of rust-analyzer's
//! `xtask/src/tidy.rs`: a plain test that reads the source tree (from
//! `CARGO_MANIFEST_DIR/..`, the workspace root) and fails with every file
//! that breaks a rule, each named with the rule it breaks, so one run lists
//! everything to fix.
//!
//! 1. Every module is in its crate's layout doc (`docs/ARCHITECTURE.md`'s
//!    code map): see [`every_module_is_named_in_its_crates_code_map`].
//! 2. `unsafe` appears only in the files ARCHITECTURE.md lists under
//!    "Files allowed `unsafe`", and every file listed there has some.
//! 3. No `sleep(` in `tests/e2e/` outside `tests/e2e/support/`: a test
//!    waits for its condition; what must be time-based lives in a support
//!    helper whose name says why.
//! 4. The wire code names fields through the `field` constants: no string
//!    or byte-string literal equal to a field name in `shared/src/wire.rs`
//!    or `shared/src/wire/` outside the constants' own file.
//! 5. The Python client's Lua scripts (`clients/python/src/tandem/lua/`)
//!    are byte-identical copies of `shared/lua/`'s: see
//!    [`python_client_lua_is_a_copy_of_shared_lua`].
//!
//! Run with `cargo test -p tandem-tests --test tidy`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// This file: it spells the words its rules look for.
const THIS_FILE: &str = "tests/tidy.rs";

/// The heading of ARCHITECTURE.md's list of the files allowed `unsafe`.
const UNSAFE_HEADING: &str = "Files allowed `unsafe`";

/// The workspace root (this crate lives in `tests/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent: the workspace root")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `path` relative to the root, with `/` separators, as the docs write it.
fn relative(path: &Path) -> String {
    let root = root();
    path.strip_prefix(&root)
        .unwrap_or(path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Every `.rs` file under `dir`, sorted, skipping build outputs (`target`)
/// and hidden folders (`.git`).
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let entries =
            fs::read_dir(&folder).unwrap_or_else(|e| panic!("list {}: {e}", folder.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("list {}: {e}", folder.display()))
                .path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if path.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    folders.push(path);
                }
            } else if name.ends_with(".rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// A whole-line comment (`//`, `///`, `//!`): prose, not code.
fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with("//")
}

/// Panics with every failure, one per line, when there are any.
fn report(rule: &str, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "tidy: {rule}: {} failure(s):\n{}\n",
        failures.len(),
        failures.join("\n")
    );
}

fn architecture() -> String {
    read(&root().join("docs/ARCHITECTURE.md"))
}

/// The text between backticks in `markdown` (its code spans), with line
/// breaks inside a span read as spaces.
fn code_spans(markdown: &str) -> BTreeSet<String> {
    markdown
        .replace('\n', " ")
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| !span.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The lines of `markdown` from the heading that `starts` accepts to the
/// next heading of the same or a higher level; `None` without such a
/// heading.
fn section(markdown: &str, starts: impl Fn(&str) -> bool) -> Option<String> {
    let mut lines = markdown.lines();
    let heading = lines.find(|line| line.starts_with('#') && starts(line))?;
    let level = heading.chars().take_while(|&c| c == '#').count();
    let body = lines
        .take_while(|line| {
            let hashes = line.chars().take_while(|&c| c == '#').count();
            !(hashes > 0 && hashes <= level && line[hashes..].starts_with(' '))
        })
        .collect::<Vec<_>>();
    Some(body.join("\n"))
}

/// The workspace's crates with a `src/` folder: each top-level folder with
/// a `Cargo.toml` and a `src/`.
fn crates_with_src() -> Vec<String> {
    let mut crates = Vec::new();
    let entries = fs::read_dir(root()).unwrap_or_else(|e| panic!("list the root: {e}"));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("list the root: {e}"))
            .path();
        if path.join("Cargo.toml").is_file() && path.join("src").is_dir() {
            crates.push(relative(&path));
        }
    }
    crates.sort();
    crates
}

/// Rule 1: every module is named in its crate's section of the code map.
///
/// The matching rule:
/// - A crate is a top-level folder with a `Cargo.toml` and a `src/`; its
///   section of `docs/ARCHITECTURE.md` starts at the heading that begins
///   ``### `<folder>/` `` and ends at the next `##` or `###` heading.
/// - A module is each `.rs` file under `src/`, except the files that stand
///   for something else: `lib.rs` and `main.rs` (the crate itself),
///   `mod.rs` (its folder is the module), and test modules, `tests.rs` and
///   `*_tests.rs`. It is named when a code span of the section is exactly
///   its file stem (`ledger`) or its path from `src/` without `.rs`
///   (`device/ledger`).
/// - A folder module is each folder under `src/`. It is named when a code
///   span is exactly its name followed by `/` (`device/`), or its path from
///   `src/` followed by `/` (`cli/demo/`).
///
/// A stem names every file of that stem in the crate (`gemm` covers
/// `mlp/gemm.rs` and `mlp_gpu/gemm.rs`); the paragraph should say what each
/// is.
#[test]
fn every_module_is_named_in_its_crates_code_map() {
    let architecture = architecture();
    let mut failures = Vec::new();
    for krate in crates_with_src() {
        let heading = format!("### `{krate}/`");
        let Some(section) = section(&architecture, |line| line.starts_with(&heading)) else {
            failures.push(format!(
                "{krate}/: the code map has no section \"{heading}\" for this crate"
            ));
            continue;
        };
        let spans = code_spans(&section);
        let src = root().join(&krate).join("src");
        let mut missing = Vec::new();
        for file in rust_files(&src) {
            let from_src = relative(&file)
                .strip_prefix(&format!("{krate}/src/"))
                .unwrap_or_default()
                .to_owned();
            let path = from_src.trim_end_matches(".rs");
            let stem = path.rsplit('/').next().unwrap_or(path);
            let crate_root = matches!(from_src.as_str(), "lib.rs" | "main.rs");
            let test_module = stem == "tests" || stem.ends_with("_tests");
            if crate_root || stem == "mod" || test_module {
                continue;
            }
            if !spans.contains(stem) && !spans.contains(path) {
                missing.push(format!("`{stem}` ({krate}/src/{from_src})"));
            }
        }
        let mut folders = BTreeSet::new();
        for file in rust_files(&src) {
            let mut folder = file.parent();
            while let Some(dir) = folder.filter(|dir| *dir != src) {
                folders.insert(dir.to_path_buf());
                folder = dir.parent();
            }
        }
        for folder in folders {
            let path = relative(&folder)
                .strip_prefix(&format!("{krate}/src/"))
                .unwrap_or_default()
                .to_owned();
            let name = path.rsplit('/').next().unwrap_or(&path);
            if !spans.contains(&format!("{name}/")) && !spans.contains(&format!("{path}/")) {
                missing.push(format!("`{name}/` ({krate}/src/{path}/)"));
            }
        }
        if !missing.is_empty() {
            failures.push(format!(
                "{krate}/: modules the code map does not name in its section \"{heading}\":\n    {}",
                missing.join("\n    ")
            ));
        }
    }
    report(
        "every module is named in its crate's section of docs/ARCHITECTURE.md's code map",
        &failures,
    );
}

/// Does `line` hold the keyword `unsafe` as a whole word (not
/// `unsafe_code`)?
fn has_unsafe_keyword(line: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    line.match_indices("unsafe").any(|(at, found)| {
        let before = line[..at].chars().next_back();
        let after = line[at + found.len()..].chars().next();
        !before.is_some_and(word) && !after.is_some_and(word)
    })
}

/// Rule 2: `unsafe` appears only in the files ARCHITECTURE.md lists, and
/// the list holds no file without it.
///
/// The list is the section whose heading is "Files allowed `unsafe`": each
/// item starts with the file's path from the root in a code span
/// (``- `kernels/src/runtime.rs`: why``). A file has `unsafe` when a line
/// that is not a whole-line comment holds the word `unsafe` (so
/// `#[allow(unsafe_code)]` alone does not count).
#[test]
fn unsafe_appears_only_in_the_files_architecture_lists() {
    let architecture = architecture();
    let list = section(&architecture, |line| line.contains(UNSAFE_HEADING))
        .unwrap_or_else(|| panic!("docs/ARCHITECTURE.md has no heading \"{UNSAFE_HEADING}\""));
    let allowed: BTreeSet<String> = list
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("- `"))
        .filter_map(|item| item.split('`').next())
        .map(str::to_owned)
        .collect();
    let mut failures = Vec::new();
    let mut with_unsafe = BTreeSet::new();
    for file in rust_files(&root()) {
        let path = relative(&file);
        if path == THIS_FILE {
            continue;
        }
        let text = read(&file);
        let lines: Vec<usize> = text
            .lines()
            .enumerate()
            .filter(|(_, line)| !is_comment(line) && has_unsafe_keyword(line))
            .map(|(at, _)| at + 1)
            .collect();
        if lines.is_empty() {
            continue;
        }
        with_unsafe.insert(path.clone());
        if !allowed.contains(&path) {
            failures.push(format!(
                "{path}: `unsafe` on line(s) {lines:?}, but the file is not in \
                 ARCHITECTURE.md's \"{UNSAFE_HEADING}\""
            ));
        }
    }
    for path in allowed.difference(&with_unsafe) {
        failures.push(format!(
            "{path}: listed in ARCHITECTURE.md's \"{UNSAFE_HEADING}\" but has no `unsafe` \
             (or does not exist): take it off the list"
        ));
    }
    report(
        "`unsafe` only in the files docs/ARCHITECTURE.md lists",
        &failures,
    );
}

/// Rule 3: the end-to-end tests never sleep for a fixed time outside
/// `support/`: any line of `tests/e2e/**.rs` outside `tests/e2e/support/`
/// that holds `sleep(` fails, comments included.
#[test]
fn no_fixed_sleeps_in_e2e_tests_outside_support() {
    let e2e = root().join("tests/e2e");
    let support = e2e.join("support");
    let mut failures = Vec::new();
    for file in rust_files(&e2e) {
        if file.starts_with(&support) {
            continue;
        }
        for (at, line) in read(&file).lines().enumerate() {
            if line.contains("sleep(") {
                failures.push(format!(
                    "{}:{}: `sleep(` outside tests/e2e/support/ (wait for the condition \
                     with support's wait_until / eventually, or move a pause that must be \
                     time-based into a support helper that says why): {}",
                    relative(&file),
                    at + 1,
                    line.trim()
                ));
            }
        }
    }
    report("no `sleep(` in tests/e2e/ outside support/", &failures);
}

/// Rule 5: the Python client runs the workers' own scripts, so every
/// `.lua` file it packages must be byte-identical to the one of that name
/// in `shared/lua/` (its pytest suite checks the same; this catches a
/// script edited on the Rust side by whoever never runs pytest).
#[test]
fn python_client_lua_is_a_copy_of_shared_lua() {
    let ours = root().join("clients/python/src/tandem/lua");
    let theirs = root().join("shared/lua");
    let mut copies: Vec<PathBuf> = fs::read_dir(&ours)
        .unwrap_or_else(|e| panic!("read {}: {e}", ours.display()))
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "lua"))
        .collect();
    copies.sort();
    assert!(!copies.is_empty(), "no Lua scripts in {}", relative(&ours));
    let mut failures = Vec::new();
    for copy in copies {
        let name = copy.file_name().unwrap_or_default();
        let source = theirs.join(name);
        if !source.exists() {
            failures.push(format!(
                "{}: no script of that name in shared/lua/",
                relative(&copy)
            ));
        } else if read(&copy) != read(&source) {
            failures.push(format!(
                "{}: differs from {} (copy it over)",
                relative(&copy),
                relative(&source)
            ));
        }
    }
    report("the Python client's Lua is shared/lua's", &failures);
}

/// The `&str` constants declared at the top level of `block`. A nested
/// module's constants are left out: the worker registry record's names
/// (`field::worker` once the wire code is a folder) include words that are
/// also values the wire code spells, a status `failed`, a host `host`.
fn top_level_str_constants(block: &str) -> BTreeSet<String> {
    let mut constants = BTreeSet::new();
    let mut depth = 0usize;
    for line in block.lines() {
        if depth == 0 && !is_comment(line) {
            let code = line.trim_start();
            let code = code.strip_prefix("pub ").unwrap_or(code);
            if let Some(rest) = code.strip_prefix("const ")
                && rest.contains(": &str")
                && let Some(value) = rest.split('"').nth(1)
            {
                constants.insert(value.to_owned());
            }
        }
        if !is_comment(line) {
            for c in line.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth = depth.saturating_sub(1),
                    _ => {}
                }
            }
        }
    }
    constants
}

/// The body of the inline module `mod field { ... }` in `text`, if any.
fn inline_field_module(text: &str) -> Option<String> {
    let mut lines = text.lines();
    lines.find(|line| {
        let code = line.trim_start();
        let code = code.strip_prefix("pub ").unwrap_or(code);
        code.starts_with("mod field {")
    })?;
    let mut depth = 1usize;
    let mut body = Vec::new();
    for line in lines {
        if !is_comment(line) {
            for c in line.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
            }
        }
        if depth == 0 {
            break;
        }
        body.push(line);
    }
    Some(body.join("\n"))
}

/// The string and byte-string literals (`"..."`, `b"..."`) of `line`, with
/// their escapes as written.
fn string_literals(line: &str) -> Vec<&str> {
    let mut literals = Vec::new();
    let mut rest = line;
    while let Some(open) = rest.find('"') {
        let after = &rest[open + 1..];
        let mut end = None;
        let mut escaped = false;
        for (at, c) in after.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(at);
                    break;
                }
                _ => escaped = false,
            }
        }
        let Some(end) = end else { break };
        literals.push(&after[..end]);
        rest = &after[end + 1..];
    }
    literals
}

/// Rule 4: field names in the wire code come from the `field` constants.
///
/// The constants are the `&str` constants at the top level of the `field`
/// module, read from its source: `shared/src/wire/field.rs` when the wire
/// code is a folder, else the inline `mod field { ... }` of
/// `shared/src/wire.rs` (or `wire/mod.rs`). The checked files are
/// `shared/src/wire.rs` and every file under `shared/src/wire/`, except the
/// file that declares the constants: there a field name is spelled once,
/// by definition. In them, no string or byte-string literal on a line that
/// is not a whole-line comment may equal a field name.
#[test]
fn wire_field_names_come_from_the_constants() {
    let shared = root().join("shared/src");
    let mut wire_files = Vec::new();
    if shared.join("wire.rs").is_file() {
        wire_files.push(shared.join("wire.rs"));
    }
    if shared.join("wire").is_dir() {
        wire_files.extend(rust_files(&shared.join("wire")));
    }
    let field_file = shared.join("wire/field.rs");
    let (constants_file, names) = if field_file.is_file() {
        let names = top_level_str_constants(&read(&field_file));
        (field_file, names)
    } else {
        wire_files
            .iter()
            .find_map(|file| inline_field_module(&read(file)).map(|body| (file.clone(), body)))
            .map(|(file, body)| (file, top_level_str_constants(&body)))
            .expect("shared/src/wire/field.rs, or a `mod field { ... }` in shared/src/wire*")
    };
    // A parser that found nothing would pass every file: it must at least
    // find the fields every entry has.
    for field in ["version", "id", "kind", "status"] {
        assert!(
            names.contains(field),
            "tidy: read no field `{field}` from {}: {names:?}",
            relative(&constants_file)
        );
    }
    let mut failures = Vec::new();
    for file in wire_files.iter().filter(|file| **file != constants_file) {
        for (at, line) in read(file).lines().enumerate() {
            if is_comment(line) {
                continue;
            }
            for literal in string_literals(line) {
                if names.contains(literal) {
                    failures.push(format!(
                        "{}:{}: the literal \"{literal}\" is a wire field name; use its \
                         constant from {}: {}",
                        relative(file),
                        at + 1,
                        relative(&constants_file),
                        line.trim()
                    ));
                }
            }
        }
    }
    report(
        "field names in the wire code come from the `field` constants",
        &failures,
    );
}

/// The rules' parsers, on small inputs.
mod parsers {
    use super::*;

    #[test]
    fn code_spans_are_the_text_between_backticks() {
        let spans = code_spans("`a` and `b/`, then `c\nd` and a lone `");
        assert_eq!(
            spans,
            ["a", "b/", "c d"].map(str::to_owned).into_iter().collect()
        );
    }

    #[test]
    fn a_section_ends_at_the_next_heading_of_its_level_or_higher() {
        let doc = "## A\n### `x/` (crate)\none `m`\n#### sub\ntwo\n### `y/`\nthree\n";
        let found = section(doc, |line| line.starts_with("### `x/`"));
        assert_eq!(found.as_deref(), Some("one `m`\n#### sub\ntwo"));
        assert_eq!(section(doc, |line| line.contains("`z/`")), None);
    }

    #[test]
    fn unsafe_counts_as_a_whole_word_only() {
        for (line, expect) in [
            ("    unsafe {", true),
            ("x => unsafe { f() },", true),
            ("#[allow(unsafe_code)]", false),
            ("#![deny(unsafe_op_in_unsafe_fn)]", false),
            ("let not_unsafe = 1;", false),
        ] {
            assert_eq!(has_unsafe_keyword(line), expect, "{line}");
        }
    }

    #[test]
    fn string_literals_keep_their_escapes_and_skip_nothing() {
        assert_eq!(
            string_literals(r#"b"id" => f("kind", "a\"b"), x"#),
            ["id", "kind", r#"a\"b"#]
        );
        assert!(string_literals("no literal here").is_empty());
    }

    #[test]
    fn field_constants_are_read_at_the_top_level_only() {
        let text = "pub const ID: &str = \"id\";\n\
                    /// doc \"not\" a constant\n\
                    const KIND: &str = \"kind\";\n\
                    pub const N: usize = 3;\n\
                    pub mod worker {\n    pub const HOST: &str = \"host\";\n}\n";
        assert_eq!(
            top_level_str_constants(text),
            ["id", "kind"].map(str::to_owned).into_iter().collect()
        );
        let inline = format!("use x;\npub mod field {{\n{text}}}\nconst OTHER: &str = \"o\";\n");
        assert_eq!(
            inline_field_module(&inline).map(|body| top_level_str_constants(&body)),
            Some(["id", "kind"].map(str::to_owned).into_iter().collect())
        );
    }
}
