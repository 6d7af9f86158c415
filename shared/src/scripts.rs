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
        concat!("local EVENTS_MAXLEN = 100000\n", lua!($name))
    };
    ($name:literal, quiet) => {
        concat!("local EVENTS_MAXLEN = 0\n", lua!($name))
    };
    ($name:literal) => {
        concat!(
            include_str!("../lua/common.lua"),
            "\n-- ",
            $name,
            "\n",
            include_str!(concat!("../lua/", $name))
        )
    };
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
        pub static $static: LazyLock<LuaScript> =
            LazyLock::new(|| LuaScript::new($name, lua!($name, events), lua!($name, quiet)));
    };
}

script!(SUBMIT, "submit.lua");
script!(CLAIM, "claim.lua");
script!(COMPLETE, "complete.lua");
script!(SPLIT, "split.lua");
script!(CANCEL, "cancel.lua");
script!(FIND, "find.lua");
script!(EXTEND, "extend.lua");
script!(BURY, "bury.lua");
script!(REQUEUE, "requeue.lua");
script!(RELEASE, "release.lua");
script!(PROGRESS, "progress.lua");
script!(SCHEDULE, "schedule.lua");
script!(FIRE, "fire.lua");
script!(PROMOTE, "promote.lua");
script!(FLOW, "flow.lua");
script!(WORKFLOW_SUBMIT, "workflow_submit.lua");
script!(WORKFLOW_CANCEL, "workflow_cancel.lua");

/// Every script, for loading.
pub fn all() -> [&'static LuaScript; 17] {
    [
        &SUBMIT,
        &CLAIM,
        &COMPLETE,
        &SPLIT,
        &CANCEL,
        &FIND,
        &EXTEND,
        &BURY,
        &REQUEUE,
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
            assert!(script.source.contains("local function now_ms()"));
            assert_eq!(
                Script::new(script.quiet_source).get_hash(),
                script.quiet_sha()
            );
            assert_ne!(script.sha(), script.quiet_sha());
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
