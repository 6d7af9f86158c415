//! The Redis Lua scripts, embedded at compile time from `shared/lua/`.
//!
//! Each script's source is `common.lua` followed by its own file. Scripts run
//! by `EVALSHA`; [`load_all`] loads them with `SCRIPT LOAD` and checks that
//! Redis computed the same SHA1 as we did, so a proxy or server that rewrote
//! a script is caught at start, not by a wrong result later.
//!
//! Every script comes twice: with lifecycle events on (the line before
//! `common.lua` sets `EVENTS_MAXLEN` to [`EVENTS_MAXLEN`]) and off (`0`, so
//! that `emit_event` returns at once). A [`Store`](crate::store::Store) calls
//! the variant its configuration's `events` names.

use redis::{Cmd, Script};
use std::sync::LazyLock;

/// The approximate cap (`XADD MAXLEN ~`) of each class's events stream;
/// the literal in `lua!` below must say the same (a unit test checks).
pub const EVENTS_MAXLEN: u64 = 100_000;

macro_rules! lua {
    ($name:literal, events) => {
        format!("local EVENTS_MAXLEN = 100000\n{}", lua!($name))
    };
    ($name:literal, quiet) => {
        format!("local EVENTS_MAXLEN = 0\n{}", lua!($name))
    };
    ($name:literal) => {
        compose(
            include_str!("../lua/common.lua"),
            $name,
            include_str!(concat!("../lua/", $name)),
        )
    };
}

/// `common.lua` followed by the script's own file, keeping of `common.lua`
/// only the definitions the script uses (and those they use), in their
/// order. Redis runs a script's top level on every call, and each `local
/// function` there creates a closure: all of `common.lua` cost about 8 us
/// per `EVALSHA` (three per task: submit, claim, commit), whatever the
/// script needed of it (see docs/BENCHMARKS.md, "Where the time goes").
///
/// A definition is a line at column 0 starting `local` (`local function
/// NAME` or `local NAME =`), with the comment and blank lines before it; it
/// is kept when its name occurs as a word in the script or in a definition
/// kept. A word match may keep one too many, never one too few.
fn compose(common: &str, name: &str, body: &str) -> String {
    // (name, text) per definition, in order.
    let mut defs: Vec<(String, String)> = Vec::new();
    let mut pending = String::new();
    for line in common.split_inclusive('\n') {
        let defined = line
            .strip_prefix("local function ")
            .or_else(|| line.strip_prefix("local "))
            .map(|rest| {
                rest.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .filter(|n| !n.is_empty());
        // Blank and comment lines between two definitions belong to the one
        // that follows; a blank line inside a body, to its definition.
        if let Some(def_name) = defined {
            let mut text = std::mem::take(&mut pending);
            text.push_str(line);
            defs.push((def_name, text));
        } else if is_gap(line) {
            pending.push_str(line);
        } else if let Some((_, text)) = defs.last_mut() {
            text.push_str(&std::mem::take(&mut pending));
            text.push_str(line);
        } else {
            pending.push_str(line);
        }
    }
    // (A `pending` left over at the end is the file's tail: kept.)
    let uses = |text: &str, word: &str| {
        text.match_indices(word).any(|(at, _)| {
            let before = text[..at].chars().next_back();
            let after = text[at + word.len()..].chars().next();
            let part = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            !part(before) && !part(after)
        })
    };
    let mut keep = vec![false; defs.len()];
    let mut frontier = vec![body.to_owned()];
    while let Some(text) = frontier.pop() {
        for (i, (def_name, def_text)) in defs.iter().enumerate() {
            if !keep[i] && uses(&text, def_name) {
                keep[i] = true;
                frontier.push(def_text.clone());
            }
        }
    }
    let mut out = String::new();
    for ((_, text), kept) in defs.iter().zip(keep) {
        if kept {
            out.push_str(text);
        }
    }
    out.push_str(&pending);
    format!("{out}\n-- {name}\n{body}")
}

/// A line that separates definitions: blank or a comment at column 0 (the
/// body of a definition is indented, or its closing `end` / `}`).
fn is_gap(line: &str) -> bool {
    line.trim().is_empty() || line.starts_with("--")
}

/// One embedded script, in its two variants: with lifecycle events and
/// without.
#[derive(Debug)]
pub struct LuaScript {
    pub name: &'static str,
    /// The source with events on.
    pub source: &'static str,
    script: Script,
    /// The source with events off.
    pub quiet_source: &'static str,
    quiet: Script,
}

impl LuaScript {
    fn new(name: &'static str, source: &'static str, quiet_source: &'static str) -> Self {
        Self {
            name,
            source,
            script: Script::new(source),
            quiet_source,
            quiet: Script::new(quiet_source),
        }
    }

    /// The SHA1 that `EVALSHA` names the script by (events on).
    pub fn sha(&self) -> &str {
        self.script.get_hash()
    }

    /// The SHA1 of the variant without events.
    pub fn quiet_sha(&self) -> &str {
        self.quiet.get_hash()
    }

    /// An `EVALSHA` command of the variant with lifecycle events (`events`)
    /// or without; the caller adds keys and arguments in the order the
    /// script's header documents, via [`Invocation`].
    pub fn invocation(&self, events: bool) -> Invocation {
        let sha = if events { self.sha() } else { self.quiet_sha() };
        Invocation {
            sha: sha.to_owned(),
            keys: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// The keys and arguments of one script call, turned into `EVALSHA` by
/// [`Invocation::into_cmd`].
#[derive(Debug, Clone)]
pub struct Invocation {
    sha: String,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Invocation {
    pub fn key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.keys.push(key.as_ref().to_vec());
        self
    }

    pub fn arg(mut self, arg: impl redis::ToRedisArgs) -> Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    pub fn into_cmd(self) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.sha).arg(self.keys.len());
        for key in self.keys {
            cmd.arg(key);
        }
        for arg in self.args {
            cmd.arg(arg);
        }
        cmd
    }
}

/// Declares one embedded script, in its two variants.
macro_rules! script {
    ($static:ident, $name:literal) => {
        pub static $static: LazyLock<LuaScript> = LazyLock::new(|| {
            LuaScript::new(
                $name,
                Box::leak(lua!($name, events).into_boxed_str()),
                Box::leak(lua!($name, quiet).into_boxed_str()),
            )
        });
    };
}

script!(SUBMIT, "submit.lua");
script!(SUBMIT_MANY, "submit_many.lua");
script!(CLAIM, "claim.lua");
script!(COMPLETE, "complete.lua");
script!(SPLIT, "split.lua");
script!(CANCEL, "cancel.lua");
script!(FIND, "find.lua");
script!(EXTEND, "extend.lua");
script!(BURY, "bury.lua");
script!(REQUEUE, "requeue.lua");
script!(DEAD_PURGE, "dead_purge.lua");
script!(RELEASE, "release.lua");
script!(PROGRESS, "progress.lua");
script!(SCHEDULE, "schedule.lua");
script!(FIRE, "fire.lua");
script!(PROMOTE, "promote.lua");
script!(FLOW, "flow.lua");
script!(WORKFLOW_SUBMIT, "workflow_submit.lua");
script!(WORKFLOW_CANCEL, "workflow_cancel.lua");

/// Every script, for loading.
pub fn all() -> [&'static LuaScript; 19] {
    [
        &SUBMIT,
        &SUBMIT_MANY,
        &CLAIM,
        &COMPLETE,
        &SPLIT,
        &CANCEL,
        &FIND,
        &EXTEND,
        &BURY,
        &REQUEUE,
        &DEAD_PURGE,
        &RELEASE,
        &PROGRESS,
        &SCHEDULE,
        &FIRE,
        &PROMOTE,
        &FLOW,
        &WORKFLOW_SUBMIT,
        &WORKFLOW_CANCEL,
    ]
}

/// Why scripts could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("loading script {name}: {source}")]
    Load {
        name: &'static str,
        source: redis::RedisError,
    },
    #[error(
        "Redis named script {name} {got}, expected {expected}: the script was altered in transit"
    )]
    ShaMismatch {
        name: &'static str,
        expected: String,
        got: String,
    },
}

/// Loads every script into Redis and verifies its SHA1.
pub async fn load_all<C: redis::aio::ConnectionLike>(conn: &mut C) -> Result<(), ScriptError> {
    for script in all() {
        for (source, sha) in [
            (script.source, script.sha()),
            (script.quiet_source, script.quiet_sha()),
        ] {
            let got: String = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(source)
                .query_async(conn)
                .await
                .map_err(|source| ScriptError::Load {
                    name: script.name,
                    source,
                })?;
            if got != sha {
                return Err(ScriptError::ShaMismatch {
                    name: script.name,
                    expected: sha.to_owned(),
                    got,
                });
            }
        }
    }
    Ok(())
}

/// True when a Redis error means the scripts are not loaded (a restarted or
/// flushed server), so loading them and retrying is the cure.
pub fn is_noscript(err: &redis::RedisError) -> bool {
    err.code() == Some("NOSCRIPT")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_has_a_distinct_sha() {
        let mut shas: Vec<_> = all().iter().map(|s| s.sha().to_owned()).collect();
        shas.sort();
        shas.dedup();
        assert_eq!(shas.len(), all().len());
        for script in all() {
            assert_eq!(Script::new(script.source).get_hash(), script.sha());
            assert_eq!(
                Script::new(script.quiet_source).get_hash(),
                script.quiet_sha()
            );
            assert_ne!(script.sha(), script.quiet_sha());
        }
    }

    #[test]
    fn a_script_carries_the_helpers_it_uses_and_no_others() {
        // submit uses add_task, which uses park, which uses int.
        for helper in [
            "local function add_task(",
            "local function park(",
            "local function int(",
            "local function emit_event(",
            "local EVENT_FIELDS =",
        ] {
            assert!(SUBMIT.source.contains(helper), "submit.lua lacks {helper}");
        }
        assert!(!CLAIM.source.contains("local function add_task("));
        assert!(!FIND.source.contains("local function add_task("));
        assert!(CLAIM.source.contains("local function now_ms()"));
        // The comment before a kept definition stays with it.
        assert!(
            SUBMIT
                .source
                .contains("-- Creates a task whose record the caller")
        );
        assert!(SUBMIT.source.contains("\n-- submit.lua\n"));
        // Both submit scripts share the one per-task path.
        for script in [&*SUBMIT, &*SUBMIT_MANY] {
            assert!(script.source.contains("local function submit_task("));
        }
    }

    #[test]
    fn the_events_variants_set_the_cap_the_constant_states() {
        for script in all() {
            assert!(
                script
                    .source
                    .starts_with(&format!("local EVENTS_MAXLEN = {EVENTS_MAXLEN}\n"))
            );
            assert!(script.quiet_source.starts_with("local EVENTS_MAXLEN = 0\n"));
        }
    }
}
